//! The guard stage's maps (`src/bpf/guard_maps.h`), typed, and their sizes.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::core::grace;
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::{program_maps, Hash, Mmapped, Opaque, PerCpu};
use crate::core::mmap::cfg_fields;
use crate::filter::guard::layout::{
    xdpg_counter, xdpg_guard_config, xdpg_rule_group, xdpg_rule_rec, xdpg_set_key, xdpg_set_name,
};
use crate::filter::guard::limits::{
    xdpg_limit_bucket, xdpg_limit_config, xdpg_limit_counter, xdpg_limit_key, xdpg_limit_spec, xdpg_limit_stats,
    xdpg_tblock, xdpg_tblock_key,
};
use crate::filter::rules::compile::Compiled;

program_maps! {
    /// The guard's own maps (the filter's config, counters and next-program
    /// array are shared with it; the filter holds those). Rule tables come
    /// in two halves each: a rule set is written into the idle one and
    /// switched in with one store of `rules`.
    pub(crate) struct GuardMaps {
        config cfg: Mmapped<xdpg_guard_config> = names::XDPG_GUARD_CFG,
        idx: Mmapped<u64> = names::XDPG_G_IDX,
        grp: Mmapped<xdpg_rule_group> = names::XDPG_G_GRP,
        refs: Mmapped<u64> = names::XDPG_G_REF,
        rec: Mmapped<xdpg_rule_rec> = names::XDPG_G_REC,
        counters: PerCpu<xdpg_counter> = names::XDPG_G_CNT,
        text: Mmapped<u64> = names::XDPG_G_TEXT,
        sets: Hash<xdpg_set_key, u32> = names::XDPG_G_SETS,
        set_names: Mmapped<xdpg_set_name> = names::XDPG_G_SETNM,
        // Rate limits and timed blocks (src/filter/guard/limits.rs).
        lcfg: Mmapped<xdpg_limit_config> = names::XDPG_L_CFG,
        lspec: Mmapped<xdpg_limit_spec> = names::XDPG_L_SPEC,
        lcnt: PerCpu<xdpg_limit_counter> = names::XDPG_L_CNT,
        lsketch: Opaque = names::XDPG_L_SKETCH,
        llru: Hash<xdpg_limit_key, xdpg_limit_bucket> = names::XDPG_L_LRU,
        lstats: PerCpu<xdpg_limit_stats> = names::XDPG_L_STATS,
        tblk: Hash<xdpg_tblock_key, xdpg_tblock> = names::XDPG_L_TBLK,
        syn_cfg: Mmapped<crate::filter::guard::layout::guard_skel::types::xdpg_syn_config> = names::XDPG_SYN_CFG,
        syn_idx: Mmapped<u64> = names::XDPG_SYN_IDX,
        syn_slots: Mmapped<crate::filter::guard::layout::guard_skel::types::xdpg_syn_port> = names::XDPG_SYN_SLOTS,
        syn_counters: PerCpu<crate::filter::guard::layout::guard_skel::types::xdpg_syn_counters> = names::XDPG_SYN_CNT,
        syn_known: Hash<crate::filter::guard::layout::guard_skel::types::xdpg_syn_key, u64> = names::XDPG_SYN_KNOWN,
        syn_tmp: Opaque = names::XDPG_SYN_TMP,
    }
}

/// Default capacity of a filter's rule sets ([`FilterBuilder::max_rules`](crate::FilterBuilder::max_rules)).
pub const DEFAULT_MAX_RULES: usize = 4096;
/// The largest rule capacity accepted.
pub const MAX_RULES: usize = 1 << 20;
/// Default capacity of named sets, prefixes of all sets together
/// ([`FilterBuilder::max_set_entries`](crate::FilterBuilder::max_set_entries)).
pub const DEFAULT_MAX_SET_ENTRIES: usize = 65536;
/// Default capacity of the timed-block table: prefixes blocked for a while,
/// by user space or a rate limit's auto-block
/// ([`FilterBuilder::max_timed_blocks`](crate::FilterBuilder::max_timed_blocks)).
pub const DEFAULT_MAX_TIMED_BLOCKS: usize = XDPG_TB_MAX as usize;
/// Default capacity of the rate limiter's exact buckets, one per key the
/// sketch found heavy, least recently used evicted first
/// ([`FilterBuilder::max_limit_buckets`](crate::FilterBuilder::max_limit_buckets)).
pub const DEFAULT_MAX_LIMIT_BUCKETS: usize = XDPG_RL_BUCKETS as usize;
/// The largest rule-record capacity accepted (`FilterBuilder::max_rule_records`).
pub(crate) const MAX_RULE_RECORDS: usize = 1 << 23;
/// The largest rule-index capacity accepted (`FilterBuilder::max_rule_refs`).
pub(crate) const MAX_RULE_REFS: usize = 1 << 26;
/// The default rule-record capacity for `rules` rules: two a rule.
pub(crate) fn default_rule_records(rules: usize) -> usize {
    rules.saturating_mul(2)
}
/// The default rule-index capacity for `rules` rules: sixteen a rule.
pub(crate) fn default_rule_refs(rules: usize) -> usize {
    rules.saturating_mul(16)
}
/// Bytes of rule text per rule the text store holds (per half), on average.
const TEXT_BYTES_PER_RULE: usize = 128;

/// The rule stage's capacities, fixed when a filter is loaded: the
/// [`FilterBuilder`](crate::FilterBuilder) methods of the same names, with
/// their defaults applied and the rule index rounded up to an even count, as
/// the maps hold them. From [`Filter::rule_capacities`](crate::Filter::rule_capacities)
/// (a loaded filter's) or
/// [`FilterBuilder::rule_capacities`](crate::FilterBuilder::rule_capacities)
/// (what a builder would load), so that a tool can tell whether a pinned
/// filter has the capacities it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleCapacities {
    /// Rules in a rule set.
    pub max_rules: usize,
    /// Compiled rule records.
    pub max_rule_records: usize,
    /// Entries of the rule index's groups.
    pub max_rule_refs: usize,
    /// Prefixes in all named sets together.
    pub max_set_entries: usize,
    /// Timed blocks.
    pub max_timed_blocks: usize,
    /// The rate limiter's exact buckets.
    pub max_limit_buckets: usize,
}

impl RuleCapacities {
    /// Each capacity under the name of its builder method, in the builder's
    /// order (for messages and comparisons).
    pub fn named(&self) -> [(&'static str, usize); 6] {
        [
            ("max_rules", self.max_rules),
            ("max_rule_records", self.max_rule_records),
            ("max_rule_refs", self.max_rule_refs),
            ("max_set_entries", self.max_set_entries),
            ("max_timed_blocks", self.max_timed_blocks),
            ("max_limit_buckets", self.max_limit_buckets),
        ]
    }
}

/// Sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GuardCapacity {
    /// Rules in a set. Rule ids (counter slots) run to twice this: a
    /// whole-set replace gets ids the old set does not use, so packets the
    /// old set is still deciding never count in a new rule's counter.
    pub rules: usize,
    /// Compiled records in a half: one per rule, or per source-port range.
    pub records: usize,
    /// Group entries in a half (even): a rule takes one in every group it
    /// is in. Stored two a word: the map has `refs` words for both halves.
    pub refs: usize,
    /// Groups in a half (group 0 included).
    pub groups: usize,
    /// Words of rule text in a half.
    pub text_words: usize,
    /// Prefixes in the set trie (every set's both physical sets).
    pub set_entries: usize,
    /// Prefixes in the timed-block trie (allocated as they are added).
    pub timed_blocks: usize,
    /// The rate limiter's exact buckets (an LRU hash).
    pub limit_buckets: usize,
}

impl GuardCapacity {
    pub(crate) fn new(limits: &RuleCapacities) -> Self {
        let RuleCapacities {
            max_rules: rules,
            max_rule_records: records,
            max_rule_refs: refs,
            max_set_entries: set_entries,
            max_timed_blocks: timed_blocks,
            max_limit_buckets: limit_buckets,
        } = *limits;
        GuardCapacity {
            rules,
            records,
            // Even: each half starts on a word (two entries a word).
            // Saturating: a builder's values are checked against their
            // limits only when it loads, and may be anything before.
            refs: refs.saturating_add(refs % 2),
            groups: refs.saturating_add(1).min(XDPG_MAX_GROUPS as usize),
            text_words: rules.saturating_mul(TEXT_BYTES_PER_RULE) / 8,
            set_entries,
            timed_blocks,
            limit_buckets,
        }
    }

    /// The capacities a user set (the builder's), as loaded.
    pub(crate) fn limits(&self) -> RuleCapacities {
        RuleCapacities {
            max_rules: self.rules,
            max_rule_records: self.records,
            max_rule_refs: self.refs,
            max_set_entries: self.set_entries,
            max_timed_blocks: self.timed_blocks,
            max_limit_buckets: self.limit_buckets,
        }
    }

    pub(crate) fn map_sizes(&self) -> [(&'static str, u32); 11] {
        [
            (names::XDPG_G_GRP, (self.groups * 2) as u32),
            (names::XDPG_G_REF, self.refs as u32),
            (names::XDPG_G_REC, (self.records * 2) as u32),
            (names::XDPG_G_CNT, (self.rules * 2) as u32),
            (names::XDPG_G_TEXT, (self.text_words * 2) as u32),
            (names::XDPG_G_SETS, self.set_entries as u32),
            (names::XDPG_G_SETNM, XDPG_MAX_SETS),
            (names::XDPG_L_SPEC, (self.rules * 2) as u32),
            (names::XDPG_L_CNT, (self.rules * 2) as u32),
            (names::XDPG_L_TBLK, self.timed_blocks as u32),
            (names::XDPG_L_LRU, self.limit_buckets as u32),
        ]
    }
}

impl GuardMaps {
    cfg_fields! {
        xdpg_guard_config;
        rules: AtomicU32 => atomic_u32,
        groups_per_half: AtomicU32 => atomic_u32,
        clock_offset_ns: AtomicU64 => atomic_u64,
    }

    /// The guard's clock (`guard_now()` in `src/bpf/guard_clock.h`), in
    /// nanoseconds: CLOCK_MONOTONIC, which `bpf_ktime_get_ns` reads, plus
    /// the offset tests move it by.
    pub(crate) fn now_ns(&self) -> u64 {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|ts| Duration::from(ts).as_nanos() as u64)
            .unwrap_or(0);
        mono.wrapping_add(self.clock_offset_ns().load(Ordering::Acquire))
    }

    /// Moves the guard's clock forward by `by`, for the next packet.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // Filter::advance_clock
    pub(crate) fn advance_clock(&self, by: Duration) {
        self.clock_offset_ns().fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }

    pub(crate) fn capacity(&self) -> GuardCapacity {
        GuardCapacity {
            rules: self.counters.capacity() as usize / 2,
            records: self.rec.len() / 2,
            refs: self.refs.len(),
            groups: self.grp.len() / 2,
            text_words: self.text.len() / 2,
            set_entries: self.sets.capacity() as usize,
            timed_blocks: self.tblk.capacity() as usize,
            limit_buckets: self.llru.capacity() as usize,
        }
    }

    /// The live half (0 or 1).
    pub(crate) fn live_half(&self) -> usize {
        (self.rules().load(Ordering::Acquire) & XDPG_RULES_HALF) as usize
    }

    /// Writes a compiled rule set into half `half` (which must be idle):
    /// its index, its groups and their entries (moved to the half's bases),
    /// its records. Groups, entries and records past the set's are never
    /// read (the index names none of them) and are left as they are.
    pub(crate) fn write_half(&self, half: usize, compiled: &Compiled) {
        let cap = self.capacity();
        let half = half & 1;
        let words = XDPG_GK_WORDS as usize;
        self.idx.fill_range(half * words, words, &compiled.words);
        let (ref_base, rec_base) = ((half * cap.refs) as u32, (half * cap.records) as u32);
        for (i, rec) in compiled.records.iter().enumerate() {
            self.rec.set(half * cap.records + i, *rec);
        }
        // Two entries a word, the even one in the low half.
        for (i, pair) in compiled.refs.chunks(2).enumerate() {
            let low = u64::from(pair[0] + rec_base);
            let high = pair.get(1).map_or(0, |&r| u64::from(r + rec_base));
            self.refs.set(half * cap.refs / 2 + i, low | (high << 32));
        }
        for (i, g) in compiled.groups.iter().enumerate() {
            self.grp.set(half * cap.groups + i, xdpg_rule_group { first: g.first + ref_base, count: g.count });
        }
    }

    /// The rule text of half `half`.
    pub(crate) fn read_text(&self, half: usize) -> Vec<u8> {
        let cfg = self.cfg.get(0);
        let words = self.capacity().text_words;
        let len = (cfg.text_len[half & 1] as usize).min(words * 8);
        let base = (half & 1) * words;
        let mut bytes = Vec::with_capacity(len);
        for i in 0..len.div_ceil(8) {
            bytes.extend_from_slice(&self.text.get(base + i).to_ne_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    /// Writes `bytes` as the rule text of half `half` (which must be idle).
    pub(crate) fn write_text(&self, half: usize, bytes: &[u8]) {
        let words = self.capacity().text_words;
        assert!(bytes.len() <= words * 8, "rule text checked against the store's capacity");
        let base = (half & 1) * words;
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.text.set(base + i, u64::from_ne_bytes(w));
        }
        let off = std::mem::offset_of!(xdpg_guard_config, text_len) + 4 * (half & 1);
        self.cfg.atomic_u32(0, off).store(bytes.len() as u32, Ordering::Release);
    }

    /// Makes half `half` live with one store, and returns once no packet
    /// still reads the half it retired ([`grace::wait`]): the next commit
    /// rewrites that half, a replaced set's old entries are cleared, and
    /// the ids an edit frees are reused, none under a packet still on them.
    pub(crate) fn switch_half(&self, half: usize) {
        // Everything written into the half is visible no later than the switch.
        fence(Ordering::SeqCst);
        let word = self.rules().load(Ordering::Acquire);
        self.rules().store((word & !XDPG_RULES_HALF) | (half as u32 & XDPG_RULES_HALF), Ordering::Release);
        grace::wait();
    }
}
