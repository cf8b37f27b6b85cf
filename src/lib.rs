//! # xdpguard
//!
//! An XDP packet filter and L4 load balancer for Linux, with its eBPF
//! programs embedded, driven from a small typed Rust API.
//!
//! - [`Filter`]: drops packets by source address at the earliest point in
//!   the receive path. An allowlist is checked first, then a blocklist, for
//!   IPv4 and IPv6 CIDR prefixes, with millions of entries. Edits take effect
//!   for the next packet; bulk loads and replaces are atomic.
//! - Per-CPU counters from day one ([`Filter::stats`]).
//! - Pinned state: a filter pinned in bpffs keeps running after its process
//!   exits, and any process (such as the `xdpguard` tool, feature `cli`) can
//!   reopen it with [`Filter::open_pinned`] to edit lists and read counters.
//! - Native, generic and offload attach modes, or auto ([`AttachMode`]).
//! - [`LoadBalancer`]: an L4 load balancer for TCP and UDP virtual services
//!   ([`Vip`]s, IPv4 and IPv6, one port or all ports). Backends are chosen by
//!   weighted Maglev tables built in user space (identical on every LB node
//!   with the same backends), kept per flow in a connection table so live
//!   connections survive backend changes and drains, and reached by L2 DSR,
//!   IPIP encapsulation or NAT ([`ForwardingMode`]) with next hops from the
//!   kernel FIB. [`LoadBalancer::backend_for`] predicts the kernel's choice.
//!   It runs on its own or behind the filter ([`Filter::set_next`]); backends
//!   without tunnel modules decapsulate with [`Decap`].
//!
//! Requirements: Linux 5.15 or later with BTF (tested on 6.18), and the
//! CAP_BPF and CAP_NET_ADMIN capabilities (or root). The load balancer
//! keeps backends' next hops resolved before their first packet from Linux
//! 5.16 on (managed neighbour entries); [`Decap`] runs from Linux 5.9.
//!
//! Inside, every program is the same shape: an eBPF program in `src/bpf/`
//! whose config value starts with a shared header, typed maps declared
//! once, and a model of its configuration, driven by one core
//! (`src/core/`) that loads, attaches, pins, reopens and edits it with
//! crash repair. [`Filter`] (`src/filter/`), [`LoadBalancer`] and [`Decap`]
//! (`src/lb/`) are thin types over that core.
//!
//! Features (none is in the default build):
//! - `testing` adds [`testing`] (pulls in etherparse): the test kit the
//!   crate's own tests use, to test your lists and VIPs the same way: a
//!   frame builder, verdict fixtures run through the real programs with
//!   field-by-field frame diffs, throwaway network namespaces and the load
//!   balancer's test bed. Enable it in `[dev-dependencies]`.
//! - `cli` builds the command-line tools `xdpguard` (filter) and
//!   `xdpguard-lb` (load balancer, decapsulator) over this API (pulls in
//!   clap and serde_json): `cargo install xdpguard --features cli`.
//! - `metrics` adds [`metrics`] (pulls in prometheus-client): every counter
//!   of pinned programs as Prometheus metrics, read at scrape time; `cli`
//!   enables it for `xdpguard metrics`, the exporter.
//! - `health` adds [`health_check`] (pulls in ureq, without TLS): backend
//!   health checks that drain failing load-balancer backends and restore
//!   them; `cli` enables it for `xdpguard-lb health`.
//!
//! The policies, modes, VIPs and backends the tools take are parsed by the
//! types' `FromStr` (errors: [`ParseError`]) and shown by their `Display`,
//! so a program or a configuration file reading them accepts the same
//! words, and what is shown parses back.
//!
//! ```no_run
//! use xdpguard::{AttachMode, Filter};
//!
//! let filter = Filter::builder()
//!     .interface("eth0")
//!     .mode(AttachMode::Auto)
//!     .pin("/sys/fs/bpf/xdpguard")
//!     .attach()?;
//! filter.blocklist().insert("203.0.113.0/24".parse()?)?;
//! println!("{:?}", filter.stats()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A load balancer with three weighted backends behind a filter:
//!
//! ```no_run
//! use std::net::IpAddr;
//! use xdpguard::{Filter, ForwardingMode, LoadBalancer, Vip, VipConfig};
//!
//! let filter = Filter::builder().interface("eth0").attach()?;
//! let lb = LoadBalancer::builder()
//!     .redirect_interface("eth0")
//!     .ipip_source("192.0.2.0/24".parse()?)
//!     .load()?;
//! filter.set_next(lb.program_fd())?;
//! let vip = Vip::tcp("203.0.113.10:443".parse()?);
//! lb.add_vip(vip, VipConfig::new(ForwardingMode::Ipip))?;
//! lb.batch(&vip)
//!     .add("198.51.100.11".parse::<IpAddr>()?, 1)
//!     .add("198.51.100.12".parse::<IpAddr>()?, 1)
//!     .add("198.51.100.13".parse::<IpAddr>()?, 2)
//!     .apply()?;
//! println!("{:?}", lb.vip_stats(&vip)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate prints nothing itself: errors are returned. libbpf, underneath,
//! writes its own warnings through libbpf-rs's print callback, to stderr by
//! default (a failed load, say: `libbpf: map 'xdpg_filter_cfg': failed to
//! create`, beside the typed error returned). An agent that keeps stderr
//! clean routes or silences them, once, with
//! [`libbpf_rs::set_print`](https://docs.rs/libbpf-rs/latest/libbpf_rs/fn.set_print.html)
//! (`set_print(None)`).
// Beyond the crate-wide [lints] of Cargo.toml, for the library only: it never
// prints (errors are returned, not reported), and every `pub` item is
// reachable from the crate root (the rest is `pub(crate)`).
#![warn(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[cfg(feature = "config")]
pub mod config;
mod core;
mod error;
mod filter;
mod lb;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::core::attach::{AttachMode, Attachment, Interface};
pub use crate::core::counter::Counter;
pub use crate::core::testrun::{TestRun, XdpAction};
pub use crate::core::upgrade::UpgradeReport;
pub use error::{
    AttachError, Error, LbError, LineError, ListError, LoadError, ParseError, PinError, RuleError, V4_HOST_TABLE,
};
pub use filter::{
    host_wscale, nft_rules, nft_rules_for, nft_rules_with_wscale, SynGuard, SynMode, SynPolicy, SynPortStats,
    SynPortStatus, DEFAULT_SYN_THRESHOLD, MAX_SYN_PORTS,
};
pub use filter::{normalize, parse_list, parse_prefix, FilterStats, ListKind, ListLine, Normalized};
pub use filter::{
    parse_rule_lines, parse_rules, DestinationMatch, IpFamily, NamedSet, RangeSet, Rule, RuleAction, RuleCapacities,
    RuleChange, RuleEntry, RuleId, RuleLine, RuleProtocol, Rules, Sets, Source, SourceMatch, TcpFlags,
    DEFAULT_MAX_LIMIT_BUCKETS, DEFAULT_MAX_RULES, DEFAULT_MAX_SET_ENTRIES, DEFAULT_MAX_TIMED_BLOCKS, MAX_RULES,
};
pub use filter::{
    BlockedBy, LimitKey, LimiterStats, RateLimit, TimedBlock, TimedBlocks, TimedChange, MAX_BLOCK, MAX_RATE,
};
pub use filter::{
    BulkChange, EntryChange, Filter, FilterBuilder, MalformedPolicy, PrefixList, Verdict, DEFAULT_V4_CAPACITY,
    DEFAULT_V6_CAPACITY, MAX_CAPACITY,
};
pub use filter::{DropEvent, DropReason, EventError, EventOptions, EventRate, EventReader, EventStats, SNAP_LEN};
pub use ipnetwork::IpNetwork;
/// Backend health checks for the load balancer (feature `health`).
#[cfg(feature = "health")]
pub use lb::health_check;
pub use lb::{
    Backend, BackendAddr, BackendBatch, BackendState, BackendStats, Decap, DecapBuilder, DecapStats, Digest,
    EchoPolicy, Flow, ForwardingMode, FragmentPolicy, HashInput, LbDigest, LbDrops, LbStats, LoadBalancer,
    LoadBalancerBuilder, NeighbourState, NewFlowLimit, NextHop, OptionsPolicy, Protocol, Vip, VipConfig, VipReport,
    VipStats, DEFAULT_CONNECTIONS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_NEXT_HOP_CACHE, DEFAULT_TABLE_SIZE,
    DEFAULT_UDP_TIMEOUT, MAX_TABLE_SIZE, MAX_WEIGHT, MIN_TABLE_SIZE, NEIGH_PROTOCOL,
};
pub use lb::{ChainedFrom, ForwardingOff, Health, Unredirected, Unrouted};
