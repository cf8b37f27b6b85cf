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
//!   exits, and any process (such as the `xdpguard` CLI in `examples/`) can
//!   reopen it with [`Filter::open_pinned`] to edit lists and read counters.
//! - Native, generic and offload attach modes, or auto ([`AttachMode`]).
//!
//! Requirements: Linux 5.15 or later with BTF (tested on 6.18), and the
//! CAP_BPF and CAP_NET_ADMIN capabilities (or root).
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
#![warn(missing_docs)]

mod attach;
mod error;
mod filter;
mod filter_maps;
mod hash;
mod layout;
mod lists;
mod mmap;
mod pin;
mod prefix;
mod stats;
mod sys;
mod testrun;
mod v4;
mod v6;

pub use attach::{AttachMode, Attachment, Interface};
pub use error::{AttachError, Error, LbError, LineError, ListError, LoadError, PinError};
pub use filter::{
    BulkChange, EntryChange, Filter, FilterBuilder, MalformedPolicy, PrefixList, Verdict, DEFAULT_V4_CAPACITY,
    DEFAULT_V6_CAPACITY, MAX_CAPACITY,
};
pub use ipnetwork::IpNetwork;
pub use lists::ListKind;
pub use prefix::{normalize, parse_list, parse_prefix, ListLine, Normalized};
pub use stats::{Counter, FilterStats};
pub use testrun::{TestRun, XdpAction};
