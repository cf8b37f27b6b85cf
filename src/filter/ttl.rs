//! Blocks that expire: [`TimedBlocks`] (from [`Filter::timed_blocks`]),
//! and the rate limiter's own counters ([`LimiterStats`]).
//!
//! A timed block drops every packet from its prefix until it expires. The
//! guard stage checks them after the lists (an allowlisted source still
//! passes) and before the rules, only while there are any. The data plane
//! compares the expiry with its clock, so an expired entry stops matching
//! at once, with no daemon running; it is deleted by the first packet that
//! finds it expired, and by user space on any edit or list. A rate-limit
//! rule with `block DURATION` adds entries itself (with the rule's id).

use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::error::RuleError;
use crate::filter::guard::limits;
use crate::filter::guard::state::StoredRule;
use crate::filter::guard::Guard;
use crate::filter::prefix::normalize;
use crate::filter::rules::RuleId;
use crate::filter::Filter;

/// A timed block: its prefix, the time left, and who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimedBlock {
    /// The blocked prefix.
    pub prefix: IpNetwork,
    /// Time left until it expires.
    pub remaining: Duration,
    /// Who made it.
    pub by: BlockedBy,
}

/// Who made a [`TimedBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockedBy {
    /// Added by hand: [`TimedBlocks::extend`], `xdpguard block --ttl`.
    Hand,
    /// The live rate-limit rule with this id (`block DURATION`).
    Rule(RuleId),
    /// A rate-limit rule since removed. Its id may be another rule's now:
    /// rule ids are reused, and a block is never shown as the work of a
    /// rule that did not make it.
    RemovedRule,
}

impl BlockedBy {
    /// The rule, when a live one made the block.
    pub fn rule(self) -> Option<RuleId> {
        match self {
            BlockedBy::Rule(id) => Some(id),
            _ => None,
        }
    }
}

impl std::fmt::Display for BlockedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockedBy::Hand => f.write_str("hand"),
            BlockedBy::Rule(id) => write!(f, "rule {id}"),
            BlockedBy::RemovedRule => f.write_str("a removed rule"),
        }
    }
}

/// What one [`TimedBlocks::extend`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TimedChange {
    /// Prefixes that were not blocked before.
    pub added: usize,
    /// Prefixes already blocked, now until the new TTL runs out (their
    /// block was shorter).
    pub renewed: usize,
    /// Prefixes already blocked for longer than the new TTL: left as they
    /// were (a block is never shortened by blocking again; remove it first
    /// to shorten it), each with the time it has left and its maker.
    pub kept_longer: Vec<TimedBlock>,
}

/// The rate limiter's own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Exact buckets made for keys the sketch found heavy.
    pub buckets_made: u64,
    /// Heavy keys that got no bucket (the per-window cap was reached): the
    /// sketch's estimate decided for them.
    pub promote_capped: u64,
    /// ... and of those, found over the limit.
    pub sketch_over: u64,
    /// Auto-blocks the timed-block table refused (full), and auto-blocks of
    /// a /0 key refused by the data plane (rules stored by a build that
    /// took `per src/0` with `block`). Expired blocks hold their slots until
    /// user space reclaims them ([`TimedBlocks::list`], any timed-block
    /// edit, `xdpguard list` or `status`, a metrics scrape): the data plane
    /// frees only the expired entries its packets find, and cannot walk the
    /// trie for the rest (no BPF iterator over an LPM trie). So this grows
    /// once `max_timed_blocks` distinct sources were blocked since the last
    /// reclaim, expired or not: list from a timer where rules block.
    pub blocks_failed: u64,
    /// Expired timed blocks the data plane deleted.
    pub expired: u64,
    /// Exact buckets in the LRU now (at most its capacity).
    pub buckets: usize,
}

/// A filter's timed blocks. Get them with [`Filter::timed_blocks`].
///
/// ```no_run
/// # let filter = xdpguard::Filter::open_pinned("/sys/fs/bpf/xdpguard")?;
/// use std::time::Duration;
/// filter.timed_blocks().insert("192.0.2.7".parse()?, Duration::from_secs(600))?;
/// for b in filter.timed_blocks().list()? {
///     println!("{} for {:?} more", b.prefix, b.remaining);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimedBlocks<'f> {
    filter: &'f Filter,
    whole_family: bool,
}

impl Filter {
    /// The blocks that expire (`xdpguard block --ttl 10m ADDR`), checked by
    /// the guard stage after the lists and before the rules. Needs the
    /// guard stage (Linux 6.0).
    pub fn timed_blocks(&self) -> TimedBlocks<'_> {
        TimedBlocks { filter: self, whole_family: false }
    }

    /// Sets how many exact buckets one CPU may make per sketch window
    /// (100 ms) before the sketch decides alone (default 1,024; the table
    /// holds [`FilterBuilder::max_limit_buckets`](crate::FilterBuilder::max_limit_buckets),
    /// 65,536 by default): how fast a flood that saturates the sketch can churn
    /// the buckets of real clients. Live, for the next packet.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`].
    pub fn set_limiter_promote_max(&self, n: u32) -> Result<(), RuleError> {
        let maps = &self.guard_stage()?.core.maps;
        let off = std::mem::offset_of!(limits::xdpg_limit_config, promote_max);
        maps.lcfg.atomic_u32(0, off).store(n.max(1), std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The rate limiter's own counters (buckets made, sketch decisions).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`]; [`RuleError::Bpf`] when a counter cannot be read.
    pub fn limiter_stats(&self) -> Result<LimiterStats, RuleError> {
        let maps = &self.guard_stage()?.core.maps;
        let s = maps
            .lstats
            .sum(0)
            .map_err(|source| RuleError::Bpf { op: "reading the rate limiter's counters".into(), error: source })?;
        Ok(LimiterStats {
            buckets_made: s.buckets_made,
            promote_capped: s.promote_capped,
            sketch_over: s.sketch_over,
            blocks_failed: s.blocks_failed,
            expired: s.expired,
            buckets: maps.llru.keys().count(),
        })
    }
}

impl TimedBlocks<'_> {
    fn guard(&self) -> Result<&Guard, RuleError> {
        self.filter.guard_stage()
    }

    /// Runs an edit under the guard's lock, reclaims expired entries (the
    /// last one gone, the data plane stops looking blocks up and the
    /// filter's gate may open again), and puts the guard in the filter's
    /// stage slot or takes it out.
    fn edit<R>(
        &self,
        f: impl FnOnce(&crate::filter::guard::maps::GuardMaps, &[StoredRule]) -> Result<R, RuleError>,
    ) -> Result<R, RuleError> {
        self.guard()?.edit(&self.filter.core.maps, |st, maps| {
            let r = f(maps, &st.rules)?;
            st.timed_blocks = limits::settle(maps, &st.rules)?;
            Ok(r)
        })
    }

    /// This handle, letting its edits block a whole address family
    /// (`0.0.0.0/0`, `::/0`) for a while: every packet of that family whose
    /// source is not allowlisted is dropped, the session the host is
    /// managed over included. Without it, such entries are refused
    /// ([`RuleError::WholeFamily`]), as the blocklist refuses them.
    pub fn permit_whole_family(self) -> Self {
        Self { whole_family: true, ..self }
    }

    /// Blocks `prefix` (an address or a prefix, IPv4 or IPv6) for `ttl`,
    /// or renews its block; a block that has longer left is kept as it is
    /// (see [`extend`](TimedBlocks::extend)). Host bits are cleared.
    ///
    /// # Errors
    ///
    /// As [`extend`](TimedBlocks::extend).
    pub fn insert(&self, prefix: IpNetwork, ttl: Duration) -> Result<(), RuleError> {
        self.extend([prefix], ttl).map(drop)
    }

    /// Blocks every prefix of `prefixes` for `ttl` (or renews its block),
    /// as one edit: all of them, or none when one is refused. Host bits are
    /// cleared. A prefix already blocked for longer than `ttl` keeps its
    /// block: blocking again never shortens one (a feed re-blocking for
    /// minutes what an operator blocked for a day would otherwise cut it
    /// short); [`remove`](TimedBlocks::remove) it first to shorten it.
    /// Returns what was added, renewed and kept.
    ///
    /// # Errors
    ///
    /// [`RuleError::BadTtl`] for a TTL under a second or over 365 days;
    /// [`RuleError::WholeFamily`] for `0.0.0.0/0` or `::/0` (or the
    /// IPv4-mapped whole range) unless [`permit_whole_family`](TimedBlocks::permit_whole_family);
    /// [`RuleError::Full`] when the new ones do not fit in the table (its
    /// capacity: [`FilterBuilder::max_timed_blocks`](crate::FilterBuilder::max_timed_blocks),
    /// 65,536 by default); [`RuleError::NoGuard`], [`RuleError::Pin`].
    /// Nothing is changed then. [`RuleError::Bpf`] when the kernel refuses
    /// a map update half-way, and `Full` when rate-limit rules' own blocks
    /// filled the table between the check and the inserts (the blocks
    /// before it stay, in both).
    pub fn extend(
        &self,
        prefixes: impl IntoIterator<Item = IpNetwork>,
        ttl: Duration,
    ) -> Result<TimedChange, RuleError> {
        crate::filter::ratelimit::check_ttl(ttl).map_err(|reason| RuleError::BadTtl { ttl, reason })?;
        let mut nets: Vec<IpNetwork> = prefixes.into_iter().map(|p| normalize(p).network).collect();
        nets.sort_unstable();
        nets.dedup();
        if let Some(entry) = nets.iter().find(|n| n.prefix() == 0).filter(|_| !self.whole_family) {
            return Err(RuleError::WholeFamily { entry: *entry });
        }
        self.edit(|maps, rules| limits::insert_all(maps, rules, &nets, ttl))
    }

    /// Removes the timed block of `prefix`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`].
    pub fn remove(&self, prefix: IpNetwork) -> Result<bool, RuleError> {
        let net = normalize(prefix).network;
        self.edit(|maps, _| {
            maps.tblk
                .remove(&limits::tblock_key(net))
                .map_err(|source| RuleError::Bpf { op: format!("removing the timed block {net}"), error: source })
        })
    }

    /// The live timed blocks, soonest to expire first (expired ones are
    /// reclaimed on the way, by the edit's settle).
    ///
    /// # Errors
    ///
    /// [`RuleError::NoGuard`], [`RuleError::Bpf`], [`RuleError::Pin`].
    pub fn list(&self) -> Result<Vec<TimedBlock>, RuleError> {
        self.edit(|maps, rules| {
            let now = maps.now_ns();
            let mut out: Vec<TimedBlock> = limits::entries(maps)
                .into_iter()
                .filter(|(_, tb)| tb.expires_ns > now)
                .map(|(prefix, tb)| limits::timed_block(prefix, &tb, now, rules))
                .collect();
            out.sort_by_key(|b| (b.remaining, b.prefix));
            Ok(out)
        })
    }
}
