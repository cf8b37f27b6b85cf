//! The filter's maps (`src/bpf/filter_maps.h`), typed, and what the filter
//! does with its config entry: which tables are live, the staged v6 views,
//! the counters.

use std::sync::atomic::{fence, AtomicU32, Ordering};

use crate::core::grace;
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::{program_maps, Mmapped, Opaque, PerCpu, ProgArray};
use crate::core::mmap::cfg_fields;
use crate::filter::layout::{
    xdpg_counter, xdpg_event_cpu, xdpg_events_config, xdpg_filter_config, xdpg_v4_bucket, xdpg_v4_line, xdpg_v4_rule,
    xdpg_v6_bucket, xdpg_v6_rule, xdpg_v6_view,
};
use crate::Counter;

program_maps! {
    /// The filter's maps. Tables come in pairs (`_a`, `_b`): a bulk edit
    /// fills the idle one and switches with one store of `tables`.
    pub(crate) struct FilterMaps {
        config cfg: Mmapped<xdpg_filter_config> = names::XDPG_FILTER_CFG,
        counters: PerCpu<xdpg_counter> = names::XDPG_FILTER_CNT,
        l1_a: Mmapped<xdpg_v4_line> = names::XDPG_V4_L1_A,
        l1_b: Mmapped<xdpg_v4_line> = names::XDPG_V4_L1_B,
        hosts_a: Mmapped<xdpg_v4_bucket> = names::XDPG_V4_HOSTS_A,
        hosts_b: Mmapped<xdpg_v4_bucket> = names::XDPG_V4_HOSTS_B,
        v4_rules: Mmapped<xdpg_v4_rule> = names::XDPG_V4_RULES,
        v6_tab_a: Mmapped<xdpg_v6_bucket> = names::XDPG_V6_TAB_A,
        v6_tab_b: Mmapped<xdpg_v6_bucket> = names::XDPG_V6_TAB_B,
        v6_views: Mmapped<xdpg_v6_view> = names::XDPG_V6_VIEWS,
        v6_bloom: Mmapped<u64> = names::XDPG_V6_BLOOM,
        v6_rules: Mmapped<xdpg_v6_rule> = names::XDPG_V6_RULES,
        next: ProgArray = names::XDPG_NEXT,
        stages: ProgArray = names::XDPG_STAGES,
        // The guard's gate (src/filter/guard/gate.rs).
        gate: Mmapped<u64> = names::XDPG_GATE,
        // The drop events (src/bpf/filter_events.h; src/filter/events/).
        events: Opaque = names::XDPG_EVENTS,
        events_cfg: Mmapped<xdpg_events_config> = names::XDPG_EV_CFG,
        events_cpu: PerCpu<xdpg_event_cpu> = names::XDPG_EV_CPU,
    }
}

/// Sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub v4_rules: usize,
    pub v6_rules: usize,
    pub v4_buckets: usize,
    pub v6_buckets: usize,
    pub v6_bloom_words: usize,
}

impl Capacity {
    /// Host buckets for `v4_rules` entries: room for 1.25 hosts per entry at
    /// a load factor of about 0.75, rounded up to a power of two.
    pub(crate) fn new(v4_rules: usize, v6_rules: usize) -> Self {
        let slots = v4_rules + v4_rules / 4 + 64;
        let buckets = (slots * 4 / 3).div_ceil(XDPG_V4_BUCKET_SLOTS as usize);
        // About 8 bits per v6 entry: a few percent of false positives, and
        // 256 KiB at the default capacity, small enough to stay in L2.
        let bloom_bits = (v6_rules * 8).next_power_of_two().max(1 << 16);
        // v6 buckets hold three entries: a load factor of at most 0.75, with
        // a dense /48's mark per ANCHORED_MAX + 1 entries (the most there can
        // be; the default and 1M capacities take no more buckets for them).
        // Rejected: a count that is not a power of two (homes scaled to it),
        // to shrink the 1M capacity's 32 MiB: with 1.1M keys, linear
        // probing's longest chain passes the walk's 64 buckets above a load
        // of about 0.72 (65 at 0.75), and the power of two gives 0.70
        // (BENCHMARKS.md, "Issue 13, fourteenth session").
        let v6_slots = v6_rules + v6_rules / (crate::filter::v6_tables::ANCHORED_MAX + 1);
        let v6_buckets = (v6_slots * 4 / 3 + 64).div_ceil(XDPG_V6_BUCKET_SLOTS as usize);
        Self {
            v4_rules,
            v6_rules,
            v4_buckets: buckets.next_power_of_two().max(64),
            v6_buckets: v6_buckets.next_power_of_two().max(64),
            v6_bloom_words: bloom_bits / 64,
        }
    }

    /// The maps' sizes, for loading.
    pub(crate) fn map_sizes(&self) -> [(&'static str, u32); 7] {
        [
            (names::XDPG_V4_HOSTS_A, self.v4_buckets as u32),
            (names::XDPG_V4_HOSTS_B, self.v4_buckets as u32),
            (names::XDPG_V4_RULES, self.v4_rules as u32),
            (names::XDPG_V6_TAB_A, self.v6_buckets as u32),
            (names::XDPG_V6_TAB_B, self.v6_buckets as u32),
            (names::XDPG_V6_RULES, self.v6_rules as u32),
            (names::XDPG_V6_BLOOM, self.v6_bloom_words as u32),
        ]
    }
}

impl FilterMaps {
    /// The level-1 lines of v4 table pair `pair`.
    pub(crate) fn l1(&self, pair: usize) -> &Mmapped<xdpg_v4_line> {
        [&self.l1_a, &self.l1_b][pair & 1]
    }

    /// The host buckets of v4 table pair `pair`.
    pub(crate) fn hosts(&self, pair: usize) -> &Mmapped<xdpg_v4_bucket> {
        [&self.hosts_a, &self.hosts_b][pair & 1]
    }

    /// v6 table `table`.
    pub(crate) fn v6_table(&self, table: u32) -> &Mmapped<xdpg_v6_bucket> {
        [&self.v6_tab_a, &self.v6_tab_b][table as usize & 1]
    }

    pub(crate) fn capacity(&self) -> Capacity {
        Capacity {
            v4_rules: self.v4_rules.len(),
            v6_rules: self.v6_rules.len(),
            v4_buckets: self.hosts_a.len(),
            v6_buckets: self.v6_tab_a.len(),
            v6_bloom_words: self.v6_bloom.len(),
        }
    }

    cfg_fields! {
        xdpg_filter_config;
        tables: AtomicU32 => atomic_u32,
        malformed_policy: AtomicU32 => atomic_u32,
        v4_rule_count: AtomicU32 => atomic_u32,
        v6_rule_count: AtomicU32 => atomic_u32,
        monitor: AtomicU32 => atomic_u32,
        events_lease: AtomicU32 => atomic_u32,
    }

    pub(crate) fn config(&self) -> xdpg_filter_config {
        self.cfg.get(0)
    }

    /// The live v4 table pair (0 or 1).
    pub(crate) fn v4_active(&self) -> usize {
        (self.tables().load(Ordering::Acquire) & XDPG_TABLES_V4_MASK) as usize
    }

    fn v6_view_index(&self) -> u32 {
        (self.tables().load(Ordering::Acquire) >> XDPG_TABLES_V6_SHIFT) & XDPG_TABLES_V6_MASK
    }

    pub(crate) fn current_v6_view(&self) -> xdpg_v6_view {
        self.v6_views.get(self.v6_view_index() as usize)
    }

    /// Writes `view` into a view slot no reader is using and returns the
    /// slot; [`switch_tables`](Self::switch_tables) makes it live.
    pub(crate) fn stage_v6_view(&self, view: xdpg_v6_view) -> u32 {
        let next = (self.v6_view_index() + 1) % XDPG_V6_VIEWS;
        self.v6_views.set(next as usize, view);
        next
    }

    /// Makes a v4 table pair and/or a staged v6 view live with one store,
    /// so packets see all of an edit or none of it. A compare-and-swap:
    /// the guard's edits open and close its gate in the same word
    /// (`XDPG_TABLES_GATE_OPEN`, `guard/gate.rs`) under another lock.
    ///
    /// Returns once no packet still reads what the switch retired
    /// ([`grace::wait`]): the v4 pair and v6 table it replaced, and the
    /// view slots, are free to rewrite, here or in the next edit (from any
    /// process). Written at once, a packet still walking the old v6 table
    /// saw it half rewritten: a source both lists of a replace block
    /// passed.
    pub(crate) fn switch_tables(&self, v4_pair: Option<usize>, v6_view: Option<u32>) {
        // Everything staged before is visible no later than the switch.
        fence(Ordering::SeqCst);
        let _ = self.tables().fetch_update(Ordering::AcqRel, Ordering::Acquire, |mut word| {
            if let Some(pair) = v4_pair {
                word = (word & !XDPG_TABLES_V4_MASK) | (pair as u32 & XDPG_TABLES_V4_MASK);
            }
            if let Some(view) = v6_view {
                word = (word & !(XDPG_TABLES_V6_MASK << XDPG_TABLES_V6_SHIFT)) | (view << XDPG_TABLES_V6_SHIFT);
            }
            Some(word)
        });
        grace::wait();
    }

    /// Per-reason counters, summed over CPUs.
    pub(crate) fn reasons(&self) -> std::io::Result<Vec<Counter>> {
        (0..XDPG_REASON_COUNT).map(|reason| self.counters.sum(reason).map(Counter::from)).collect()
    }

    /// Takes `read` (per reason, as [`reasons`](Self::reasons) read
    /// them) off the counters: what was counted since stays
    /// (`PerCpu::subtract`).
    pub(crate) fn subtract_reasons(&self, read: &[Counter]) -> std::io::Result<()> {
        (0..XDPG_REASON_COUNT).zip(read).try_for_each(|(reason, c)| {
            self.counters.subtract(reason, xdpg_counter { packets: c.packets, bytes: c.bytes })
        })
    }

    pub(crate) fn reset_reasons(&self) -> std::io::Result<()> {
        (0..XDPG_REASON_COUNT).try_for_each(|reason| self.counters.zero(reason))
    }
}

/// A random hash seed for a new filter's tables.
pub(crate) fn random_seed() -> u32 {
    let mut buf = [0u8; 4];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf)).is_err() {
        // Only the bucket spread depends on it; fall back to the clock.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(buf)
}
