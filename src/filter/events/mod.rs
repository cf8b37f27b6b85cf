//! Sampled drop events: what the filter and its rules drop (or would drop,
//! in monitor mode), one event per sampled packet, through a BPF ring
//! buffer shared by the filter and its guard stage (`src/bpf/filter_events.h`).
//!
//! - **Only while someone reads.** The data plane sends events only while a
//!   reader holds a fresh *lease*: a deadline in the filter's config word
//!   `events_lease`, which [`EventReader`] sets when it starts, refreshes
//!   on every poll and clears when dropped. A reader that dies (even by
//!   SIGKILL) stops production within its lease ([`EventOptions::lease`]):
//!   the first drop after the deadline clears the word. With no lease a drop
//!   pays one load from the config line it has just read and a branch not
//!   taken: nothing measurable (BENCHMARKS.md, *Drop events*).
//! - **Rate-limited in the kernel**, per CPU: a token bucket of
//!   [`EventRate::per_second`] events a second with a
//!   [`EventRate::burst`] ([`Filter::set_event_rate`]); what it leaves
//!   out is counted ([`EventStats::limited`]), as are events the ring had
//!   no room for ([`EventStats::lost`]: a reader too slow).
//! - **What an event carries**: the reason ([`DropReason`]), the deciding
//!   rule (for rule drops), the interface and receive queue, the frame's
//!   length, the time, and the frame's first
//!   [`SNAP_LEN`] bytes (every header the filter decides on; see
//!   `filter_events_consts.h` for why 128).
//!
//! One reader at a time: the ring has one consumer position (two readers
//! would split the events between them), so a reader takes the lease only
//! when no other holds a fresh one: a second is refused with
//! [`EventError::Busy`], which says for how long the first holds it. A
//! reader gives back, and renews, only its own lease.

mod layout;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use libbpf_rs::{RingBuffer, RingBufferBuilder};

use crate::core::layout::consts::*;
use crate::core::maps::{io_from_libbpf, TypedMap};
use crate::filter::maps::FilterMaps;
use crate::filter::{Filter, RuleId};
use layout::{xdpg_drop_event, xdpg_events_config};

/// Bytes of each packet an event carries at most (from the Ethernet header).
pub const SNAP_LEN: usize = XDPG_EVENT_SNAP_LEN as usize;

/// Errors of the drop events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A rate or burst out of range.
    #[error("invalid event rate {per_second}/s with a burst of {burst}: {reason}")]
    Rate {
        /// Events per second asked for.
        per_second: u32,
        /// The burst asked for.
        burst: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A lease too short or too long.
    #[error("invalid lease {lease:?}: {reason}")]
    Lease {
        /// The lease asked for.
        lease: Duration,
        /// What is wrong.
        reason: &'static str,
    },
    /// Another reader holds a fresh lease on the events (one reader at a
    /// time), or took it over after this reader's ran out.
    #[error(
        "another reader holds the drop events for {remaining:.1?} more (one reader at a time: the ring has one \
         consumer position); stop it (xdpguard events, top, capture, or an EventReader), or try again when its \
         lease has run out"
    )]
    Busy {
        /// How long the other reader's lease runs, unless it renews it.
        remaining: Duration,
    },
    /// The kernel refused an operation on the event maps.
    #[error("{op} failed: {error}")]
    Bpf {
        /// What was being done.
        op: &'static str,
        /// The kernel's error.
        error: io::Error,
    },
}

/// Why a packet was dropped (or would have been, in monitor mode): the
/// filter's verdict reasons that drop. New drop reasons come with new
/// data-plane stages: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// An IPv4 source on the blocklist.
    BlockedV4,
    /// An IPv6 source on the blocklist.
    BlockedV6,
    /// Malformed headers, under [`MalformedPolicy::Drop`](crate::MalformedPolicy::Drop).
    Malformed,
    /// A drop rule matched (its id is the event's `rule`).
    RuleDropped,
    /// Monitor mode: a blocklisted source, passed.
    WouldDropBlocked,
    /// Monitor mode: a drop rule matched, passed.
    WouldDropRule,
    /// Over a rate-limit rule's limit (its id is the event's `rule`).
    RateLimited,
    /// Monitor mode: over a rate-limit rule's limit, passed.
    WouldDropLimit,
    /// A source in a timed block ([`Filter::timed_blocks`](crate::Filter::timed_blocks)).
    TimedBlocked,
    /// Monitor mode: a source in a timed block, passed.
    WouldDropTimed,
    /// The SYN guard: a SYN over its port's threshold from an unknown
    /// source, or one cookie mode cannot answer.
    SynDropped,
    /// Monitor mode: a SYN the SYN guard would have dropped or answered, passed.
    WouldDropSyn,
}

// The names of the counters the same drops add to (`Stats::rows`, the
// metrics' `reason` label), so an event and a counter say the same; the
// names shown before are still read.
crate::core::names::named_values! { DropReason, "drop reason", {
    BlockedV4 => "blocked_v4" | "blocked-v4",
    BlockedV6 => "blocked_v6" | "blocked-v6",
    Malformed => "malformed",
    RuleDropped => "rule_dropped" | "rule",
    WouldDropBlocked => "would_drop_blocked" | "would-drop-blocked",
    WouldDropRule => "would_drop_rule" | "would-drop-rule",
    RateLimited => "rate_limited" | "rate-limit",
    WouldDropLimit => "would_drop_limit" | "would-drop-limit",
    TimedBlocked => "timed_blocked" | "timed-block",
    WouldDropTimed => "would_drop_timed" | "would-drop-timed",
    SynDropped => "syn_dropped" | "syn",
    WouldDropSyn => "would_drop_syn" | "would-drop-syn",
} }

impl DropReason {
    /// The reason of the data plane's code (`enum xdpg_filter_reason`);
    /// `None` for reasons that do not drop.
    fn from_code(code: u32) -> Option<DropReason> {
        Some(match code {
            XDPG_REASON_BLOCKED_V4 => DropReason::BlockedV4,
            XDPG_REASON_BLOCKED_V6 => DropReason::BlockedV6,
            XDPG_REASON_MALFORMED => DropReason::Malformed,
            XDPG_REASON_RULE_DROPPED => DropReason::RuleDropped,
            XDPG_REASON_WOULD_DROP_BLOCKED => DropReason::WouldDropBlocked,
            XDPG_REASON_WOULD_DROP_RULE => DropReason::WouldDropRule,
            XDPG_REASON_RATE_LIMITED => DropReason::RateLimited,
            XDPG_REASON_WOULD_DROP_LIMIT => DropReason::WouldDropLimit,
            XDPG_REASON_TIMED_BLOCKED => DropReason::TimedBlocked,
            XDPG_REASON_WOULD_DROP_TIMED => DropReason::WouldDropTimed,
            XDPG_REASON_SYN_DROPPED => DropReason::SynDropped,
            XDPG_REASON_WOULD_DROP_SYN => DropReason::WouldDropSyn,
            _ => return None,
        })
    }

    /// Whether the packet was passed (monitor mode), not dropped.
    pub fn is_would_drop(self) -> bool {
        matches!(
            self,
            DropReason::WouldDropBlocked
                | DropReason::WouldDropRule
                | DropReason::WouldDropLimit
                | DropReason::WouldDropTimed
                | DropReason::WouldDropSyn
        )
    }

    /// Whether a rule decided (the event's `rule` names it).
    pub fn is_rule(self) -> bool {
        matches!(
            self,
            DropReason::RuleDropped | DropReason::WouldDropRule | DropReason::RateLimited | DropReason::WouldDropLimit
        )
    }

    /// Whether a list entry (the blocklist) decided, rather than a rule.
    pub fn is_list(self) -> bool {
        matches!(self, DropReason::BlockedV4 | DropReason::BlockedV6 | DropReason::WouldDropBlocked)
    }
}

/// One sampled drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// Why it was dropped.
    pub reason: DropReason,
    /// The drop rule that matched, for rule drops.
    pub rule: Option<RuleId>,
    /// The receiving interface's index.
    pub ifindex: u32,
    /// The receive queue.
    pub queue: u32,
    /// The frame's length, from the Ethernet header.
    pub len: u32,
    /// When the data plane decided (the kernel's monotonic clock, shown as
    /// wall-clock time: exact between events, as exact as the two clocks'
    /// offset at the last poll otherwise).
    pub time: SystemTime,
    /// The frame's first bytes: all of it up to [`SNAP_LEN`].
    pub bytes: Vec<u8>,
}

/// The event rate limit, per CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRate {
    /// Events per second each CPU may send (1 to 1,000,000).
    pub per_second: u32,
    /// Events a CPU may send at once after a quiet time (1 to 1,000,000).
    pub burst: u32,
}

impl Default for EventRate {
    fn default() -> Self {
        EventRate { per_second: XDPG_EVENT_DEFAULT_RATE, burst: XDPG_EVENT_DEFAULT_BURST }
    }
}

impl EventRate {
    /// `per_second` events a second, with a burst of as many.
    pub fn per_second(per_second: u32) -> Self {
        EventRate { per_second, burst: per_second }
    }

    fn check(self) -> Result<(), EventError> {
        let bad = |reason| Err(EventError::Rate { per_second: self.per_second, burst: self.burst, reason });
        match (self.per_second, self.burst) {
            (0, _) | (_, 0) => bad("both must be at least 1 (stop reading to stop the events)"),
            (r, b) if r > XDPG_EVENT_MAX_RATE || b > XDPG_EVENT_MAX_RATE => bad("both must be at most 1000000"),
            _ => Ok(()),
        }
    }
}

/// Event counts since the filter was loaded, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events put in the ring.
    pub sent: u64,
    /// Drops the rate limit left out (while a reader held a lease).
    pub limited: u64,
    /// Events the ring had no room for: the reader did not keep up.
    pub lost: u64,
}

/// How [`Filter::events`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOptions {
    /// How long the data plane keeps sending after the reader's last poll
    /// (default 2 s; 10 ms to 1 hour). A poll waits at most half of it
    /// between refreshes.
    pub lease: Duration,
    /// A rate to set first ([`Filter::set_event_rate`]); `None` keeps the
    /// one in force.
    pub rate: Option<EventRate>,
    /// Take the lease even from another reader that holds a fresh one (it
    /// gets [`EventError::Busy`] at its next poll): for a reader that died
    /// with a long lease. Off by default.
    pub take_over: bool,
}

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions { lease: Duration::from_secs(2), rate: None, take_over: false }
    }
}

impl EventOptions {
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the rate first.
    pub fn rate(mut self, rate: EventRate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Takes the lease even from another reader ([`EventOptions::take_over`]).
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }
}

/// Sets a newly loaded filter's event rate to the default.
pub(crate) fn init(maps: &FilterMaps) {
    let rate = EventRate::default();
    maps.events_cfg.set(0, xdpg_events_config { rate: rate.per_second, burst: rate.burst });
}

/// The kernel's monotonic clock (`bpf_ktime_get_ns`'s), in ns.
fn monotonic_ns() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The low bits of a lease word: its reader's tag (1 to 15), so two
/// readers never write the same word (a reader renews only the word it
/// wrote). The deadline is rounded up past them: at most 32 ms longer.
const LEASE_TAG: u32 = 0xF;

/// The lease word for a deadline `lease` from now, tagged `tag` (never 0,
/// "no reader").
fn lease_word(lease: Duration, tag: u32) -> u32 {
    let deadline = monotonic_ns() + lease.as_nanos() as u64;
    ((deadline >> XDPG_EVENT_LEASE_SHIFT) as u32).wrapping_add(LEASE_TAG) & !LEASE_TAG | tag
}

/// A tag for a reader about to take the lease word `cur`: not the tag of
/// the reader that wrote it.
fn lease_tag(cur: u32) -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    let tag = seed % LEASE_TAG + 1;
    if tag == cur & LEASE_TAG {
        tag % LEASE_TAG + 1
    } else {
        tag
    }
}

/// How long the lease word `word` runs from now (zero: none, or run out),
/// compared with wrap-around as the data plane compares it. A deadline
/// further away than the longest lease is one that ran out so long ago
/// (about 26 days without a drop to clear it) that it wrapped around: run
/// out too.
fn lease_left(word: u32) -> Duration {
    let now = (monotonic_ns() >> XDPG_EVENT_LEASE_SHIFT) as u32;
    let left = word.wrapping_sub(now) as i32;
    let left = Duration::from_nanos((left.max(0) as u64) << XDPG_EVENT_LEASE_SHIFT);
    // The longest lease, rounded up and tagged (lease_word), and a unit.
    let longest = MAX_LEASE + Duration::from_nanos((2 * u64::from(LEASE_TAG) + 1) << XDPG_EVENT_LEASE_SHIFT);
    if word == 0 || left > longest {
        return Duration::ZERO;
    }
    left
}

/// The longest lease a reader may ask for.
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Reads drop events while holding the lease: see [`Filter::events`].
pub struct EventReader<'f> {
    filter: &'f Filter,
    ring: RingBuffer<'static>,
    queue: Arc<Mutex<VecDeque<xdpg_drop_event>>>,
    lease: Duration,
    /// The lease word this reader wrote last (0: none yet).
    held: std::sync::atomic::AtomicU32,
    /// This reader's tag in its lease words ([`LEASE_TAG`]).
    tag: u32,
}

impl std::fmt::Debug for EventReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").field("lease", &self.lease).finish_non_exhaustive()
    }
}

impl EventReader<'_> {
    /// Refreshes the lease: the data plane sends for another lease from now.
    /// Takes it again after it ran out (the data plane cleared it), unless
    /// another reader took it meanwhile.
    ///
    /// # Errors
    ///
    /// [`EventError::Busy`] when another reader holds a fresh lease.
    pub fn refresh(&self) -> Result<(), EventError> {
        self.claim(false)
    }

    /// Writes a lease from now over this reader's own, none, one run out,
    /// or (`take_over`) any.
    fn claim(&self, take_over: bool) -> Result<(), EventError> {
        let word = self.filter.core.maps.events_lease();
        let (mine, new) = (self.held.load(Ordering::Relaxed), lease_word(self.lease, self.tag));
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let remaining = lease_left(cur);
            if cur != mine && !remaining.is_zero() && !take_over {
                return Err(EventError::Busy { remaining });
            }
            match word.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.held.store(new, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Waits up to `timeout` for events and returns those that arrived
    /// (empty when none did), refreshing the lease at least every half
    /// lease while it waits.
    ///
    /// # Errors
    ///
    /// [`EventError::Bpf`] when reading the ring fails (not for a signal:
    /// an interrupted wait returns what arrived); [`EventError::Busy`] when
    /// another reader took the lease after this one's ran out.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<DropEvent>, EventError> {
        let start = std::time::Instant::now();
        loop {
            self.refresh()?;
            self.consume()?;
            if !self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty() {
                break;
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            let wait = left.min(self.lease / 2);
            match self.ring.poll(wait) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => break,
                Err(e) => return Err(EventError::Bpf { op: "waiting for events", error: io_from_libbpf(e) }),
            }
        }
        self.refresh()?;
        Ok(self.take())
    }

    /// Returns the events the ring holds now (empty when none), without
    /// waiting, and refreshes the lease: the call an async reader makes
    /// when its fd ([`AsFd`](std::os::fd::AsFd)) is
    /// readable, and at least every half [lease](Self::lease) in any case
    /// (a reader that only waits for events lets its lease run out while
    /// no drop comes, and then no drop sends one).
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
    /// use std::os::fd::AsFd;
    /// use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    ///
    /// let mut events = filter.events(xdpguard::EventOptions::default())?;
    /// let half_lease = PollTimeout::try_from(events.lease() / 2)?;
    /// loop {
    ///     // Or register the fd with tokio's AsyncFd, mio or epoll.
    ///     poll(&mut [PollFd::new(events.as_fd(), PollFlags::POLLIN)], half_lease)?;
    ///     for e in events.read_ready()? {
    ///         println!("{} on ifindex {}", e.reason, e.ifindex);
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`poll`](Self::poll): [`EventError::Bpf`] when reading the ring
    /// fails, [`EventError::Busy`] when another reader took the lease
    /// after this one's ran out.
    pub fn read_ready(&mut self) -> Result<Vec<DropEvent>, EventError> {
        self.refresh()?;
        self.consume()?;
        Ok(self.take())
    }

    /// The lease this reader holds ([`EventOptions::lease`]): how often it
    /// must read ([`read_ready`](Self::read_ready), [`poll`](Self::poll)) or
    /// [`refresh`](Self::refresh) at the least, halved.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Moves what the ring holds into the queue.
    fn consume(&self) -> Result<(), EventError> {
        self.ring.consume().map_err(|e| EventError::Bpf { op: "reading the event ring", error: io_from_libbpf(e) })
    }

    /// The queued events, decoded; the queue emptied.
    fn take(&self) -> Vec<DropEvent> {
        let raw: Vec<xdpg_drop_event> =
            self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..).collect();
        // The kernel's clock to wall-clock time, at this instant.
        let (wall, mono) = (SystemTime::now(), monotonic_ns());
        raw.iter()
            .filter_map(|e| {
                let reason = DropReason::from_code(e.reason)?;
                let age = Duration::from_nanos(mono.saturating_sub(e.time_ns));
                let cap = (e.cap_len as usize).min(SNAP_LEN);
                Some(DropEvent {
                    reason,
                    rule: reason.is_rule().then_some(RuleId(e.rule)),
                    ifindex: e.ifindex,
                    queue: e.rx_queue,
                    len: e.len,
                    time: wall.checked_sub(age).unwrap_or(wall),
                    bytes: e.bytes[..cap].to_vec(),
                })
            })
            .collect()
    }
}

/// The ring's epoll fd: readable (`POLLIN`, level-triggered) while the
/// ring holds events no read has taken, for a reader that waits in its own
/// event loop (tokio's `AsyncFd`, mio, epoll, `poll(2)`) rather than in
/// [`EventReader::poll`]. When it is readable, call
/// [`EventReader::read_ready`]; wait at most half the
/// [lease](EventReader::lease) between reads, as the lease runs out
/// otherwise. The fd belongs to the reader: do not close it, and read
/// only through the reader (reading nothing from the fd itself).
///
/// Requires the ring buffer, as the reader does (Linux 5.8; the filter
/// itself needs 5.15). Infallible: the fd exists from
/// [`Filter::events`] on, which reports any error creating it.
impl std::os::fd::AsFd for EventReader<'_> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: libbpf creates the epoll fd with the ring buffer
        // (`ring_buffer__new`, which `build` checked) and closes it only in
        // `ring_buffer__free`, when `self.ring` drops: it is open for as
        // long as `&self`, which the returned borrow cannot outlive.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }
}

impl std::os::fd::AsRawFd for EventReader<'_> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.epoll_fd()
    }
}

impl Drop for EventReader<'_> {
    /// Gives the lease back, if it is still this reader's: production
    /// stops at the next drop.
    fn drop(&mut self) {
        let held = self.held.load(Ordering::Relaxed);
        if held != 0 {
            let _ = self.filter.core.maps.events_lease().compare_exchange(held, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl Filter {
    /// Starts reading sampled drop events ([`DropEvent`]): from now until
    /// the reader is dropped (or stops polling for longer than its lease),
    /// the filter and its rules send an event for each drop and would-drop
    /// (monitor mode), at most [`event_rate`](Self::event_rate) a second per
    /// CPU. Nothing is sent, and nothing measurable spent, while no one reads.
    ///
    /// Requires the ring buffer (Linux 5.8; the filter itself needs 5.15).
    ///
    /// ```no_run
    /// # let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
    /// use std::time::Duration;
    /// use xdpguard::EventOptions;
    ///
    /// let mut events = filter.events(EventOptions::default())?;
    /// for e in events.poll(Duration::from_secs(1))? {
    ///     println!("{} {} bytes on ifindex {} (rule {:?})", e.reason, e.len, e.ifindex, e.rule);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventError::Lease`] for a lease out of range, [`EventError::Rate`]
    /// for a bad `options.rate`, [`EventError::Bpf`] when the ring cannot be
    /// opened or mapped, [`EventError::Busy`] while another reader holds a
    /// fresh lease. Nothing changes on error.
    pub fn events(&self, options: EventOptions) -> Result<EventReader<'_>, EventError> {
        if options.lease < Duration::from_millis(10) || options.lease > MAX_LEASE {
            return Err(EventError::Lease { lease: options.lease, reason: "choose between 10 ms and 1 hour" });
        }
        if let Some(rate) = options.rate {
            rate.check()?;
        }
        // Borrowed from the filter, which outlives the reader: the ring
        // polls its fd.
        let map = self.core.maps.events.handle();
        let queue: Arc<Mutex<VecDeque<xdpg_drop_event>>> = Arc::default();
        let sink = Arc::clone(&queue);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |data: &[u8]| {
                if data.len() >= size_of::<xdpg_drop_event>() {
                    let e: xdpg_drop_event = bytemuck::pod_read_unaligned(&data[..size_of::<xdpg_drop_event>()]);
                    sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(e);
                }
                0
            })
            .map_err(|e| EventError::Bpf { op: "mapping the event ring", error: io_from_libbpf(e) })?;
        let ring =
            builder.build().map_err(|e| EventError::Bpf { op: "mapping the event ring", error: io_from_libbpf(e) })?;
        let tag = lease_tag(self.core.maps.events_lease().load(Ordering::Acquire));
        let reader = EventReader { filter: self, ring, queue, lease: options.lease, held: 0.into(), tag };
        // The lease first: a reader refused leaves the rate in force as it is.
        reader.claim(options.take_over)?;
        if let Some(rate) = options.rate {
            self.set_event_rate(rate)?;
        }
        Ok(reader)
    }

    /// The event rate limit in force (per CPU).
    pub fn event_rate(&self) -> EventRate {
        let c = self.core.maps.events_cfg.get(0);
        EventRate { per_second: c.rate, burst: c.burst }
    }

    /// Sets the event rate limit (per CPU); takes effect at the next event.
    /// Applies to every reader of this filter.
    ///
    /// # Errors
    ///
    /// [`EventError::Rate`] when either number is 0 or above 1,000,000.
    pub fn set_event_rate(&self, rate: EventRate) -> Result<(), EventError> {
        rate.check()?;
        self.core.maps.events_cfg.set(0, xdpg_events_config { rate: rate.per_second, burst: rate.burst });
        Ok(())
    }

    /// How many events were sent, left out by the rate limit, and lost.
    ///
    /// # Errors
    ///
    /// [`EventError::Bpf`] when the per-CPU counts cannot be read.
    pub fn event_stats(&self) -> Result<EventStats, EventError> {
        let c = self
            .core
            .maps
            .events_cpu
            .sum(0)
            .map_err(|source| EventError::Bpf { op: "reading the event counts", error: source })?;
        Ok(EventStats { sent: c.sent, limited: c.limited, lost: c.lost })
    }

    /// Whether a reader holds a lease now (the data plane clears an
    /// expired one at the next drop).
    pub fn events_lease_held(&self) -> bool {
        self.core.maps.events_lease().load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_round_trip_and_cover_every_dropping_code() {
        for r in DropReason::ALL {
            assert_eq!(r.to_string().parse::<DropReason>().unwrap(), *r);
        }
        let decoded: Vec<DropReason> = (0..XDPG_REASON_COUNT).filter_map(DropReason::from_code).collect();
        assert_eq!(decoded.len(), DropReason::ALL.len(), "every dropping reason has a DropReason, once");
        for passing in [
            XDPG_REASON_PASSED,
            XDPG_REASON_ALLOWLISTED,
            XDPG_REASON_RULE_PASSED,
            XDPG_REASON_NON_IP,
            XDPG_REASON_SYN_COOKIE_SENT,
            XDPG_REASON_SYN_COOKIE_PASSED,
        ] {
            assert_eq!(DropReason::from_code(passing), None);
        }
    }

    #[test]
    fn rates_out_of_range_are_refused() {
        assert!(EventRate { per_second: 1, burst: 1 }.check().is_ok());
        assert!(EventRate::per_second(XDPG_EVENT_MAX_RATE).check().is_ok());
        for (per_second, burst) in [(0, 1), (1, 0), (XDPG_EVENT_MAX_RATE + 1, 1), (1, XDPG_EVENT_MAX_RATE + 1)] {
            assert!(matches!(EventRate { per_second, burst }.check(), Err(EventError::Rate { .. })));
        }
    }

    #[test]
    fn lease_words_carry_their_readers_tag_and_run_out_with_wrap_around() {
        for tag in 1..=LEASE_TAG {
            let w = lease_word(Duration::from_secs(1), tag);
            assert_eq!(w & LEASE_TAG, tag);
            let left = lease_left(w);
            assert!(left >= Duration::from_millis(990) && left <= Duration::from_millis(1035), "{left:?}");
            // A reader taking this word over gets another tag.
            assert!((1..=LEASE_TAG).contains(&lease_tag(w)) && lease_tag(w) != tag);
        }
        let now = (monotonic_ns() >> XDPG_EVENT_LEASE_SHIFT) as u32;
        assert_eq!(lease_left(0), Duration::ZERO, "no reader");
        assert_eq!(lease_left(now.wrapping_sub(1)), Duration::ZERO, "run out");
        // A deadline that ran out ~26 days ago looks a whole half-range ahead.
        assert_eq!(lease_left(now.wrapping_add(i32::MAX as u32)), Duration::ZERO, "wrapped around");
        assert!(lease_left(lease_word(MAX_LEASE, 1)) > MAX_LEASE - Duration::from_secs(1), "the longest lease");
    }
}
