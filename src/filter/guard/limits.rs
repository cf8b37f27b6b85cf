//! The guard's rate limits and timed blocks, user space's side: their
//! layouts (`src/bpf/guard_limit_structs.h`, checked here), the compiled
//! limit of each rate-limit rule (written by rule id before the rule set
//! naming it goes live), and the timed-block table's edits.

use std::collections::BTreeSet;
use std::mem::{offset_of, size_of};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnetwork::IpNetwork;
use libbpf_rs::MapFlags;

use crate::core::layout::consts::*;
use crate::core::layout::pod;
use crate::core::maps::summable;
use crate::error::RuleError;
use crate::filter::guard::maps::GuardMaps;
use crate::filter::guard::state::StoredRule;
use crate::filter::ratelimit::{RateLimit, MIN_BYTE_BURST};
use crate::filter::rules::compile::addr_words;
use crate::filter::rules::{RuleAction, RuleId};
use crate::filter::ttl::{BlockedBy, TimedBlock, TimedChange};

pub(crate) use crate::filter::guard::layout::guard_skel::types::{
    xdpg_limit_bucket, xdpg_limit_config, xdpg_limit_counter, xdpg_limit_key, xdpg_limit_spec, xdpg_limit_stats,
    xdpg_tblock, xdpg_tblock_key,
};

pod!(
    xdpg_limit_bucket,
    xdpg_limit_config,
    xdpg_limit_counter,
    xdpg_limit_key,
    xdpg_limit_spec,
    xdpg_limit_stats,
    xdpg_tblock,
    xdpg_tblock_key
);
summable!(
    xdpg_limit_counter { packets, bytes, blocks, reserved },
    xdpg_limit_stats {
        window,
        window_made,
        buckets_made,
        promote_capped,
        sketch_over,
        blocks_failed,
        expired,
        reserved
    },
);

// The same numbers as the _Static_asserts in src/bpf/guard_limit_structs.h.
const _: () = {
    assert!(size_of::<xdpg_limit_config>() == 24);
    assert!(size_of::<xdpg_limit_spec>() == 64);
    assert!(offset_of!(xdpg_limit_spec, admit) == 40);
    assert!(offset_of!(xdpg_limit_spec, v4_len) == 48);
    assert!(size_of::<xdpg_limit_key>() == 24);
    assert!(offset_of!(xdpg_limit_spec, block_after) == 56);
    assert!(size_of::<xdpg_limit_bucket>() == 24);
    assert!(size_of::<xdpg_limit_counter>() == 32);
    assert!(size_of::<xdpg_limit_stats>() == 64);
    assert!(size_of::<xdpg_tblock_key>() == 24);
    assert!(size_of::<xdpg_tblock>() == 16);
    assert!(XDPG_RL_BLOCKS.is_power_of_two());
    assert!(XDPG_RL_BLOCKS * XDPG_RL_BLOCK_SLOTS == XDPG_RL_WIDTH * XDPG_RL_ROWS);
};

fn bpf(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuleError {
    let op = op.into();
    move |source| RuleError::Bpf { op, error: source }
}

/// One second in the buckets' time unit (1/16 ns).
const SECOND: u64 = 1_000_000_000 << XDPG_RL_TIME_SHIFT;

/// Sets up a freshly loaded guard's limit config.
pub(crate) fn init(maps: &GuardMaps) {
    let mut cfg = maps.lcfg.get(0);
    cfg.version = XDPG_LIMIT_LAYOUT_VERSION;
    cfg.window_ns = u64::from(XDPG_RL_WINDOW_NS);
    cfg.promote_max = XDPG_RL_PROMOTE_MAX;
    cfg.seed = crate::filter::maps::random_seed();
    maps.lcfg.set(0, cfg);
}

/// The compiled form of a limit, for a sketch window of `window_ns`.
pub(crate) fn compile_spec(l: &RateLimit, window_ns: u64) -> xdpg_limit_spec {
    let mut s = xdpg_limit_spec { v4_len: l.per.v4_len, v6_len: l.per.v6_len, ..Default::default() };
    let window_ns = window_ns.max(1);
    let in_window = |rate: u64| (u128::from(rate) * u128::from(window_ns) / 1_000_000_000) as u64;
    let mut admit = u64::MAX;
    let mut sketch_max = u64::MAX;
    if let (Some(pps), Some(burst)) = (l.packets_per_sec, l.effective_burst_packets()) {
        s.pkt_cost = (SECOND / pps).max(1);
        s.pkt_burst = burst.saturating_mul(s.pkt_cost);
        admit = admit.min(burst.min(in_window(pps)) / 2);
        sketch_max = sketch_max.min(in_window(pps).saturating_add(burst));
    }
    if let (Some(bps), Some(burst)) = (l.bytes_per_sec, l.effective_burst_bytes()) {
        s.byte_cost = (SECOND / bps).max(1);
        s.byte_burst = burst.saturating_mul(s.byte_cost);
        // The sketch counts packets: at most one jumbo frame each.
        admit = admit.min(burst.min(in_window(bps)) / 2 / MIN_BYTE_BURST);
        sketch_max = sketch_max.min(in_window(bps).saturating_add(burst) / 64);
    }
    s.admit = admit.min(u64::from(XDPG_RL_COUNT_MASK)) as u32;
    s.sketch_max = sketch_max.min(u64::from(XDPG_RL_COUNT_MASK)) as u32;
    s.block_ns = l.block.map_or(0, |d| d.as_nanos() as u64);
    s.block_after = l.block_after.unwrap_or(0);
    s
}

/// Before a rule set goes live: writes the limit of every rate-limit rule
/// (by id) and zeroes the limit counters of new ids; keeps the data
/// plane's timed-block switch on while any entry may exist or a rule may
/// make one. Returns the live timed blocks (expired ones removed).
pub(crate) fn prepare(maps: &GuardMaps, rules: &[StoredRule], old: &[StoredRule]) -> Result<usize, RuleError> {
    let window = maps.lcfg.get(0).window_ns.max(1);
    for r in rules {
        if r.rule.action != RuleAction::RateLimit {
            continue;
        }
        let Some(limit) = &r.rule.limit else { continue };
        maps.lspec.set(r.id as usize, compile_spec(limit, window));
        if !old.iter().any(|o| o.id == r.id) {
            maps.lcnt.zero(r.id).map_err(bpf(format!("zeroing the limit counter of rule {}", r.id)))?;
        }
    }
    retire_dead_ids(maps, rules, old)?;
    settle(maps, rules)
}

/// Before a rate-limit rule goes live under an id no live rate-limit rule
/// has: forgets what dead rules (not in `old`) left under their ids.
///
/// The limiter's exact buckets of every dead rule are removed. A bucket,
/// and the over-limit count `block ... after N` reads in it, belongs to
/// the rule that made it: a new rule given an id an earlier one had (ids
/// are reused) found that rule's buckets and limited, even auto-blocked,
/// sources within its own limit. The buckets of a rule removed by this
/// edit stay until evicted or the next such edit (its packets in flight
/// could make them again anyway). What the per-CPU sketch counted for the
/// old rule lasts to the end of its window and can charge a key's new
/// bucket at most `admit` (half its burst). One walk of the LRU, bounded:
/// under a flood a walk whose cursor is evicted starts over, and the
/// buckets of dead rules, the least recently used, are the first a flood
/// evicts anyway.
///
/// The timed blocks dead rules made keep blocking until they expire, but
/// are relabelled as a removed rule's (`XDPG_TB_BY_REMOVED`): listed under
/// their old id, they would read as the new rule's work.
///
/// Race-free: no live rule can make a bucket or a block under an id that
/// is not live.
fn retire_dead_ids(maps: &GuardMaps, rules: &[StoredRule], old: &[StoredRule]) -> Result<(), RuleError> {
    let limiting = |set: &[StoredRule]| -> BTreeSet<u32> {
        set.iter().filter(|r| r.rule.action == RuleAction::RateLimit).map(|r| r.id).collect()
    };
    let live = limiting(old);
    if limiting(rules).is_subset(&live) {
        return Ok(());
    }
    let bound = 2 * maps.llru.capacity() as usize;
    let stale: Vec<xdpg_limit_key> = maps.llru.keys().take(bound).filter(|k| !live.contains(&k.rule)).collect();
    for k in &stale {
        maps.llru.remove(k).map_err(bpf(format!("removing a limiter bucket of rule {}", k.rule)))?;
    }
    for (net, mut tb) in entries(maps) {
        if matches!(tb.rule, XDPG_TB_BY_USER | XDPG_TB_BY_REMOVED) || live.contains(&tb.rule) {
            continue;
        }
        tb.rule = XDPG_TB_BY_REMOVED;
        match maps.tblk.insert(&tblock_key(net), &tb, MapFlags::EXIST) {
            // Expired, and deleted by a packet meanwhile.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
            r => r.map_err(bpf(format!("relabelling the timed block {net}")))?,
        }
    }
    Ok(())
}

/// Removes expired timed blocks and sets the data plane's timed-block
/// switch (and so whether the filter's gate may open, `gate.rs`): on while
/// a live entry exists or a rule of `rules` (the live set) may make one.
/// Off, no packet looks the table up, and only user space turns it on
/// again: the data plane adds entries only for a blocking rule. Returns the
/// live timed blocks.
pub(crate) fn settle(maps: &GuardMaps, rules: &[StoredRule]) -> Result<usize, RuleError> {
    let live = reclaim(maps)?;
    let blocking = rules.iter().any(|r| r.rule.limit.is_some_and(|l| l.block.is_some()));
    set_timed_active(maps, live > 0 || blocking);
    Ok(live)
}

fn set_timed_active(maps: &GuardMaps, on: bool) {
    let off = offset_of!(xdpg_limit_config, timed_active);
    maps.lcfg.atomic_u32(0, off).store(u32::from(on), Ordering::Release);
}

/// The trie key of a prefix.
pub(crate) fn tblock_key(net: IpNetwork) -> xdpg_tblock_key {
    xdpg_tblock_key {
        prefixlen: XDPG_TB_TAG_BITS + u32::from(net.prefix()),
        tag: u32::from(net.is_ipv6()).to_be(),
        addr: addr_words(net.network()),
    }
}

/// The prefix of a trie key.
pub(crate) fn tblock_net(key: &xdpg_tblock_key) -> Option<IpNetwork> {
    let len = u8::try_from(key.prefixlen.checked_sub(XDPG_TB_TAG_BITS)?).ok()?;
    let addr = if u32::from_be(key.tag) == 1 {
        IpAddr::from(bytemuck::cast::<[u32; 4], [u8; 16]>(key.addr))
    } else {
        IpAddr::from(key.addr[0].to_ne_bytes())
    };
    IpNetwork::new(addr, len).ok()
}

/// Every timed block (expired ones included).
pub(crate) fn entries(maps: &GuardMaps) -> Vec<(IpNetwork, xdpg_tblock)> {
    maps.tblk.keys().filter_map(|k| Some((tblock_net(&k)?, maps.tblk.get(&k).ok()??))).collect()
}

/// A live timed block as the API shows it, at guard-clock time `now_ns`,
/// with `rules` live: a block whose rule is not among them (removed by an
/// edit since, its id not yet relabelled) is a removed rule's.
pub(crate) fn timed_block(prefix: IpNetwork, tb: &xdpg_tblock, now_ns: u64, rules: &[StoredRule]) -> TimedBlock {
    let by = match tb.rule {
        XDPG_TB_BY_USER => BlockedBy::Hand,
        id if rules.iter().any(|r| r.id == id && r.rule.action == RuleAction::RateLimit) => BlockedBy::Rule(RuleId(id)),
        _ => BlockedBy::RemovedRule,
    };
    TimedBlock { prefix, remaining: Duration::from_nanos(tb.expires_ns.saturating_sub(now_ns)), by }
}

/// Removes expired timed blocks; returns how many live ones are left.
pub(crate) fn reclaim(maps: &GuardMaps) -> Result<usize, RuleError> {
    let now = maps.now_ns();
    let mut live = 0;
    for (net, tb) in entries(maps) {
        if tb.expires_ns <= now {
            maps.tblk.remove(&tblock_key(net)).map_err(bpf(format!("removing the expired timed block {net}")))?;
        } else {
            live += 1;
        }
    }
    Ok(live)
}

/// Adds or renews a timed block of every prefix of `nets` (normalised,
/// without repeats) for `ttl`, as one edit: the table's room for the new
/// ones is checked once, before any is written (nothing changed when they
/// do not fit). A block with more time left than `ttl` is kept as it is.
pub(crate) fn insert_all(
    maps: &GuardMaps,
    rules: &[StoredRule],
    nets: &[IpNetwork],
    ttl: Duration,
) -> Result<TimedChange, RuleError> {
    let capacity = maps.tblk.capacity() as usize;
    let full = || RuleError::Full { what: "the timed-block table", capacity, setter: "max_timed_blocks" };
    let live = reclaim(maps)?;
    let now = maps.now_ns();
    let expires_ns = now + ttl.as_nanos() as u64;
    let mut change = TimedChange::default();
    let mut write = Vec::with_capacity(nets.len());
    for net in nets {
        // An LPM trie's lookup finds the longest covering entry: this
        // prefix's own only when its length is the prefix's.
        let own = maps.tblk.get(&tblock_key(*net)).map_err(bpf("reading the timed blocks"))?;
        match own.filter(|tb| tb.len == u32::from(net.prefix())) {
            None => change.added += 1,
            Some(tb) if tb.expires_ns > expires_ns => {
                change.kept_longer.push(timed_block(*net, &tb, now, rules));
                continue;
            }
            Some(_) => change.renewed += 1,
        }
        write.push(*net);
    }
    if live + change.added > capacity {
        return Err(full());
    }
    // The switch first: a packet that finds an entry must look it up.
    set_timed_active(maps, true);
    for net in write {
        let tb = xdpg_tblock { expires_ns, rule: XDPG_TB_BY_USER, len: u32::from(net.prefix()) };
        maps.tblk.insert(&tblock_key(net), &tb, MapFlags::ANY).map_err(|source| {
            // A rate-limit rule's own blocks took the room meanwhile.
            if [nix::errno::Errno::E2BIG as i32, nix::errno::Errno::ENOSPC as i32]
                .contains(&source.raw_os_error().unwrap_or(0))
            {
                full()
            } else {
                RuleError::Bpf { op: format!("adding the timed block {net}"), error: source }
            }
        })?;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_in_the_buckets_units() {
        let window = 100_000_000;
        let s = compile_spec(&RateLimit::packets(100), window);
        assert_eq!(s.pkt_cost, SECOND / 100, "10 ms a packet, in 1/16 ns");
        assert_eq!(s.pkt_burst, 100 * s.pkt_cost, "one second of the rate");
        assert_eq!((s.admit, s.sketch_max), (5, 110), "half a window's worth; a window's plus the burst");
        assert_eq!((s.byte_cost, s.v4_len, s.v6_len, s.block_ns), (0, 32, 64, 0), "IPv6 keyed by its /64 by default");
        let l: crate::Rule = "rate-limit 1mbit/s per src/24/64 block 10m udp".parse().unwrap();
        let s = compile_spec(l.limit.as_ref().unwrap(), window);
        assert_eq!(s.byte_cost, SECOND / 125_000);
        assert_eq!(s.byte_burst, 125_000 * s.byte_cost);
        assert_eq!(s.admit, 0, "12.5 kB a window: under two jumbo frames, every key is metered exactly");
        assert_eq!((s.v4_len, s.v6_len, s.block_ns), (24, 64, 600_000_000_000));
    }

    #[test]
    fn timed_block_keys_round_trip() {
        for net in ["192.0.2.7/32", "198.51.100.0/24", "2001:db8:7::/48", "2001:db8::1/128"] {
            let net: IpNetwork = net.parse().unwrap();
            assert_eq!(tblock_net(&tblock_key(net)), Some(net));
        }
    }
}
