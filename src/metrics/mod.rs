//! Prometheus metrics (feature `metrics`): every counter of pinned filters,
//! load balancers and decapsulators, read from their maps at scrape time,
//! through the [`prometheus-client`](prometheus_client) crate.
//!
//! [`Metrics`] is a [`Collector`]: register it with your own
//! [`Registry`], or let it make one ([`Metrics::registry`]), or render the
//! text directly ([`Metrics::render`]). The `xdpguard metrics` command
//! (feature `cli`) serves it over HTTP.
//!
//! ```no_run
//! use xdpguard::metrics::{Format, Metrics};
//!
//! let metrics = Metrics::new()
//!     .filter("/sys/fs/bpf/xdpguard")?
//!     .load_balancer("/sys/fs/bpf/xdpguard-lb")?
//!     .on_error(|e| eprintln!("{e}"));
//! print!("{}", metrics.render(Format::OpenMetrics));
//! # Ok::<(), xdpguard::metrics::MetricsError>(())
//! ```
//!
//! Each scrape reads the counters (per-CPU sums) of each program through
//! the same calls as [`Filter::stats`], [`LoadBalancer::stats`],
//! [`LoadBalancer::vip_stats`], [`LoadBalancer::backend_stats`] and
//! [`Decap::stats`]. A program is opened once and reopened when its pin
//! directory's pins change (re-created, attached elsewhere), so a scrape
//! does not reload a filter's lists. A scrape never waits for the pin
//! directory's lock: while an edit (an `apply`, a `block`) holds it, the
//! counters are read live and the list sizes, rules and SYN ports are
//! those this handle last read; a program to reopen then is read through
//! the handle held so far (or is down at that scrape, with none). A scrape
//! edits nothing, except that it reclaims expired timed blocks when there
//! are some and the lock is free. A program that cannot be read has
//! `xdpguard_up` 0 and nothing else at that scrape; the reason goes to
//! [`Metrics::on_error`].
//!
//! # Metrics
//!
//! Names are stable. Counters are shown as scraped (`_total`; byte counters
//! carry the unit `bytes`). Every sample has the label `pin`: the program's
//! pin directory, which names it. Counters reset to zero with
//! `xdpguard stats --reset` / `xdpguard-lb stats --reset`, and when a
//! program is re-created; Prometheus' `rate()` handles both.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `xdpguard_up` | gauge | `program`, `pin` | 1 if the program (`filter`, `lb`, `decap`) could be read at this scrape, else 0 |
//! | `xdpguard_attached` | gauge | `program`, `pin`, `interface`, `mode` | 1 per interface the program is attached to, in XDP mode `native`, `generic` or `offload`; 0 for an attachment lost since (its interface deleted; `lost_attachments()`, `xdpguard status`'s `lost:`), until it is attached there again or detached |
//! | `xdpguard_filter_packets_total` | counter | `pin`, `reason` | packets by verdict reason: `passed`, `allowlisted`, `blocked_v4`, `blocked_v6`, `malformed`, `non_ip`, `rule_dropped`, `rule_passed`, `would_drop_blocked`, `would_drop_rule`, `syn_dropped`, `would_drop_syn`, `syn_cookies_sent`, `syn_cookies_passed`, `rate_limited`, `would_drop_limit`, `timed_blocked`, `would_drop_timed` (each packet in one; their sum is every packet) |
//! | `xdpguard_filter_bytes_total` | counter | `pin`, `reason` | bytes, the same way |
//! | `xdpguard_filter_list_entries` | gauge | `pin`, `list` | entries in the `block` and `allow` lists |
//! | `xdpguard_filter_monitor` | gauge | `pin` | 1 while the filter is in monitor (dry-run) mode ([`Filter::set_monitor`]) |
//! | `xdpguard_filter_rule_packets_total` | counter | `pin`, `rule`, `action`, `text` | packets each rule matched (a monitored drop rule: would have dropped; a count rule: counted): `rule` its id, `action` `drop`, `pass`, `count` or `rate-limit`, `text` its rule text without `monitor` (stable for the id) |
//! | `xdpguard_filter_rule_limited_packets_total`, `xdpguard_filter_rule_limited_bytes_total` | counter | `pin`, `rule` | what each rate-limit rule found over its limit (dropped, or in monitor mode counted and passed) |
//! | `xdpguard_filter_rule_auto_blocks_total` | counter | `pin`, `rule` | timed blocks each rate-limit rule with `block` made |
//! | `xdpguard_filter_rule_bytes_total` | counter | `pin`, `rule`, `action`, `text` | bytes, the same way |
//! | `xdpguard_filter_rule_monitor` | gauge | `pin`, `rule` | 1 for a rule in monitor mode, 0 for the others |
//! | `xdpguard_filter_syn_packets_total` | counter | `pin`, `port`, `counted` | per SYN-guarded port ([`Filter::syn_guard`], [`SynPortStats`](crate::SynPortStats)): `syns`, `dropped`, `would_drop`, `cookies_sent`, `cookies_ok`, `acks_other`, `known_passed`, `unanswerable`; the port's series go when it is unprotected |
//! | `xdpguard_filter_syn_rate` | gauge | `pin`, `port` | the port's SYNs a second, as the guard measured it: drop mode only (the data plane measures no rate in cookie mode; a cookie port has no sample) |
//! | `xdpguard_filter_limiter_total` | counter | `pin`, `counted` | the rate limiter ([`Filter::limiter_stats`]): `buckets_made`, `promote_capped`, `sketch_over`, `blocks_failed`, `expired` |
//! | `xdpguard_filter_limiter_buckets` | gauge | `pin` | exact rate-limit buckets in use |
//! | `xdpguard_filter_limiter_buckets_capacity` | gauge | `pin` | buckets the table holds ([`FilterBuilder::max_limit_buckets`](crate::FilterBuilder::max_limit_buckets)); full, the least recently used is evicted |
//! | `xdpguard_filter_timed_blocks` | gauge | `pin` | live timed blocks ([`Filter::timed_blocks`]) |
//! | `xdpguard_filter_timed_blocks_capacity` | gauge | `pin` | blocks the table holds ([`FilterBuilder::max_timed_blocks`](crate::FilterBuilder::max_timed_blocks)) |
//! | `xdpguard_filter_drop_events_total` | counter | `pin`, `counted` | drop events ([`Filter::event_stats`]): `sent`, `limited` (by the per-CPU event rate), `lost` (ring full) |
//! | `xdpguard_lb_dropped_packets_total` | counter | `pin`, `reason` | drops by reason: `no_backend`, `mtu`, `fragment`, `ip_options`, `echo`, `icmp`, `unsupported`, `headroom`, `nat_untracked` ([`LbDrops`](crate::LbDrops)) |
//! | `xdpguard_lb_dropped_bytes_total` | counter | `pin`, `reason` | bytes, the same way |
//! | `xdpguard_lb_passed_packets_total` | counter | `pin`, `reason` | passed to the stack: `non_vip`, `malformed`, `no_neighbour`, `no_route`, `no_devmap`, `ttl`, `echo` ([`LbStats`]`::passed_*`) |
//! | `xdpguard_lb_passed_bytes_total` | counter | `pin`, `reason` | bytes, the same way |
//! | `xdpguard_lb_event_packets_total` | counter | `pin`, `event` | `tx`, `redirected` (forwarded), `conntrack_refused`, `fragments_forwarded`, `options_forwarded`, `icmp_forwarded`, `echo_answered`, `nat_replies`, `too_big_sent` (the other fields of [`LbStats`]; they overlap) |
//! | `xdpguard_lb_event_bytes_total` | counter | `pin`, `event` | bytes, the same way |
//! | `xdpguard_lb_vip_packets_total` | counter | `pin`, `vip` | packets for a VIP (`tcp 203.0.113.10:80`, `udp [2001:db8::10]:*`) |
//! | `xdpguard_lb_vip_bytes_total` | counter | `pin`, `vip` | bytes for a VIP |
//! | `xdpguard_lb_vip_new_flows_total` | counter | `pin`, `vip` | connection-table entries created |
//! | `xdpguard_lb_vip_lru_hits_total` | counter | `pin`, `vip` | packets whose flow was tracked |
//! | `xdpguard_lb_vip_lru_misses_total` | counter | `pin`, `vip` | packets that chose a backend by Maglev |
//! | `xdpguard_lb_vip_backends` | gauge | `pin`, `vip`, `state` | backends `active` (weight > 0) and `draining` (weight 0) |
//! | `xdpguard_lb_backend_packets_total` | counter | `pin`, `vip`, `backend` | packets sent to a backend (`198.51.100.11`, NAT `198.51.100.11:8080`) |
//! | `xdpguard_lb_backend_bytes_total` | counter | `pin`, `vip`, `backend` | bytes sent to it |
//! | `xdpguard_lb_backend_no_neighbour_packets_total` | counter | `pin`, `vip`, `backend` | of those, packets that found its next hop unresolved ([`BackendStats::no_neighbour`](crate::BackendStats::no_neighbour)) |
//! | `xdpguard_lb_backend_no_neighbour_bytes_total` | counter | `pin`, `vip`, `backend` | bytes, the same way |
//! | `xdpguard_lb_backend_weight` | gauge | `pin`, `vip`, `backend` | its weight (0: draining) |
//! | `xdpguard_lb_backend_neighbour_state` | gauge | `pin`, `vip`, `backend`, `state` | 1 for its next hop's [`NeighbourState`](crate::NeighbourState) now (`resolved`, `resolving`, `unreachable`, `no-route`, `unknown`), 0 for the others |
//! | `xdpguard_lb_backend_next_hop` | gauge | `pin`, `vip`, `backend`, `via`, `interface` | 1: the neighbour it goes through (itself or a gateway) and the egress interface (its name when the LB is attached to it, else `ifindex:N`; both empty without a route) |
//! | `xdpguard_decap_packets_total` | counter | `pin`, `reason` | `decapsulated`, or `passed` untouched |
//! | `xdpguard_decap_bytes_total` | counter | `pin`, `reason` | bytes, the same way |
//! | `xdpguard_decap_local_addresses` | gauge | `pin` | local tunnel endpoints it decapsulates for |
//!
//! The `reason` and `event` values are the row names of
//! [`FilterStats::rows`] and [`LbStats::rows`](crate::LbStats::rows) (an LB
//! row `drop_X` is dropped with reason X, `passed_X` passed with reason X):
//! a counter added to a program is scraped once it is in its `rows()`. A new
//! family is one line in `src/metrics/family.rs` and one `push` where its
//! value is read; the tests check that this table and the README name every
//! family and reason.
//!
//! Requires what reading the programs requires: CAP_BPF (or root), and for
//! the backends' next hops CAP_NET_ADMIN in the load balancer's network
//! namespace (else `state="unknown"`).

mod decap;
mod family;
mod filter;
mod lb;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::error::Error;
#[cfg(doc)]
use crate::{Decap, Filter, FilterStats, LbStats, LoadBalancer};
use family::Samples;
use source::Source;

/// A kind of pinned program, as the `program` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// A [`Filter`]: `filter`.
    Filter,
    /// A [`LoadBalancer`]: `lb`.
    LoadBalancer,
    /// A [`Decap`]: `decap`.
    Decap,
}

impl Program {
    /// Its `program` label value.
    pub fn label(self) -> &'static str {
        match self {
            Program::Filter => "filter",
            Program::LoadBalancer => "lb",
            Program::Decap => "decap",
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Program::Filter => "filter",
            Program::LoadBalancer => "load balancer",
            Program::Decap => "decapsulator",
        })
    }
}

/// Why a program's metrics could not be read at a scrape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Opening or reading a pinned program failed: nothing pinned there
    /// (any more), another kind of program, missing privileges, a map read
    /// refused. Its metrics are absent and its `xdpguard_up` is 0 until it
    /// can be read again.
    #[error("metrics of the {program} pinned at {}: {error}", pin.display())]
    Read {
        /// The kind of program.
        program: Program,
        /// Its pin directory.
        pin: PathBuf,
        /// What failed.
        error: Box<Error>,
    },
    /// The same pin directory given twice (`P` and `P/` are the same, and
    /// so are two paths to it): its samples would be exported twice, and
    /// a scrape with duplicate series is invalid. Name each program once.
    #[error(
        "the pin directory {} is given twice (as a {first} and as a {second}): its metrics would be exported \
         twice, which scrapers refuse; name each program's pin directory once",
        pin.display()
    )]
    DuplicatePin {
        /// The pin directory, as given the second time (normalized).
        pin: PathBuf,
        /// The kind of program it was given as first.
        first: Program,
        /// The kind of program it was given as the second time.
        second: Program,
    },
}

/// A text format to render metrics in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `promtool check metrics`
    /// reads, and what a scraper gets without asking for OpenMetrics).
    Prometheus,
}

impl Format {
    /// Its HTTP `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format an HTTP `Accept` header asks for: OpenMetrics when it
    /// names `application/openmetrics-text` (with a non-zero quality), else
    /// the Prometheus text format.
    pub fn from_accept(accept: &str) -> Format {
        let wants_openmetrics = accept.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"))
                && !parts.any(|p| p.replace(' ', "").strip_prefix("q=").is_some_and(|q| q.parse() == Ok(0.0)))
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// Called with each program that could not be read at a scrape.
type ErrorHook = Arc<dyn Fn(&MetricsError) + Send + Sync>;

/// The metrics of pinned programs, read at each scrape: a
/// prometheus-client [`Collector`]. See the [module docs](self) for the
/// metrics.
///
/// Clones share the programs they have open.
#[derive(Default, Clone)]
pub struct Metrics {
    sources: Vec<Arc<Source>>,
    on_error: Option<ErrorHook>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pins: Vec<String> =
            self.sources.iter().map(|s| format!("{} {}", s.program.label(), s.pin.display())).collect();
        f.debug_struct("Metrics").field("sources", &pins).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of no program yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds the filter pinned at `pin` (see [`Filter::open_pinned`]).
    ///
    /// # Errors
    ///
    /// As [`source`](Self::source).
    pub fn filter(self, pin: impl Into<PathBuf>) -> Result<Metrics, MetricsError> {
        self.source(Program::Filter, pin.into())
    }

    /// Adds the load balancer pinned at `pin` (see [`LoadBalancer::open_pinned`]).
    ///
    /// # Errors
    ///
    /// As [`source`](Self::source).
    pub fn load_balancer(self, pin: impl Into<PathBuf>) -> Result<Metrics, MetricsError> {
        self.source(Program::LoadBalancer, pin.into())
    }

    /// Adds the decapsulator pinned at `pin` (see [`Decap::open_pinned`]).
    ///
    /// # Errors
    ///
    /// As [`source`](Self::source).
    pub fn decap(self, pin: impl Into<PathBuf>) -> Result<Metrics, MetricsError> {
        self.source(Program::Decap, pin.into())
    }

    /// Adds a program of any kind. The `pin` label is `pin` normalized
    /// (`/sys/fs/bpf/x/` and `/sys/fs/bpf//x` are `/sys/fs/bpf/x`); it
    /// need not exist yet (its metrics appear once it does).
    ///
    /// # Errors
    ///
    /// [`MetricsError::DuplicatePin`] when the pin directory was added
    /// already (the same path normalized, or the same directory by another
    /// path: through a symbolic link, relative); `self` is then dropped.
    pub fn source(mut self, program: Program, pin: PathBuf) -> Result<Metrics, MetricsError> {
        let pin = normalized(&pin);
        let key = identity(&pin);
        if let Some(first) = self.sources.iter().find(|s| identity(&s.pin) == key) {
            return Err(MetricsError::DuplicatePin { pin, first: first.program, second: program });
        }
        self.sources.push(Arc::new(Source::new(program, pin)));
        Ok(self)
    }

    /// Calls `hook` with each program that cannot be read at a scrape (the
    /// library never prints: log it).
    pub fn on_error(mut self, hook: impl Fn(&MetricsError) + Send + Sync + 'static) -> Metrics {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// The programs, as (kind, pin directory).
    pub fn sources(&self) -> impl Iterator<Item = (Program, &std::path::Path)> {
        self.sources.iter().map(|s| (s.program, s.pin.as_path()))
    }

    /// A registry with these metrics (and nothing else).
    pub fn registry(self) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(self));
        r
    }

    /// Reads every program now and renders the metrics as text.
    pub fn render(&self, format: Format) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(self.clone()));
        render(&r, format)
    }

    fn collect(&self) -> Samples {
        let mut s = Samples::default();
        for source in &self.sources {
            if let Err(e) = source.read(&mut s) {
                if let Some(hook) = &self.on_error {
                    hook(&e);
                }
            }
        }
        s
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        self.collect().encode(&mut encoder)
    }
}

/// `pin` without its redundant parts (repeated and trailing separators,
/// `.` components): what the `pin` label shows.
fn normalized(pin: &Path) -> PathBuf {
    pin.components().collect()
}

/// What tells two pin directories apart: the directory itself once it
/// exists (symbolic links resolved), else its absolute path. `..` is left
/// to the file system (lexically, `a/../b` is not `b` through a link).
fn identity(pin: &Path) -> PathBuf {
    std::fs::canonicalize(pin).or_else(|_| std::path::absolute(pin)).unwrap_or_else(|_| pin.to_path_buf())
}

/// Renders a registry (ours, or one ours is registered in) as text.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug
    // in prometheus-client, and leaves what was written.
    let _ = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
    };
    out
}

#[cfg(test)]
mod tests;
