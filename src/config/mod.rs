//! Declarative configuration (feature `config`): one TOML file describes
//! the filters, load balancers and decapsulators a host runs, and
//! [`Config::plan`] then [`Plan::apply`] make the running state match it,
//! changing only what differs. `xdpguard apply --config FILE` is this.
//!
//! ```toml
//! [[filter]]
//! interfaces = ["eth0"]
//! blocklist = ["192.0.2.0/24"]
//! blocklist_files = ["drop.txt"]       # relative to this file's directory
//! next = "/sys/fs/bpf/xdpguard-lb"     # what it passes goes to this LB
//!
//! [[lb]]
//! redirect = ["eth0", "eth1"]          # chained behind the filter: not attached itself
//! ipip_sources = ["203.0.113.128/25"]
//! hash_seed = 7
//!
//! [[lb.vip]]
//! vip = "tcp 203.0.113.10:80"
//! mode = "ipip"
//! backends = ["198.51.100.11", { addr = "198.51.100.12", weight = 2 }]
//! ```
//!
//! - **Loading** ([`Config::from_file`], [`Config::parse`]): the whole file
//!   is read and checked before anything runs, and a bad one is rejected
//!   with every problem at once, each with its file, line and column
//!   ([`ConfigError::Invalid`]): TOML syntax, unknown keys (with the
//!   accepted ones, and the likely one meant), values of the wrong type or
//!   out of range, malformed prefixes, VIPs, backends, modes and policies
//!   (the library's own parsers), duplicate pins, interfaces, VIPs and
//!   backends, backends a VIP's mode cannot reach, NAT backends the
//!   library would refuse, capacities too small for what the file lists,
//!   and bad lines of list files (with their own line numbers). Whether
//!   interfaces and network namespaces exist is checked by
//!   [`Config::plan`], on the running host.
//! - **Planning** ([`Config::plan`]): reads the running state through the
//!   library (each pin directory reopened) and lists the [`Step`]s that
//!   make it match: create what is missing, attach and detach interfaces,
//!   replace a list when it differs (one atomic replace per list), add,
//!   remove or re-create VIPs, one backend batch per VIP whose backends or
//!   weights differ (one Maglev table swap), set policies that differ. A
//!   setting fixed at load time (capacities, hash seed) that differs is an
//!   error unless re-creating is asked for ([`PlanOptions::recreate`]).
//! - **Applying** ([`Plan::apply`]): runs the steps in order through the
//!   public API, then reads everything back and checks it matches the file
//!   (the LBs' [`digests`](crate::LoadBalancer::digest) included). An
//!   empty plan changes nothing: no map is written, so every generation
//!   counter stays where it was.
//!
//! Crash safety: every step is one library call, and each of those is
//! crash-safe on its own (an edit that dies is repaired at the next
//! reopen; a creation that dies leaves a mark the next creation clears).
//! So a run killed at any point leaves a state from which the next run
//! converges on the file. Programs are loaded, pinned and filled before
//! they are attached, so traffic never meets a half-filled one.
//!
//! What a file does not describe is left alone: removing a section from
//! the file does not remove its program (run [`Config::plan_down`] with the
//! old file first, or `xdpguard down --config OLD`).

mod apply;
mod model;
mod netns;
mod parse;
mod plan;
mod rules;

pub use apply::Applied;
pub use model::{Config, DecapConfig, FilterConfig, LbConfig, VipSpec};
pub use plan::{Plan, PlanOptions, Program, SectionPlan, Step};

pub use crate::error::{ConfigError, Problem};

/// The default pin directory of a filter (as `xdpguard` uses).
pub const DEFAULT_FILTER_PIN: &str = "/sys/fs/bpf/xdpguard";
/// The default pin directory of a load balancer (as `xdpguard-lb` uses).
pub const DEFAULT_LB_PIN: &str = "/sys/fs/bpf/xdpguard-lb";
/// The default pin directory of a decapsulator (as `xdpguard-lb decap` uses).
pub const DEFAULT_DECAP_PIN: &str = "/sys/fs/bpf/xdpguard-decap";
