//! The edit engine: applies list changes to the model and keeps the
//! data-plane tables and the rule store in step.
//!
//! Single edits are applied in place, in an order where no packet whose
//! verdict should not change ever sees a different one. Bulk edits, replaces
//! and anything too large to patch are built beside the live tables and
//! swapped in with one store, so traffic sees the old lists or the new
//! lists, never a mix.

use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;
use rustc_hash::FxHashMap;

use crate::core::layout::consts::*;
use crate::core::mmap::MappedArray;
use crate::core::table::{Live, TableError};
use crate::error::ListError;
use crate::filter::hash::{AnchorHash, V6Hashes};
use crate::filter::layout::{xdpg_v4_line, xdpg_v4_rule, xdpg_v6_rule, xdpg_v6_view, LIST_ALLOW};
use crate::filter::maps::FilterMaps;
use crate::filter::state::{v6_from_words, v6_words, ListState};
use crate::filter::v4;
use crate::filter::v4_tables::{transition, LineStore};
use crate::filter::v6_tables;

/// Cells touched by one prefix beyond which a single edit rebuilds instead
/// of patching in place (a /8 touches 65,536).
const MAX_PATCH_CELLS: u32 = 1 << 16;

/// One change to one list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op {
    pub net: IpNetwork,
    pub bit: u8,
    pub insert: bool,
}

/// Live v4 level-1 lines of one table pair: every write one store of a word.
struct LiveLines<'a>(&'a MappedArray<xdpg_v4_line>);

impl LineStore for LiveLines<'_> {
    fn read(&self, line: usize, word: usize) -> u64 {
        self.0.atomic_u64(line, word * 8).load(Ordering::Acquire)
    }
    fn write(&mut self, line: usize, word: usize, value: u64) {
        self.0.atomic_u64(line, word * 8).store(value, Ordering::Release);
    }
}

/// Applies edits to the model and the maps. Created for each edit, inside
/// [`Pinned::edit`](crate::core::pinned::Pinned::edit) (which locks, marks
/// the edit and publishes its generation).
pub(crate) struct Editor<'a> {
    pub st: &'a mut ListState,
    maps: &'a FilterMaps,
    /// How the v6 tables it writes hash the /48s' chains: always this
    /// build's ([`AnchorHash::MulShift`]), but for the test kit's tables of
    /// an older layout.
    v6_anchor: AnchorHash,
}

impl<'a> Editor<'a> {
    pub(crate) fn new(st: &'a mut ListState, maps: &'a FilterMaps) -> Self {
        Self { st, maps, v6_anchor: AnchorHash::MulShift }
    }

    /// An editor whose v6 tables hash the /48s' chains by `anchor` (the
    /// test kit's rehearsal of an older layout's tables; its rebuilds only).
    #[cfg(feature = "testing")]
    pub(crate) fn with_v6_anchor(st: &'a mut ListState, maps: &'a FilterMaps, anchor: AnchorHash) -> Self {
        Self { st, maps, v6_anchor: anchor }
    }

    /// The hashes the v6 tables are written in.
    fn v6_hashes(&self) -> V6Hashes {
        V6Hashes { seed: self.maps.config().hash_seed, anchor: self.v6_anchor }
    }

    fn v4_full(&self) -> ListError {
        ListError::Full { what: "the IPv4 entry table", capacity: self.maps.capacity().v4_rules, setter: "v4_capacity" }
    }

    fn v6_full(&self) -> ListError {
        ListError::Full { what: "the IPv6 entry table", capacity: self.maps.capacity().v6_rules, setter: "v6_capacity" }
    }

    pub(crate) fn v4_hosts_full(&self) -> ListError {
        ListError::Full {
            what: crate::error::V4_HOST_TABLE,
            capacity: self.maps.capacity().v4_buckets * XDPG_V4_BUCKET_SLOTS as usize,
            setter: "v4_capacity",
        }
    }

    /// One insert or remove, patched into the live tables.
    pub(crate) fn apply_one(&mut self, op: Op) -> Result<bool, ListError> {
        match op.net {
            IpNetwork::V4(n) => self.v4_one(op, u32::from(n.network()), n.prefix()),
            IpNetwork::V6(n) => self.v6_one(op, u128::from(n.network()), n.prefix()),
        }
    }

    /// One v4 edit (`op`, of `net/len`): the /24 cells it touches move one
    /// by one, in place; too many cells, or host buckets that need
    /// compacting, and the v4 tables are rebuilt beside the live ones.
    fn v4_one(&mut self, op: Op, net: u32, len: u8) -> Result<bool, ListError> {
        if op.insert && self.st.v4.lists(net, len) == 0 && self.st.v4.len() >= self.maps.capacity().v4_rules {
            return Err(self.v4_full());
        }
        let cells = v4::cells_of(net, len);
        let patch = cells.len() as u32 <= MAX_PATCH_CELLS;
        let old: Vec<v4::Cell> = if patch { cells.clone().map(|c| self.st.v4.cell(c)).collect() } else { Vec::new() };
        if !self.apply_to_model(op) {
            return Ok(false);
        }
        let patched = patch && {
            let active = self.maps.v4_active();
            let seed = self.maps.config().hash_seed;
            let mut lines = LiveLines(self.maps.l1(active));
            let mut buckets = Live(self.maps.hosts(active));
            let mut moved = Vec::new();
            let mut ok = true;
            for (c, o) in cells.zip(old) {
                let n = self.st.v4.cell(c);
                if n == o {
                    continue;
                }
                let done = transition(&mut lines, &mut buckets, seed, c, &o, &n).is_ok();
                moved.push((c, o, n));
                if !done {
                    ok = false;
                    break;
                }
            }
            if !ok {
                // Host entries are live as soon as they are written: move
                // every /24 back (its old entries are still there, or kept as
                // tombstones for the same hosts, so this needs no new room),
                // and the lists read as before while the rebuild is tried.
                for (c, o, n) in moved.iter().rev() {
                    let _ = transition(&mut lines, &mut buckets, seed, *c, n, o);
                }
            }
            ok
        };
        // Too large to patch, or the buckets need compacting: rebuild.
        if !patched && self.rebuild_v4().is_err() {
            self.undo(op);
            let _ = self.rebuild_v4();
            return Err(self.v4_hosts_full());
        }
        self.store_v4(net, len);
        Ok(true)
    }

    /// The Bloom bit of a v6 chain: its hash's low bits.
    fn bloom_bit(&self, hash: u32) -> usize {
        (hash & self.maps.config().v6_bloom_mask) as usize
    }

    /// Sets the Bloom bits of the chains `hashes`; done before an entry or
    /// mark is written into them, so a lookup that could find it never
    /// skips its chain.
    fn bloom_add(&self, hashes: &[u32]) {
        for &h in hashes {
            let bit = self.bloom_bit(h);
            self.maps.v6_bloom.atomic_u64(bit / 64, 0).fetch_or(1 << (bit % 64), Ordering::AcqRel);
        }
    }

    /// Rebuilds the Bloom filter from the model, clearing the bits removed
    /// (or since anchored) entries left behind. Every live entry is in the
    /// model, so no word written here ever lacks a bit a live entry needs.
    fn bloom_refresh(&mut self) {
        let mut words = vec![0u64; self.maps.v6_bloom.len()];
        for h in v6_tables::bloom_hashes(&self.st.v6, self.v6_hashes()) {
            let bit = self.bloom_bit(h);
            words[bit / 64] |= 1 << (bit % 64);
        }
        for (i, w) in words.into_iter().enumerate() {
            self.maps.v6_bloom.atomic_u64(i, 0).store(w, Ordering::Release);
        }
        self.st.v6_bloom_stale = 0;
    }

    /// Counts a removal and rebuilds the Bloom filter once stale bits add up.
    fn bloom_note_removal(&mut self) {
        self.st.v6_bloom_stale += 1;
        if self.st.v6_bloom_stale > 64 + self.st.v6.len() / 8 {
            self.bloom_refresh();
        }
    }

    /// Writes the model's verdicts for the given keys into one table,
    /// moving the entries of any /48 they turn dense or sparse
    /// ([`v6_tables::sync`]).
    fn v6_write_keys(&self, table: u32, keys: &[(u128, u8)]) -> Result<(), TableError> {
        let mut store = Live(self.maps.v6_table(table));
        v6_tables::sync(&mut store, &self.st.v6, self.v6_hashes(), keys, &mut |h| self.bloom_add(&[h]))
    }

    /// Brings v6 table `table` level with the model after a bulk edit of
    /// `keys`: key by key, or rebuilt whole when they are a large share of
    /// the entries (1M new entries: 7.0 s patched into both tables, the /48
    /// states read back from the table for each) or a chain is full.
    fn v6_level(&self, table: u32, keys: &[(u128, u8)]) -> Result<(), ListError> {
        if keys.len() > self.st.v6.len() / 4 + 64 || self.v6_write_keys(table, keys).is_err() {
            return self.refill_v6(table);
        }
        Ok(())
    }

    /// The view for `table` holding the model's prefix lengths.
    fn v6_view(&self, table: u32) -> xdpg_v6_view {
        let lens = self.st.v6.lens_desc();
        let short_from = v6_tables::short_from(&lens) as u8;
        let mut view = xdpg_v6_view {
            table,
            count: lens.len() as u32,
            short_from,
            anchor_hash: self.v6_anchor as u8,
            ..Default::default()
        };
        view.lens[..lens.len()].copy_from_slice(&lens);
        view
    }

    /// Keys whose stored verdict may change when (net, len) changes: itself,
    /// and, when its allowlist membership changed, every entry inside it.
    fn v6_affected(&self, net: u128, len: u8, bit: u8, out: &mut Vec<(u128, u8)>) {
        out.push((net, len));
        if bit == LIST_ALLOW {
            out.extend(self.st.v6.inside(net, len));
        }
    }

    /// One v6 edit. Both tables hold the same entries between edits (the
    /// idle one is the spare a bulk edit fills); a single edit patches the
    /// idle one, then the live one, key by key.
    fn v6_one(&mut self, op: Op, net: u128, len: u8) -> Result<bool, ListError> {
        if op.insert && self.st.v6.lists(net, len) == 0 && self.st.v6.len() >= self.maps.capacity().v6_rules {
            return Err(self.v6_full());
        }
        let lens_before = self.st.v6.lens_desc();
        if !self.apply_to_model(op) {
            return Ok(false);
        }
        let live = self.maps.current_v6_view().table;
        let lens_after = self.st.v6.lens_desc();
        // A length leaves the view before its last entry leaves the table...
        if lens_after.len() < lens_before.len() {
            let slot = self.maps.stage_v6_view(self.v6_view(live));
            self.maps.switch_tables(None, Some(slot));
        }
        let mut keys = Vec::new();
        self.v6_affected(net, len, op.bit, &mut keys);
        let patched = [1 - live, live].iter().all(|&t| self.v6_write_keys(t, &keys).is_ok());
        // A chain too long (tombstones pile up): rebuild both tables packed.
        if !patched && self.rebuild_v6().is_err() {
            self.undo(op);
            let _ = self.rebuild_v6();
            return Err(self.v6_full());
        }
        let live = self.maps.current_v6_view().table;
        // ...and joins it after its first entry is in.
        if lens_after.len() > lens_before.len() {
            let slot = self.maps.stage_v6_view(self.v6_view(live));
            self.maps.switch_tables(None, Some(slot));
        }
        self.store_v6(net, len);
        if self.st.v6.lists(net, len) == 0 {
            self.bloom_note_removal();
        }
        Ok(true)
    }

    /// Applies many changes as one atomic step: the new tables of both
    /// families are staged beside the live ones and switched in with one
    /// store. All of it or, on error, none of it.
    ///
    /// The entry store (what a reopen rebuilds the tables from after an
    /// edit died) is written first, before the tables are staged: a
    /// process killed while the tables are built or switched (seconds, for
    /// a million entries) leaves a complete new store, and the repair
    /// rolls the edit forward. Written after the switch, a kill in those
    /// seconds left a store half old and half new, and the repair made
    /// that mix the live list, or rolled back a list already live. The
    /// store's own writes (memory writes into a mapped array, about 150 ms
    /// for a million) are the one window left where a kill leaves a mix.
    pub(crate) fn apply_atomic(&mut self, ops: &[Op]) -> Result<usize, ListError> {
        let mut done: Vec<Op> = Vec::new();
        for &op in ops {
            if self.apply_to_model(op) {
                done.push(op);
            }
        }
        let cap = self.maps.capacity();
        let full = if self.st.v4.len() > cap.v4_rules {
            Some(self.v4_full())
        } else if self.st.v6.len() > cap.v6_rules {
            Some(self.v6_full())
        } else {
            None
        };
        if let Some(e) = full {
            for op in done.iter().rev() {
                self.undo(*op);
            }
            return Err(e);
        }
        let v4_changed = done.iter().any(|o| o.net.is_ipv4());
        let mut v6_keys = Vec::new();
        for op in &done {
            if let IpNetwork::V6(n) = op.net {
                self.v6_affected(u128::from(n.network()), n.prefix(), op.bit, &mut v6_keys);
            }
        }
        v6_keys.sort_unstable();
        v6_keys.dedup();
        let live_v6 = self.maps.current_v6_view().table;
        self.store_all(&done);
        let staged = (|| {
            let v4_pair = if v4_changed { Some(self.stage_v4().map_err(|_| self.v4_hosts_full())?) } else { None };
            let v6_view = if v6_keys.is_empty() {
                None
            } else {
                self.v6_level(1 - live_v6, &v6_keys)?;
                Some(self.maps.stage_v6_view(self.v6_view(1 - live_v6)))
            };
            Ok((v4_pair, v6_view))
        })();
        let (v4_pair, v6_view) = match staged {
            Ok(s) => s,
            Err(e) => {
                // Nothing was switched: put the model, the store and the
                // idle v6 table back.
                for op in done.iter().rev() {
                    self.undo(*op);
                }
                self.store_all(&done);
                let _ = self.v6_level(1 - live_v6, &v6_keys);
                return Err(e);
            }
        };
        #[cfg(feature = "testing")]
        crate::testing::crash::point("lists.staged");
        self.maps.switch_tables(v4_pair, v6_view);
        #[cfg(feature = "testing")]
        crate::testing::crash::point("lists.switched");
        // The old live v6 table is now the spare: bring it level.
        if v6_view.is_some() {
            let _ = self.v6_level(live_v6, &v6_keys);
            if v6_keys.iter().any(|&(n, l)| self.st.v6.lists(n, l) == 0) {
                self.bloom_refresh();
            }
        }
        Ok(done.len())
    }

    /// Writes the model's lists of every entry `ops` touch to the store.
    fn store_all(&mut self, ops: &[Op]) {
        for op in ops {
            match op.net {
                IpNetwork::V4(n) => self.store_v4(u32::from(n.network()), n.prefix()),
                IpNetwork::V6(n) => self.store_v6(u128::from(n.network()), n.prefix()),
            }
        }
    }

    fn apply_to_model(&mut self, op: Op) -> bool {
        match op.net {
            IpNetwork::V4(n) => {
                let (a, l) = (u32::from(n.network()), n.prefix());
                if op.insert {
                    self.st.v4.insert(a, l, op.bit)
                } else {
                    self.st.v4.remove(a, l, op.bit)
                }
            }
            IpNetwork::V6(n) => {
                let (a, l) = (u128::from(n.network()), n.prefix());
                if op.insert {
                    self.st.v6.insert(a, l, op.bit)
                } else {
                    self.st.v6.remove(a, l, op.bit)
                }
            }
        }
    }

    fn undo(&mut self, op: Op) {
        self.apply_to_model(Op { insert: !op.insert, ..op });
    }

    /// Builds the v4 tables from the rules into the idle pair; returns it.
    fn stage_v4(&mut self) -> Result<usize, TableError> {
        let cfg = self.maps.config();
        let tables = self.st.v4.build(self.maps.capacity().v4_buckets, cfg.hash_seed)?;
        let idle = 1 - self.maps.v4_active();
        self.maps.l1(idle).fill_from(&tables.lines);
        self.maps.hosts(idle).fill_from(&tables.buckets);
        Ok(idle)
    }

    /// Builds the v4 tables from the rules into the idle pair and swaps.
    pub(crate) fn rebuild_v4(&mut self) -> Result<(), TableError> {
        let idle = self.stage_v4()?;
        self.maps.switch_tables(Some(idle), None);
        Ok(())
    }

    /// Rewrites one v6 table, packed, with every entry of the model (its
    /// Bloom bits set while it is built, before it is written).
    fn refill_v6(&self, table: u32) -> Result<(), ListError> {
        let buckets = v6_tables::build(&self.st.v6, self.v6_hashes(), self.maps.capacity().v6_buckets, &mut |h| {
            self.bloom_add(&[h]);
        })
        .map_err(|_| self.v6_full())?;
        self.maps.v6_table(table).fill_from(&buckets);
        Ok(())
    }

    /// Rewrites both v6 tables from the model (after a crash, or to clear
    /// tombstones): the idle one, then a switch, then the other.
    pub(crate) fn rebuild_v6(&mut self) -> Result<(), ListError> {
        let live = self.maps.current_v6_view().table;
        self.refill_v6(1 - live)?;
        let slot = self.maps.stage_v6_view(self.v6_view(1 - live));
        self.maps.switch_tables(None, Some(slot));
        self.refill_v6(live)?;
        self.bloom_refresh();
        Ok(())
    }

    /// Brings the stored record of (net, len) in line with the model.
    fn store_v4(&mut self, net: u32, len: u8) {
        let bits = self.st.v4.lists(net, len);
        let rules = &self.maps.v4_rules;
        let count = self.maps.v4_rule_count();
        let record = |lists| xdpg_v4_rule { addr: net, prefixlen: len, lists, pad: 0 };
        store_record(&mut self.st.v4_slots, (net, len), bits, rules, count, record, |r| (r.addr, r.prefixlen));
    }

    fn store_v6(&mut self, net: u128, len: u8) {
        let bits = self.st.v6.lists(net, len);
        let rules = &self.maps.v6_rules;
        let count = self.maps.v6_rule_count();
        let record = |lists| xdpg_v6_rule { addr: v6_words(net), prefixlen: len, lists, pad: [0; 6] };
        store_record(&mut self.st.v6_slots, (net, len), bits, rules, count, record, |r| {
            (v6_from_words(r.addr), r.prefixlen)
        });
    }
}

/// Appends, updates or swap-removes one record of a rule store.
fn store_record<K: std::hash::Hash + Eq + Copy, R: bytemuck::Pod>(
    slots: &mut FxHashMap<K, u32>,
    key: K,
    bits: u8,
    rules: &MappedArray<R>,
    count: &std::sync::atomic::AtomicU32,
    record: impl Fn(u8) -> R,
    key_of: impl Fn(&R) -> K,
) {
    match (slots.get(&key).copied(), bits) {
        (None, 0) => {}
        (Some(i), 0) => {
            let last = count.load(Ordering::Acquire) - 1;
            if i != last {
                let moved = rules.get(last as usize);
                rules.set(i as usize, moved);
                slots.insert(key_of(&moved), i);
            }
            count.store(last, Ordering::Release);
            slots.remove(&key);
        }
        (Some(i), b) => rules.set(i as usize, record(b)),
        (None, b) => {
            let i = count.load(Ordering::Acquire);
            rules.set(i as usize, record(b));
            count.store(i + 1, Ordering::Release);
            slots.insert(key, i);
        }
    }
}
