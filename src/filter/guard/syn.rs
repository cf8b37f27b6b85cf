//! The SYN-flood guard ([`SynGuard`], from [`Filter::syn_guard`]): the last
//! step of the filter's guard stage (`src/bpf/guard_syn.h`), for TCP
//! packets to the ports an operator protects.
//!
//! Data plane: a 65,536-entry array maps a destination port to its slot
//! (one inlined lookup for every TCP packet the guard sees); a slot (one
//! cache line) holds the port's policy and its SYN rate; per-CPU counters
//! per slot; an LRU of the sources that completed a handshake. The model
//! (the protected ports and their policies) is read back from the slots.

use std::collections::BTreeMap;
use std::fmt;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::core::grace;
use crate::core::layout::consts::*;
use crate::core::layout::pod;
use crate::core::maps::summable;
use crate::error::{Error, LoadError, RuleError};
use crate::filter::guard::layout::guard_skel::types::{
    xdpg_syn_config, xdpg_syn_counters, xdpg_syn_key, xdpg_syn_port,
};
use crate::filter::guard::maps::GuardMaps;
use crate::filter::guard::Guard;
use crate::filter::Filter;

pod!(xdpg_syn_config, xdpg_syn_counters, xdpg_syn_key, xdpg_syn_port);
summable!(xdpg_syn_counters {
    syns,
    dropped,
    would_drop,
    cookies_sent,
    cookies_ok,
    acks_other,
    known_passed,
    unanswerable
});

// The same numbers as the _Static_asserts in src/bpf/guard_syn_structs.h.
const _: () = {
    assert!(size_of::<xdpg_syn_config>() == 32);
    assert!(offset_of!(xdpg_syn_config, known_ttl_s) == 4);
    assert!(size_of::<xdpg_syn_port>() == 64);
    assert!(offset_of!(xdpg_syn_port, port) == 4);
    assert!(offset_of!(xdpg_syn_port, mss) == 6);
    assert!(offset_of!(xdpg_syn_port, mode) == 8);
    assert!(offset_of!(xdpg_syn_port, window) == 16);
    assert!(offset_of!(xdpg_syn_port, cur) == 24);
    assert!(offset_of!(xdpg_syn_port, prev) == 32);
    assert!(size_of::<xdpg_syn_counters>() == 64);
    assert!(size_of::<xdpg_syn_key>() == 20);
};

/// How a protected port's SYNs are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynMode {
    /// Count the port's SYNs; above `threshold` SYNs a second, drop SYNs
    /// from sources that have not completed a handshake (see
    /// [`Filter::syn_guard`] for how that is known).
    Drop {
        /// SYNs a second the port takes from any source.
        threshold: u32,
    },
    /// Answer every SYN with a SYN cookie from XDP; pass ACKs carrying a
    /// valid cookie. The host must run nftables `synproxy` for the port
    /// ([`nft_rules`]).
    Cookie,
}

/// A protected port's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SynPolicy {
    /// What is done with its SYNs.
    pub mode: SynMode,
    /// Cookie mode: the MSS the SYN-ACK advertises; 0: 1460 (IPv4) and
    /// 1440 (IPv6). Use the value of the nftables rule's `synproxy mss`.
    pub mss: u16,
    /// Only count what would be dropped or answered (in
    /// [`SynPortStats::would_drop`]); pass it.
    pub monitor: bool,
    /// Cookie mode, `Some(shift)`: the SYN-ACK also offers window scaling
    /// by `shift`, SACK and timestamps, as nftables synproxy's own SYN-ACK
    /// does, whenever the SYN offers timestamps (where the client's window
    /// scale and SACK permission are kept until its ACK; a SYN without
    /// them gets the MSS alone). `shift` must be the server's own window
    /// scale, which synproxy's rule gives too (`wscale N timestamp
    /// sack-perm`, as [`nft_rules_for`] writes it): [`host_wscale`] for a
    /// server with the default buffers. `None` (the default,
    /// [`SynPolicy::cookies`]): the MSS alone, and connections opened
    /// through a cookie have no window scaling (at most 64 KiB in flight),
    /// SACK or timestamps. A slot written by a filter older than this
    /// field reads back as `None`.
    ///
    /// Why the MSS alone is the default: with timestamps, the ACK nftables
    /// synproxy sends the server to complete its handshake echoes the
    /// server's timestamp shifted by the connection's timestamp offset
    /// (synproxy's own `tsoff`, applied to the ACK it generated itself on
    /// its way out), and Linux 6.18's server drops an ACK whose echo is
    /// not a timestamp it sent (`TcpExtTSEcrRejected`). The server then
    /// learns of the connection only from the client's first data segment
    /// (echo rewritten correctly) or, when the server speaks first (SMTP,
    /// SSH, FTP, databases), from its SYN-ACK retransmitted after 1 s:
    /// about one second more per connection, measured on Linux 6.18 with
    /// synproxy alone, without the guard. Without timestamps synproxy has
    /// no offset to apply and the handshake completes at once. With
    /// `Some`: only for servers whose clients speak first, or with the
    /// server namespace's `net.ipv4.tcp_timestamps=0` (then the server
    /// echoes nothing and keeps window scaling and SACK).
    pub wscale: Option<u8>,
    /// Cookie mode: drop an ACK that carries no valid cookie unless
    /// conntrack (of the network namespace the filter's interface is in)
    /// tracks its connection, so a spoofed ACK flood is dropped in XDP
    /// instead of reaching the stack's conntrack and synproxy, which drop
    /// it there at a far higher cost (counted in
    /// [`SynPortStats::dropped`]). Off by default: right where the TCP
    /// server, its synproxy rules and the filter share a network namespace
    /// (the usual host), wrong where the filter's interface forwards to
    /// servers in other namespaces (their connections are not in this
    /// one's conntrack, and would be dropped). Needs Linux's conntrack
    /// kfuncs (5.18, in `nf_conntrack`): [`SynGuard::protect`] refuses it
    /// where the kernel has none. A guard program loaded before the module
    /// has no conntrack lookup (it would pass the ACKs as with this off):
    /// `protect` reloads a pinned one in place first (as
    /// [`Filter::upgrade_pinned`] does), and refuses for an unpinned one.
    pub drop_untracked_acks: bool,
}

impl SynPolicy {
    /// Drop mode: above `threshold` SYNs a second, drop SYNs from unknown sources.
    pub fn drop_above(threshold: u32) -> SynPolicy {
        SynPolicy {
            mode: SynMode::Drop { threshold },
            mss: 0,
            monitor: false,
            wscale: None,
            drop_untracked_acks: false,
        }
    }

    /// Cookie mode, advertising the default MSS alone: no window scaling,
    /// SACK or timestamps, which cost a server that speaks first about a
    /// second a connection through nftables synproxy
    /// ([`SynPolicy::wscale`]; [`SynPolicy::with_wscale`] offers them).
    pub fn cookies() -> SynPolicy {
        SynPolicy { mode: SynMode::Cookie, mss: 0, monitor: false, wscale: None, drop_untracked_acks: false }
    }

    /// The same, advertising `mss` in cookie mode.
    #[must_use]
    pub fn with_mss(mut self, mss: u16) -> SynPolicy {
        self.mss = mss;
        self
    }

    /// The same, in monitor mode or not.
    #[must_use]
    pub fn with_monitor(mut self, on: bool) -> SynPolicy {
        self.monitor = on;
        self
    }

    /// The same, dropping in cookie mode the ACKs that are neither valid
    /// cookies nor of connections conntrack tracks, or not
    /// ([`SynPolicy::drop_untracked_acks`]).
    #[must_use]
    pub fn with_drop_untracked_acks(mut self, on: bool) -> SynPolicy {
        self.drop_untracked_acks = on;
        self
    }

    /// The same, its cookie SYN-ACKs with window scaling by `wscale`, SACK
    /// and timestamps, or (`None`) with the MSS alone ([`SynPolicy::wscale`]).
    #[must_use]
    pub fn with_wscale(mut self, wscale: Option<u8>) -> SynPolicy {
        self.wscale = wscale;
        self
    }

    fn check(&self, port: u16) -> Result<(), RuleError> {
        let bad = |reason: &str| Err(RuleError::InvalidSynPolicy { port, reason: reason.to_owned() });
        if port == 0 {
            return bad("port 0 cannot be protected: give the server's TCP port (1-65535)");
        }
        if matches!(self.mode, SynMode::Drop { threshold: 0 }) {
            return bad("a threshold of 0 SYNs a second would refuse every new client: give at least 1");
        }
        if self.mss != 0 && self.mode != SynMode::Cookie {
            return bad("an MSS is for cookie mode: drop mode sends no SYN-ACK (give 0)");
        }
        if self.mss != 0 && !(536..=9000).contains(&self.mss) {
            return bad("an MSS must be 536 to 9000 (or 0 for the defaults, 1460 / 1440)");
        }
        match self.wscale {
            Some(_) if self.mode != SynMode::Cookie => {
                return bad("a window scale is for cookie mode: drop mode sends no SYN-ACK (give none)")
            }
            Some(w) if w > XDPG_SYN_MAX_WSCALE as u8 => {
                return bad("a window scale must be 0 to 14 (RFC 7323): give the server's own (host_wscale)")
            }
            _ => {}
        }
        if self.drop_untracked_acks && self.mode != SynMode::Cookie {
            return bad("dropping untracked ACKs is for cookie mode: drop mode learns clients from their ACKs");
        }
        Ok(())
    }

    fn to_slot(self, port: u16) -> xdpg_syn_port {
        let (mode, threshold) = match self.mode {
            SynMode::Drop { threshold } => (XDPG_SYN_MODE_DROP, threshold),
            SynMode::Cookie => (XDPG_SYN_MODE_COOKIE, 0),
        };
        xdpg_syn_port {
            threshold,
            port,
            mss: self.mss,
            mode: mode as u8,
            flags: (if self.monitor { XDPG_SYN_F_MONITOR } else { 0 }
                | if self.wscale.is_some() { XDPG_SYN_F_TCP_OPTIONS } else { 0 }
                | if self.drop_untracked_acks { XDPG_SYN_F_DROP_UNTRACKED } else { 0 }) as u8,
            wscale: self.wscale.unwrap_or(0),
            ..Default::default()
        }
    }

    fn from_slot(s: &xdpg_syn_port) -> Option<SynPolicy> {
        let mode = match u32::from(s.mode) {
            XDPG_SYN_MODE_DROP => SynMode::Drop { threshold: s.threshold },
            XDPG_SYN_MODE_COOKIE => SynMode::Cookie,
            _ => return None,
        };
        let flags = u32::from(s.flags);
        Some(SynPolicy {
            mode,
            mss: s.mss,
            monitor: flags & XDPG_SYN_F_MONITOR != 0,
            wscale: (flags & XDPG_SYN_F_TCP_OPTIONS != 0).then_some(s.wscale),
            drop_untracked_acks: flags & XDPG_SYN_F_DROP_UNTRACKED != 0,
        })
    }
}

impl fmt::Display for SynPolicy {
    /// `drop above 1000/s`, `cookie wscale 10`, `cookie mss 1400 wscale 7`,
    /// `cookie mss-only` (no [`SynPolicy::wscale`]), with
    /// ` drop-untracked-acks` and ` monitor`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            SynMode::Drop { threshold } => write!(f, "drop above {threshold}/s")?,
            SynMode::Cookie => f.write_str("cookie")?,
        }
        if self.mss != 0 {
            write!(f, " mss {}", self.mss)?;
        }
        match self.wscale {
            Some(w) => write!(f, " wscale {w}")?,
            None if self.mode == SynMode::Cookie => f.write_str(" mss-only")?,
            None => {}
        }
        if self.drop_untracked_acks {
            f.write_str(" drop-untracked-acks")?;
        }
        if self.monitor {
            f.write_str(" monitor")?;
        }
        Ok(())
    }
}

impl FromStr for SynMode {
    type Err = crate::ParseError;

    /// `cookie`, or `drop` (threshold 1000/s: set it with [`SynPolicy`]).
    fn from_str(s: &str) -> Result<SynMode, crate::ParseError> {
        match s.trim() {
            "cookie" | "cookies" => Ok(SynMode::Cookie),
            "drop" => Ok(SynMode::Drop { threshold: DEFAULT_SYN_THRESHOLD }),
            _ => Err(crate::ParseError::Invalid {
                what: "SYN guard mode",
                input: s.to_owned(),
                example: "cookie or drop",
            }),
        }
    }
}

/// The threshold `drop` mode gets when none is given: SYNs a second.
pub const DEFAULT_SYN_THRESHOLD: u32 = 1000;
/// Ports the SYN guard can protect at once.
pub const MAX_SYN_PORTS: usize = XDPG_SYN_MAX_PORTS as usize;

/// The window scale this host's TCP offers for a listening socket with
/// its default buffers, as Linux computes it (`tcp_select_initial_window`):
/// log2 of the larger of `net.ipv4.tcp_rmem`'s maximum and
/// `net.core.rmem_max`, less 15, within 0 to 14; read in the calling
/// thread's network namespace. 10 with Linux 6.18's defaults (32 MiB), 7
/// with older kernels' (6 MiB); 7 when the sysctls cannot be read. A server
/// that sets a larger `SO_RCVBUF` itself may use more: give its own in
/// [`SynPolicy::with_wscale`] then.
pub fn host_wscale() -> u8 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let tcp_rmem = read("/proc/sys/net/ipv4/tcp_rmem").and_then(|t| t.split_whitespace().nth(2)?.parse::<u64>().ok());
    let rmem_max = read("/proc/sys/net/core/rmem_max").and_then(|t| t.trim().parse::<u64>().ok());
    match tcp_rmem.max(rmem_max) {
        Some(space) if space > 0 => wscale_for(space),
        _ => 7,
    }
}

/// Whether the running kernel has the conntrack kfuncs the guard's
/// [`SynPolicy::drop_untracked_acks`] needs (`bpf_xdp_ct_lookup` in
/// `/proc/kallsyms`; true when that cannot be read: nothing is refused on
/// a guess). A module loaded after the guard is not in the guard's
/// program, which resolved its kfuncs at load: [`program_has_conntrack`].
fn conntrack_kfuncs() -> bool {
    match std::fs::read_to_string("/proc/kallsyms") {
        Ok(syms) => syms.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf_xdp_ct_lookup")),
        Err(_) => true,
    }
}

/// Whether the guard program that runs now calls conntrack (its only
/// kfuncs): loaded while `nf_conntrack` was not, it does not (its weak
/// kfuncs resolved to nothing, and the verifier removed their calls). True
/// when its instructions cannot be read (kernel.kptr_restrict): nothing is
/// refused on a guess.
fn program_has_conntrack(program: BorrowedFd<'_>) -> bool {
    crate::core::sys::prog_kfunc_calls(program).map_or(true, |calls| calls > 0)
}

/// [`program_has_conntrack`] of the guard program that runs now (the
/// pinned one, when pinned).
fn guard_has_conntrack(guard: &Guard) -> Result<bool, RuleError> {
    let program = guard.core.program.current().map_err(|e| rule_error("opening the guard stage's program", e))?;
    Ok(program_has_conntrack(program.as_fd()))
}

/// A core error as the guard's: pin errors as they are, the rest as a
/// failed `op`.
fn rule_error(op: &str, e: Error) -> RuleError {
    match e {
        Error::Pin(p) => RuleError::Pin(p),
        Error::Rule(r) => r,
        e => RuleError::Bpf { op: op.to_owned(), error: std::io::Error::other(e) },
    }
}

/// Linux's window scale for a receive space of `space` bytes.
fn wscale_for(space: u64) -> u8 {
    let space = space.min(u64::from(u32::MAX));
    (space.ilog2().saturating_sub(15)).min(XDPG_SYN_MAX_WSCALE) as u8
}

/// A protected port's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SynPortStats {
    /// SYNs to the port (not allowlisted, not decided by a rule).
    pub syns: u64,
    /// Drop mode: SYNs over the threshold from unknown sources, dropped.
    /// Cookie mode: ACKs neither valid cookies nor of tracked connections,
    /// dropped ([`SynPolicy::drop_untracked_acks`]).
    pub dropped: u64,
    /// Monitor: SYNs that would have been dropped or answered, passed.
    pub would_drop: u64,
    /// Cookie mode: SYN-ACKs sent.
    pub cookies_sent: u64,
    /// Cookie mode: ACKs with a valid cookie, passed to the stack.
    pub cookies_ok: u64,
    /// Cookie mode: ACKs without a valid cookie (established connections,
    /// or forged) passed to the stack, whose conntrack drops the forged
    /// (with [`SynPolicy::drop_untracked_acks`], those of tracked
    /// connections only).
    pub acks_other: u64,
    /// Drop mode: SYNs over the threshold from known sources, passed.
    pub known_passed: u64,
    /// Cookie mode: SYNs the guard does not answer, dropped: with IPv4
    /// options or IPv6 extension headers, to a group MAC, or from or to a
    /// multicast, broadcast, unspecified or loopback address.
    pub unanswerable: u64,
}

impl From<xdpg_syn_counters> for SynPortStats {
    fn from(c: xdpg_syn_counters) -> Self {
        SynPortStats {
            syns: c.syns,
            dropped: c.dropped,
            would_drop: c.would_drop,
            cookies_sent: c.cookies_sent,
            cookies_ok: c.cookies_ok,
            acks_other: c.acks_other,
            known_passed: c.known_passed,
            unanswerable: c.unanswerable,
        }
    }
}

/// A protected port, its policy, SYN rate and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynPortStatus {
    /// The TCP port.
    pub port: u16,
    /// Its policy.
    pub policy: SynPolicy,
    /// Drop mode: SYNs in the last second, as the data plane estimates it.
    pub rate: u64,
    /// Its counters (since it was protected).
    pub stats: SynPortStats,
}

/// The SYN guard's part of the guard's model: protected ports by port,
/// each with its slot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SynState {
    pub ports: BTreeMap<u16, (usize, SynPolicy)>,
}

impl SynState {
    /// Reads the protected ports back from the slots.
    pub(crate) fn load(maps: &GuardMaps) -> SynState {
        let mut ports = BTreeMap::new();
        for slot in 0..maps.syn_slots.len() {
            let s = maps.syn_slots.get(slot);
            if let Some(policy) = SynPolicy::from_slot(&s) {
                ports.insert(s.port, (slot, policy));
            }
        }
        SynState { ports }
    }

    pub(crate) fn active(&self) -> bool {
        !self.ports.is_empty()
    }

    /// Makes the port index and the config's port count match the slots
    /// (after an edit cut short: `protect` writes the slot, then the index,
    /// then the count; `unprotect` the reverse).
    pub(crate) fn repair(&self, maps: &GuardMaps) {
        for port in 0..XDPG_SYN_IDX_ENTRIES as usize {
            let want =
                u16::try_from(port).ok().and_then(|p| self.ports.get(&p)).map_or(0, |&(slot, _)| slot as u64 + 1);
            if maps.syn_idx.get(port) != want {
                maps.syn_idx.set(port, want);
            }
        }
        ports_word(maps).store(self.ports.len() as u32, Ordering::Release);
    }
}

/// Sets the SYN guard's config at load: no port, the default known TTL.
pub(crate) fn init(maps: &GuardMaps) {
    let cfg = xdpg_syn_config { known_ttl_s: XDPG_SYN_KNOWN_TTL_S, ..Default::default() };
    maps.syn_cfg.set(0, cfg);
}

fn ports_word(maps: &GuardMaps) -> &std::sync::atomic::AtomicU32 {
    maps.syn_cfg.atomic_u32(0, offset_of!(xdpg_syn_config, ports))
}

/// Gives a protected port's live slot the policy of `new`, keeping its
/// rate within drop mode. A packet reads the policy as two words, each
/// with one load (`syn_policy_of`, guard_syn.h): `threshold`, `port`,
/// `mss`, then `mode`, `flags`, `wscale`. It may read one word before a
/// change and the other after; so where such a mix would act as neither
/// policy, the first word is written, then [`grace::wait`], then the
/// second: a packet can then see only the first new with the second old,
/// and that mix is chosen to act as the old policy (or to only count):
///
/// - **Leaving drop mode** (for cookies): the first word takes the new
///   MSS but keeps the threshold (drop mode reads no MSS), then the mode.
///   Once no packet reads the slot in drop mode (a second wait), the
///   threshold becomes the cookie policy's 0 and the rate is cleared.
/// - **Entering drop mode**: the rate starts afresh and the first word
///   takes the threshold but keeps the MSS (cookie mode reads no
///   threshold), then the mode; after a second wait, the MSS.
/// - **Drop to drop**: the threshold first, unless the port turns to
///   monitoring: then the flags first. Enforcement never meets a lower
///   threshold meant only for monitoring.
/// - **Cookies to cookies**: any mix of the MSS and the options (the
///   second word, read whole) is a valid SYN-ACK, and no wait is needed.
///
/// Written as one 64-byte copy, read field by field, a SYN could take a
/// drop policy's threshold 0 in cookie mode's place (dropped), or the
/// cookie options with the window scale of a drop policy.
fn change_policy(maps: &GuardMaps, slot: usize, new: xdpg_syn_port) {
    let old = maps.syn_slots.get(slot);
    let first = |threshold: u32, mss: u16| {
        let s = xdpg_syn_port { threshold, mss, ..new };
        let word: u64 = bytemuck::pod_read_unaligned(&bytemuck::bytes_of(&s)[..8]);
        maps.syn_slots.atomic_u64(slot, 0).store(word, Ordering::Release);
    };
    let second = || {
        let word: u32 = bytemuck::pod_read_unaligned(&bytemuck::bytes_of(&new)[8..12]);
        std::sync::atomic::fence(Ordering::SeqCst);
        maps.syn_slots.atomic_u32(slot, offset_of!(xdpg_syn_port, mode)).store(word, Ordering::Release);
    };
    let reset_rate = || {
        for field in
            [offset_of!(xdpg_syn_port, window), offset_of!(xdpg_syn_port, cur), offset_of!(xdpg_syn_port, prev)]
        {
            maps.syn_slots.atomic_u64(slot, field).store(0, Ordering::Release);
        }
    };
    let drop = XDPG_SYN_MODE_DROP as u8;
    let monitor = XDPG_SYN_F_MONITOR as u8;
    match (old.mode == drop, new.mode == drop) {
        (true, false) => {
            first(old.threshold, new.mss);
            grace::wait();
            second();
            grace::wait();
            first(new.threshold, new.mss);
            // No rate shown for a port that no longer counts one.
            reset_rate();
        }
        (false, true) => {
            reset_rate();
            first(new.threshold, old.mss);
            grace::wait();
            second();
            grace::wait();
            first(new.threshold, new.mss);
        }
        (true, true) => {
            let both = old.threshold != new.threshold && old.flags != new.flags;
            if new.flags & monitor != 0 {
                second();
                if both {
                    grace::wait();
                }
                first(new.threshold, new.mss);
            } else {
                first(new.threshold, new.mss);
                if both {
                    grace::wait();
                }
                second();
            }
        }
        (false, false) => {
            first(new.threshold, new.mss);
            second();
        }
    }
}

/// The SYN-flood guard of a filter (its guard stage's last step), from
/// [`Filter::syn_guard`]; see there.
#[derive(Debug, Clone, Copy)]
pub struct SynGuard<'f> {
    filter: &'f Filter,
}

impl<'f> SynGuard<'f> {
    pub(crate) fn new(filter: &'f Filter) -> Self {
        SynGuard { filter }
    }

    fn guard(&self) -> Result<&'f Guard, RuleError> {
        self.filter.guard_stage()
    }

    /// Protects `port` with `policy` (or changes its policy; its counters
    /// and rate are then kept). Live from the next packet.
    ///
    /// Needs the guard stage, which needs Linux 6.0 (the SYN cookie helpers).
    ///
    /// # Errors
    ///
    /// [`RuleError::InvalidSynPolicy`] (port 0, threshold 0, an MSS out of
    /// 536..=9000, a window scale over 14, a cookie option (an MSS, a window
    /// scale, dropping untracked ACKs) in drop mode,
    /// [`SynPolicy::drop_untracked_acks`] on a kernel without conntrack's
    /// XDP lookup, or with an unpinned guard program loaded before
    /// `nf_conntrack`, or with a handle opened before the filter was
    /// upgraded: a pinned one is reloaded in place first);
    /// [`RuleError::Full`] when [`MAX_SYN_PORTS`] ports are
    /// protected already; [`RuleError::NoGuard`]; [`RuleError::Bpf`],
    /// [`RuleError::Pin`]. Nothing changes on error, but for that reload,
    /// which stays when a later step fails.
    pub fn protect(&self, port: u16, policy: SynPolicy) -> Result<(), RuleError> {
        policy.check(port)?;
        if policy.drop_untracked_acks && !conntrack_kfuncs() {
            return Err(RuleError::InvalidSynPolicy {
                port,
                reason:
                    "this kernel has no conntrack lookup for XDP (bpf_xdp_ct_lookup, Linux 5.18, in nf_conntrack): \
                         untracked ACKs would pass; load nf_conntrack (modprobe nf_conntrack) and protect the port \
                         again (a pinned filter's guard is then reloaded in place), or protect it without dropping \
                         untracked ACKs"
                        .to_owned(),
            });
        }
        let guard = self.guard()?;
        if policy.drop_untracked_acks && !guard_has_conntrack(guard)? {
            // Loaded before nf_conntrack: a pinned guard is reloaded in
            // place (this build's program over its maps, swapped in the
            // filter's stage slot, as an upgrade does), then finds it.
            let refuse = |fix: &str| RuleError::InvalidSynPolicy {
                port,
                reason: format!(
                    "the guard stage was loaded before nf_conntrack, so its program has no conntrack lookup and \
                     untracked ACKs would pass: {fix}"
                ),
            };
            let Some(dir) = guard.core.program.pin_path().and_then(Path::parent) else {
                return Err(refuse("attach the filter again (it is not pinned), then protect the port"));
            };
            // Only this handle's own build, over the filter it opened: a
            // handle opened before an upgrade (perhaps of an older build)
            // must not put its guard in place of the newer one's.
            let filter = &self.filter.core.program;
            let opened = filter.id().map_err(|e| rule_error("reading the filter program's id", e))?;
            let running = filter.current().and_then(|fd| {
                crate::core::sys::prog_id(fd.as_fd()).map_err(|source| {
                    LoadError::Bpf { op: "reading the filter program's id".into(), error: source }.into()
                })
            });
            if running.map_err(|e| rule_error("opening the filter's program", e))? != opened {
                return Err(refuse(&format!(
                    "the filter was upgraded since this handle opened it; reopen it (or run `xdpguard upgrade --pin \
                     {}`), then protect the port",
                    dir.display()
                )));
            }
            Guard::upgrade(dir, &self.filter.core.maps)
                .map_err(|e| rule_error("reloading the guard stage, loaded before nf_conntrack", e))?;
            if !guard_has_conntrack(guard)? {
                return Err(RuleError::InvalidSynPolicy {
                    port,
                    reason: "the guard stage, reloaded, still has no conntrack lookup (bpf_xdp_ct_lookup): \
                             untracked ACKs would pass; protect the port without dropping them"
                        .to_owned(),
                });
            }
        }
        guard.edit(&self.filter.core.maps, |st, maps| {
            if let Some(&(slot, old)) = st.syn.ports.get(&port) {
                if old != policy {
                    change_policy(maps, slot, policy.to_slot(port));
                    st.syn.ports.insert(port, (slot, policy));
                }
                return Ok(());
            }
            let used: Vec<usize> = st.syn.ports.values().map(|&(s, _)| s).collect();
            let slot = (0..MAX_SYN_PORTS).find(|s| !used.contains(s)).ok_or(RuleError::Full {
                what: "the SYN guard's protected ports",
                capacity: MAX_SYN_PORTS,
                setter: "(fixed)",
            })?;
            maps.syn_counters.zero(slot as u32).map_err(|source| RuleError::Bpf {
                op: format!("zeroing the SYN counters of port {port}"),
                error: source,
            })?;
            // The slot first, then the index names it: a packet sees the
            // port unprotected or protected with its whole policy.
            maps.syn_slots.set(slot, policy.to_slot(port));
            std::sync::atomic::fence(Ordering::SeqCst);
            maps.syn_idx.set(usize::from(port), slot as u64 + 1);
            st.syn.ports.insert(port, (slot, policy));
            ports_word(maps).store(st.syn.ports.len() as u32, Ordering::Release);
            Ok(())
        })
    }

    /// Stops protecting `port`; returns whether it was protected.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`].
    pub fn unprotect(&self, port: u16) -> Result<bool, RuleError> {
        self.guard()?.edit(&self.filter.core.maps, |st, maps| {
            let Some((slot, _)) = st.syn.ports.remove(&port) else { return Ok(false) };
            maps.syn_idx.set(usize::from(port), 0);
            ports_word(maps).store(st.syn.ports.len() as u32, Ordering::Release);
            std::sync::atomic::fence(Ordering::SeqCst);
            // A SYN that read the index before it was cleared still reads
            // the slot: cleared under it, the policy it read could be drop
            // mode with a threshold of 0 (the SYN dropped).
            grace::wait();
            maps.syn_slots.set(slot, xdpg_syn_port::default());
            Ok(true)
        })
    }

    /// The policy of `port`, if protected.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`].
    pub fn policy(&self, port: u16) -> Result<Option<SynPolicy>, RuleError> {
        self.guard()?.core.read(|st, _| st.syn.ports.get(&port).map(|&(_, p)| p))
    }

    /// The protected ports, by port, with their rates and counters.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Pin`]; [`RuleError::Bpf`] when
    /// the counters cannot be read.
    pub fn status(&self) -> Result<Vec<SynPortStatus>, RuleError> {
        let guard = self.guard()?;
        let maps = &guard.core.maps;
        let ports = guard.core.read(|st, _| st.syn.ports.clone())?;
        let now = maps.now_ns();
        ports
            .into_iter()
            .map(|(port, (slot, policy))| {
                let c = maps.syn_counters.sum(slot as u32).map_err(|source| RuleError::Bpf {
                    op: format!("reading the SYN counters of port {port}"),
                    error: source,
                })?;
                let s = maps.syn_slots.get(slot);
                Ok(SynPortStatus { port, policy, rate: estimate(&s, now), stats: c.into() })
            })
            .collect()
    }

    /// Sources the guard knows completed a handshake (at most
    /// 65,536: the least recently seen go first).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`].
    pub fn known_sources(&self) -> Result<usize, RuleError> {
        Ok(self.guard()?.core.maps.syn_known.keys().count())
    }

    /// Forgets every known source (they must complete a handshake again).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`].
    pub fn forget_sources(&self) -> Result<usize, RuleError> {
        Ok(self.guard()?.core.maps.syn_known.clear())
    }

    /// How long a source stays known after its last handshake (default one
    /// hour).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`]; [`RuleError::InvalidSynPolicy`] for a TTL
    /// under one second or over 2^32 seconds.
    pub fn set_known_ttl(&self, ttl: Duration) -> Result<(), RuleError> {
        let secs = u32::try_from(ttl.as_secs()).ok().filter(|&s| s > 0).ok_or(RuleError::InvalidSynPolicy {
            port: 0,
            reason: format!("a known-source TTL of {ttl:?}: give 1 s to about 136 years"),
        })?;
        let maps = &self.guard()?.core.maps;
        maps.syn_cfg.atomic_u32(0, offset_of!(xdpg_syn_config, known_ttl_s)).store(secs, Ordering::Release);
        Ok(())
    }
}

/// The data plane's rate estimate of a slot at `now` (guard_syn.h's
/// syn_rate, without counting).
fn estimate(s: &xdpg_syn_port, now: u64) -> u64 {
    let win_ns = u64::from(XDPG_SYN_WINDOW_NS);
    let w = now / win_ns;
    let left = win_ns - now % win_ns;
    if s.window == w {
        s.cur + s.prev * left / win_ns
    } else if s.window + 1 == w {
        s.cur * left / win_ns
    } else {
        0
    }
}

/// The nftables ruleset (for `nft -f -`) and the sysctl the host needs for
/// the SYN guard's cookie mode on `ports`, each with the default policy
/// ([`SynPolicy::cookies`]: the MSS alone) advertising `mss`:
/// [`nft_rules_for`] with those policies.
pub fn nft_rules(ports: &[u16], mss: u16) -> String {
    let policy = SynPolicy::cookies().with_mss(mss);
    nft_rules_for(&ports.iter().map(|&p| (p, policy)).collect::<Vec<_>>())
}

/// [`nft_rules`] for ports whose SYN-ACKs offer window scaling by `wscale`
/// (0 to 14; larger is taken as 14), SACK and timestamps
/// ([`SynPolicy::wscale`]: the server's own, not necessarily this host's).
pub fn nft_rules_with_wscale(ports: &[u16], mss: u16, wscale: u8) -> String {
    let policy = SynPolicy::cookies().with_mss(mss).with_wscale(Some(wscale.min(XDPG_SYN_MAX_WSCALE as u8)));
    nft_rules_for(&ports.iter().map(|&p| (p, policy)).collect::<Vec<_>>())
}

/// The nftables ruleset (for `nft -f -`) and the sysctl the host needs for
/// the SYN guard's cookie mode on `ports`, each with its policy (as
/// [`SynGuard::status`] reads them back): nftables' `synproxy` completes
/// the connections whose ACK the guard passed (conntrack, the kernel's
/// syncookie secret, the same the guard's cookies come from).
///
/// - SYNs never enter conntrack (`notrack` in the raw prerouting hook):
///   the guard answers them, and one it passed (monitor mode) is answered
///   by synproxy itself;
/// - `net.netfilter.nf_conntrack_tcp_loose=0` (per network namespace, in
///   the comment at the top: apply it with sysctl): an ACK that opens no
///   known connection is `invalid` rather than picked up mid-stream;
/// - an `invalid` or `untracked` packet to the port goes to `synproxy`,
///   which checks its cookie and opens the connection to the server, or
///   drops it.
///
/// One `synproxy` rule per set of ports with the same options, so
/// synproxy's own SYN-ACKs offer what the guard's do: `mss` the policy's
/// (0: 1460); with [`SynPolicy::wscale`] `Some(w)`, `wscale w timestamp
/// sack-perm` (synproxy decodes the client's options from the timestamp
/// its ACK echoes); with `None` the MSS alone. Ports in drop mode are
/// taken as they are (they need no synproxy: leave them out).
pub fn nft_rules_for(ports: &[(u16, SynPolicy)]) -> String {
    let set = |ports: &[u16]| {
        let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        if ports.len() == 1 {
            list
        } else {
            format!("{{ {list} }}")
        }
    };
    let mut all: Vec<u16> = ports.iter().map(|&(p, _)| p).collect();
    all.sort_unstable();
    all.dedup();
    // BTreeMap: the same text for the same ports, whatever their order.
    let mut groups: BTreeMap<(u16, Option<u8>), Vec<u16>> = BTreeMap::new();
    for &(port, policy) in ports {
        let mss = if policy.mss == 0 { XDPG_SYN_DEFAULT_MSS4 as u16 } else { policy.mss };
        let wscale = policy.wscale.map(|w| w.min(XDPG_SYN_MAX_WSCALE as u8));
        let group = groups.entry((mss, wscale)).or_default();
        if !group.contains(&port) {
            group.push(port);
        }
    }
    let mut synproxy = String::new();
    for ((mss, wscale), mut group) in groups {
        group.sort_unstable();
        let options = wscale.map_or(String::new(), |w| format!(" wscale {w} timestamp sack-perm"));
        synproxy += &format!("\t\ttcp dport {} ct state invalid,untracked synproxy mss {mss}{options}\n", set(&group));
    }
    let all = set(&all);
    format!(
        "# xdpguard SYN guard, cookie mode: what the host needs (apply with `nft -f -`).\n\
         # Also, in the server's network namespace: sysctl -w net.netfilter.nf_conntrack_tcp_loose=0\n\
         table inet xdpguard_syn\n\
         delete table inet xdpguard_syn\n\
         table inet xdpguard_syn {{\n\
         \tchain raw {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\ttcp dport {all} tcp flags syn notrack\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         {synproxy}\
         \t\ttcp dport {all} ct state invalid drop\n\
         \t}}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_slots() {
        for p in [
            SynPolicy::drop_above(200),
            SynPolicy::drop_above(1).with_monitor(true),
            SynPolicy::cookies(),
            SynPolicy::cookies().with_mss(1400).with_monitor(true),
            SynPolicy::cookies().with_wscale(Some(0)),
            SynPolicy::cookies().with_wscale(Some(14)),
            SynPolicy::cookies().with_wscale(None),
            SynPolicy::cookies().with_drop_untracked_acks(true).with_monitor(true),
        ] {
            let slot = p.to_slot(443);
            assert_eq!(slot.port, 443);
            assert_eq!(SynPolicy::from_slot(&slot), Some(p));
        }
        assert_eq!(SynPolicy::from_slot(&xdpg_syn_port::default()), None, "a free slot");
        // A cookie slot an older filter wrote: no options flag, whatever
        // its (then padding) byte holds.
        let old = xdpg_syn_port { mode: XDPG_SYN_MODE_COOKIE as u8, wscale: 0, ..Default::default() };
        assert_eq!(SynPolicy::from_slot(&old), Some(SynPolicy::cookies().with_wscale(None)));
    }

    #[test]
    fn policies_display() {
        assert_eq!(SynPolicy::drop_above(200).to_string(), "drop above 200/s");
        let p = SynPolicy::cookies().with_mss(1400).with_monitor(true);
        assert_eq!(p.with_wscale(Some(7)).to_string(), "cookie mss 1400 wscale 7 monitor");
        assert_eq!(p.with_wscale(None).to_string(), "cookie mss 1400 mss-only monitor");
        assert_eq!(
            p.with_wscale(Some(7)).with_drop_untracked_acks(true).to_string(),
            "cookie mss 1400 wscale 7 drop-untracked-acks monitor"
        );
        assert_eq!(SynPolicy::cookies().to_string(), "cookie mss-only", "the default: the MSS alone");
        assert_eq!("cookie".parse::<SynMode>().unwrap(), SynMode::Cookie);
        assert!("synproxy".parse::<SynMode>().is_err());
    }

    #[test]
    fn checks_name_what_is_wrong() {
        assert!(SynPolicy::cookies().check(443).is_ok());
        for (port, p) in [
            (0, SynPolicy::cookies()),
            (80, SynPolicy::drop_above(0)),
            (80, SynPolicy::cookies().with_mss(535)),
            (80, SynPolicy::cookies().with_mss(9001)),
            (80, SynPolicy::cookies().with_wscale(Some(15))),
            (80, SynPolicy::drop_above(10).with_wscale(Some(7))),
            (80, SynPolicy::drop_above(10).with_drop_untracked_acks(true)),
            (80, SynPolicy::drop_above(10).with_mss(1400)),
        ] {
            assert!(matches!(p.check(port), Err(RuleError::InvalidSynPolicy { .. })), "{port} {p}");
        }
    }

    /// The same estimate as guard_syn.h's syn_rate: this window's count
    /// plus the last one's, weighted by how much of it the last second
    /// still covers; nothing from older windows.
    #[test]
    fn rate_estimate_matches_the_data_plane() {
        let w = u64::from(XDPG_SYN_WINDOW_NS);
        let slot = xdpg_syn_port { window: 10, cur: 40, prev: 100, ..Default::default() };
        assert_eq!(estimate(&slot, 10 * w), 140, "at the window's start");
        assert_eq!(estimate(&slot, 10 * w + w / 4), 40 + 75);
        assert_eq!(estimate(&slot, 11 * w + w / 2), 20, "the next window: half of this one");
        assert_eq!(estimate(&slot, 12 * w), 0, "two windows on: nothing");
    }

    /// Linux's tcp_select_initial_window: log2 of the space, less 15,
    /// within 0 to 14.
    #[test]
    fn window_scales_follow_linux() {
        for (space, want) in [
            (6 << 20, 7),   // tcp_rmem's maximum on older kernels
            (32 << 20, 10), // on this project's Linux 6.18
            (4 << 20, 7),   // rmem_max's default
            (65_535, 0),
            (1 << 16, 1),
            (1 << 40, 14),
        ] {
            assert_eq!(wscale_for(space), want, "{space} bytes");
        }
        assert!(host_wscale() <= 14);
    }

    #[test]
    fn nft_rules_for_one_port() {
        let text = nft_rules(&[443], 0);
        assert!(text.contains("tcp dport 443 tcp flags syn notrack"), "{text}");
        assert!(text.contains("synproxy mss 1460\n"), "the default: the MSS alone: {text}");
        assert!(!text.contains("timestamp"), "{text}");
        assert!(text.contains("delete table inet xdpguard_syn"), "idempotent: {text}");
        // A server's own window scale, as `SynPolicy::wscale` gives the guard.
        let text = nft_rules_with_wscale(&[443, 8443], 1400, 7);
        assert!(
            text.contains(
                "tcp dport { 443, 8443 } ct state invalid,untracked synproxy mss 1400 wscale 7 timestamp sack-perm\n"
            ),
            "{text}"
        );
        assert!(nft_rules_with_wscale(&[443], 1400, 99).contains("wscale 14 "), "at most 14");
    }

    /// Each port's own options, ports with the same ones in one rule.
    #[test]
    fn nft_rules_follow_each_ports_policy() {
        let options = SynPolicy::cookies().with_wscale(Some(7));
        let text = nft_rules_for(&[
            (8443, SynPolicy::cookies()),
            (443, options),
            (9443, options.with_monitor(true)),
            (7443, SynPolicy::cookies().with_mss(1400)),
        ]);
        let synproxy: Vec<&str> = text.lines().filter(|l| l.contains("synproxy")).map(str::trim).collect();
        assert_eq!(
            synproxy,
            [
                "tcp dport 7443 ct state invalid,untracked synproxy mss 1400",
                "tcp dport 8443 ct state invalid,untracked synproxy mss 1460",
                "tcp dport { 443, 9443 } ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm",
            ],
            "{text}"
        );
        assert!(text.contains("tcp dport { 443, 7443, 8443, 9443 } tcp flags syn notrack"), "{text}");
        assert!(text.contains("tcp dport { 443, 7443, 8443, 9443 } ct state invalid drop"), "{text}");
    }
}
