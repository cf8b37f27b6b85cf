//! IPv4 lists: the rule model, and the two-level table the data plane reads.
//!
//! Level 1 holds a 4-bit cell per /24 (8 MiB for all of IPv4): the verdict
//! for the whole /24, or "mixed" plus a default. Level 2 holds, for mixed
//! /24s only, the hosts whose verdict differs from that default, in
//! cache-line buckets of fifteen. A lookup therefore touches one word and at
//! most one cache line in the common case, whatever the number of prefixes,
//! where an LPM trie walks a chain of cache misses.
//!
//! Exact CIDR semantics are kept by deriving the tables from the rules:
//! overlapping prefixes, allowlist entries (which win over the blocklist
//! whatever their length) and removals that never unblock what another
//! entry still covers.

use std::ops::Range;

use rustc_hash::FxHashMap;

use crate::core::layout::consts::*;
use crate::core::table::{self, Layout, Store, TableError};
use crate::filter::entries::{self, Entries};
use crate::filter::hash::v4_host_hash;
use crate::filter::layout::{xdpg_v4_bucket, ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK, PASS};

const SLOTS: usize = XDPG_V4_BUCKET_SLOTS as usize;
const MIXED: u8 = XDPG_V4_CELL_MIXED as u8;
/// Cells per /24-index space.
pub(crate) const CELLS: usize = 1 << 24;

pub(crate) fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// The /24 cells a prefix touches.
pub(crate) fn cells_of(net: u32, len: u8) -> Range<u32> {
    let first = net >> 8;
    if len >= 24 {
        first..first + 1
    } else {
        first..first + (1u32 << (24 - len))
    }
}

/// The state of one /24.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// Every host has this verdict.
    Uniform(u8),
    /// Hosts default to `default`, except those listed (host byte, verdict).
    Mixed { default: u8, exceptions: Vec<(u8, u8)> },
}

impl Cell {
    fn nibble(&self) -> u8 {
        match self {
            Cell::Uniform(v) => *v,
            Cell::Mixed { default, .. } => MIXED | default,
        }
    }

    fn verdict_of(&self, host: u8) -> u8 {
        match self {
            Cell::Uniform(v) => *v,
            Cell::Mixed { default, exceptions } => exceptions
                .iter()
                .find(|(h, _)| *h == host)
                .map_or(*default, |(_, v)| *v),
        }
    }
}

/// The v4 entries of both lists, indexed for the questions the table
/// builder asks.
#[derive(Debug, Default, Clone)]
pub(crate) struct V4Rules {
    /// (network, prefix length) → list bits.
    rules: Entries<u32>,
    /// Number of rules per (list, length) for lengths up to 24.
    short_counts: [[u32; 25]; 2],
    /// Lengths up to 24 in use, per list, so coverage checks skip the rest.
    short_lens: [Vec<u8>; 2],
    /// /24 index → prefixes longer than /24 inside it, with their list bits.
    long: FxHashMap<u32, LongEntries>,
}

/// A prefix longer than /24, with its list bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LongEntry {
    net: u32,
    len: u8,
    bits: u8,
}

/// The long prefixes of one /24: nearly always exactly one, kept inline.
#[derive(Debug, Clone)]
enum LongEntries {
    One(LongEntry),
    Many(Vec<LongEntry>),
}

impl LongEntries {
    fn as_slice(&self) -> &[LongEntry] {
        match self {
            LongEntries::One(e) => std::slice::from_ref(e),
            LongEntries::Many(v) => v,
        }
    }

    /// Updates the bits of `e`'s prefix, adding it if absent.
    fn set(&mut self, e: LongEntry) {
        let same = |x: &LongEntry| x.net == e.net && x.len == e.len;
        match self {
            LongEntries::One(x) if same(x) => *x = e,
            LongEntries::One(x) => *self = LongEntries::Many(vec![*x, e]),
            LongEntries::Many(v) => match v.iter_mut().find(|x| same(x)) {
                Some(x) => *x = e,
                None => v.push(e),
            },
        }
    }

    /// Removes a prefix; returns whether none are left.
    fn remove(&mut self, net: u32, len: u8) -> bool {
        match self {
            LongEntries::One(x) => x.net == net && x.len == len,
            LongEntries::Many(v) => {
                v.retain(|x| !(x.net == net && x.len == len));
                v.is_empty()
            }
        }
    }
}

fn list_index(bit: u8) -> usize {
    usize::from(bit == LIST_ALLOW)
}

impl V4Rules {
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    pub(crate) fn lists(&self, net: u32, len: u8) -> u8 {
        self.rules.lists(net, len)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u8, u8)> + '_ {
        self.rules.iter()
    }

    /// Adds `bit` to the entry; returns whether anything changed.
    pub(crate) fn insert(&mut self, net: u32, len: u8, bit: u8) -> bool {
        let Some(before) = self.rules.add(net, len, bit) else {
            return false;
        };
        let now = before | bit;
        if len <= 24 {
            let l = list_index(bit);
            self.short_counts[l][usize::from(len)] += 1;
            if self.short_counts[l][usize::from(len)] == 1 {
                self.short_lens[l].push(len);
                self.short_lens[l].sort_unstable();
            }
        } else {
            let e = LongEntry { net, len, bits: now };
            self.long.entry(net >> 8).and_modify(|l| l.set(e)).or_insert(LongEntries::One(e));
        }
        true
    }

    /// Removes `bit` from the entry; returns whether anything changed.
    pub(crate) fn remove(&mut self, net: u32, len: u8, bit: u8) -> bool {
        let Some(now) = self.rules.remove(net, len, bit) else {
            return false;
        };
        let now_empty = now == 0;
        if len <= 24 {
            let l = list_index(bit);
            self.short_counts[l][usize::from(len)] -= 1;
            if self.short_counts[l][usize::from(len)] == 0 {
                self.short_lens[l].retain(|&x| x != len);
            }
        } else if let Some(l) = self.long.get_mut(&(net >> 8)) {
            if !now_empty {
                l.set(LongEntry { net, len, bits: now });
            } else if l.remove(net, len) {
                self.long.remove(&(net >> 8));
            }
        }
        true
    }

    /// Whether a rule of the list `bit` with length ≤ 24 covers the /24.
    fn covers24(&self, idx24: u32, bit: u8) -> bool {
        let addr = idx24 << 8;
        self.short_lens[list_index(bit)]
            .iter()
            .any(|&len| self.lists(addr & mask(len), len) & bit != 0)
    }

    /// The verdict of a whole /24 from rules of length ≤ 24 alone.
    fn base24(&self, idx24: u32) -> u8 {
        entries::verdict(|bit| self.covers24(idx24, bit))
    }

    /// The state of one /24.
    pub(crate) fn cell(&self, idx24: u32) -> Cell {
        let base = self.base24(idx24);
        self.cell_with_base(idx24, base)
    }

    fn cell_with_base(&self, idx24: u32, base: u8) -> Cell {
        match self.long.get(&idx24) {
            // Allow wins over anything more specific.
            Some(long) if base != ALLOW => self.cell_from_long(long.as_slice(), base),
            _ => Cell::Uniform(base),
        }
    }

    /// The cell of a /24 holding `long` entries over a `base` verdict.
    fn cell_from_long(&self, long: &[LongEntry], base: u8) -> Cell {
        let mut exceptions = Vec::new();
        let nibble = self.classify_long(long, base, &mut exceptions);
        if nibble & MIXED == 0 {
            Cell::Uniform(nibble)
        } else {
            Cell::Mixed { default: nibble & 3, exceptions }
        }
    }

    /// Puts the /24's exceptions (sorted by host) in `out` and returns its
    /// cell nibble: a uniform verdict, or MIXED plus the default.
    fn classify_long(&self, long: &[LongEntry], base: u8, out: &mut Vec<(u8, u8)>) -> u8 {
        out.clear();
        // Fast path, and the common case: only /32s, fewer than half the
        // hosts differing from base. Same result as the general path.
        if long.len() < 128 && long.iter().all(|e| e.len == 32) {
            out.extend(long.iter().filter_map(|e| {
                let v = if e.bits & LIST_ALLOW != 0 { ALLOW } else { BLOCK };
                (v != base).then_some(((e.net & 0xFF) as u8, v))
            }));
            if out.is_empty() {
                return base;
            }
            out.sort_unstable();
            return MIXED | base;
        }
        classify_hosts(&host_verdicts(base, long), base, out)
    }

    /// The most specific entry of list `bit` covering `addr`.
    pub(crate) fn matching(&self, addr: u32, bit: u8) -> Option<(u32, u8)> {
        (0..=32u8)
            .rev()
            .map(|len| (addr & mask(len), len))
            .find(|&(n, l)| self.lists(n, l) & bit != 0)
    }

    /// The verdict for `addr`, straight from the rules (the reference the
    /// tables are checked against).
    pub(crate) fn verdict(&self, addr: u32) -> u8 {
        entries::verdict(|bit| self.matching(addr, bit).is_some())
    }

    /// Builds both levels from scratch.
    pub(crate) fn build(&self, bucket_count: usize, seed: u32) -> Result<V4Tables, TableError> {
        let mut words = vec![0u64; CELLS / 16];
        // Short prefixes: blocks first, then allows over them.
        for (bit, value) in [(LIST_BLOCK, BLOCK), (LIST_ALLOW, ALLOW)] {
            for (net, len, bits) in self.rules.iter() {
                if len <= 24 && bits & bit != 0 {
                    fill_cells(&mut words, cells_of(net, len), value);
                }
            }
        }
        let mut buckets = vec![xdpg_v4_bucket::default(); bucket_count];
        let mut exceptions = Vec::with_capacity(256);
        for (&idx24, long) in &self.long {
            let base = cell_nibble(&words, idx24);
            if base == ALLOW {
                continue;
            }
            let nibble = self.classify_long(long.as_slice(), base, &mut exceptions);
            for &(host, verdict) in &exceptions {
                host_set(&mut buckets, seed, (idx24 << 8) | u32::from(host), verdict)?;
            }
            set_cell_nibble(&mut words, idx24, nibble);
        }
        Ok(V4Tables { words, buckets })
    }
}

/// Every host's verdict in a /24 holding `long` entries over `base`.
fn host_verdicts(base: u8, long: &[LongEntry]) -> [u8; 256] {
    let mut hosts = [base; 256];
    for pass_bit in [LIST_BLOCK, LIST_ALLOW] {
        for e in long.iter().filter(|e| e.bits & pass_bit != 0) {
            let first = (e.net & 0xFF) as usize;
            let count = 1usize << (32 - e.len);
            for v in &mut hosts[first..first + count] {
                // Blocks never override an allow; allows override all.
                if pass_bit == LIST_ALLOW || *v != ALLOW {
                    *v = if pass_bit == LIST_ALLOW { ALLOW } else { BLOCK };
                }
            }
        }
    }
    hosts
}

/// Picks the default that needs the fewest exceptions (keeping `base` on a
/// tie), puts the exceptions in `out`, and returns the cell nibble.
fn classify_hosts(hosts: &[u8; 256], base: u8, out: &mut Vec<(u8, u8)>) -> u8 {
    let mut counts = [0u16; 3];
    for &v in hosts {
        counts[usize::from(v)] += 1;
    }
    if counts.contains(&256) {
        return hosts[0];
    }
    let mut default = base;
    for v in [PASS, BLOCK, ALLOW] {
        if counts[usize::from(v)] > counts[usize::from(default)] {
            default = v;
        }
    }
    out.extend(hosts.iter().enumerate().filter(|&(_, &v)| v != default).map(|(h, &v)| (h as u8, v)));
    MIXED | default
}

fn cell_nibble(words: &[u64], idx24: u32) -> u8 {
    ((words[(idx24 / 16) as usize] >> ((idx24 % 16) * 4)) & 0xF) as u8
}

fn set_cell_nibble(words: &mut [u64], idx24: u32, nibble: u8) {
    let (w, shift) = ((idx24 / 16) as usize, (idx24 % 16) * 4);
    words[w] = (words[w] & !(0xF << shift)) | (u64::from(nibble) << shift);
}

/// Sets every cell in `range` to `nibble`, a whole word at a time where it can.
fn fill_cells(words: &mut [u64], range: Range<u32>, nibble: u8) {
    let whole = u64::from(nibble) * 0x1111_1111_1111_1111;
    let mut i = range.start;
    while i < range.end {
        if i % 16 == 0 && range.end - i >= 16 {
            words[(i / 16) as usize] = whole;
            i += 16;
        } else {
            set_cell_nibble(words, i, nibble);
            i += 1;
        }
    }
}

/// Both levels, ready to copy into the maps.
pub(crate) struct V4Tables {
    pub words: Vec<u64>,
    pub buckets: Vec<xdpg_v4_bucket>,
}

/// The slot layout of a host bucket (`struct xdpg_v4_bucket`): fifteen
/// addresses and their 2-bit codes in `meta`, which also holds the
/// overflow bit, so every publish is a store of `meta`. The data plane
/// reads `meta` once, then the addresses.
impl Layout for xdpg_v4_bucket {
    type Key = u32;
    const SLOTS: usize = SLOTS;
    const MAX_PROBES: u32 = XDPG_V4_MAX_PROBES;
    const OVERFLOW_WORD: usize = META_WORD;
    const OVERFLOW_BIT: u32 = XDPG_V4_BUCKET_OVERFLOW;

    fn key(&self, slot: usize) -> Option<u32> {
        // A slot never used is all zero; so is 0.0.0.0's tombstone.
        (self.addrs[slot] != 0 || self.code(slot) != 0).then_some(self.addrs[slot])
    }
    fn code(&self, slot: usize) -> u32 {
        (self.meta >> (2 * slot)) & 3
    }
    fn write_key(slot: usize, key: &u32, store: &mut dyn FnMut(usize, u32)) {
        store(slot, *key);
    }
    fn code_word(&self, slot: usize, _key: &u32, code: u32) -> (usize, u32) {
        (META_WORD, (self.meta & !(3 << (2 * slot))) | (code << (2 * slot)))
    }
    /// 0.0.0.0's tombstone looks like a slot never used, which another
    /// host could then take while a reader holds 0.0.0.0's code: never
    /// retired in a live table (the edit rebuilds the tables instead).
    fn tombstone_visible(key: &u32) -> bool {
        *key != 0
    }
}

const META_WORD: usize = std::mem::offset_of!(xdpg_v4_bucket, meta) / 4;

/// Host codes in buckets: 0 means none, so PASS is stored as XDPG_HOST_PASS.
fn host_code(verdict: u8) -> u32 {
    if verdict == PASS {
        XDPG_HOST_PASS
    } else {
        u32::from(verdict)
    }
}

/// Stores `verdict` for host `addr`.
pub(crate) fn host_set<S: Store<xdpg_v4_bucket>>(store: &mut S, seed: u32, addr: u32, verdict: u8) -> Result<(), TableError> {
    table::set(store, v4_host_hash(addr, seed), &addr, host_code(verdict))
}

/// Retires host `addr`: it follows its /24's default again.
pub(crate) fn host_clear<S: Store<xdpg_v4_bucket>>(store: &mut S, seed: u32, addr: u32) -> Result<(), TableError> {
    table::clear(store, v4_host_hash(addr, seed), &addr).map(drop)
}

/// The data plane's lookup, in Rust: what `xdpg_filter` returns for `addr`.
#[cfg(test)]
pub(crate) fn lookup<S: Store<xdpg_v4_bucket>>(words: &dyn Fn(usize) -> u64, store: &S, seed: u32, addr: u32) -> u8 {
    let idx24 = addr >> 8;
    let word = words((idx24 / 16) as usize);
    let cell = ((word >> ((idx24 % 16) * 4)) & 0xF) as u8;
    if cell & MIXED == 0 {
        return cell & 3;
    }
    match table::get(store, v4_host_hash(addr, seed), &addr) {
        0 => cell & 3,
        XDPG_HOST_PASS => PASS,
        code => code as u8,
    }
}

/// Where L1 cell writes go.
pub(crate) trait CellStore {
    fn read_word(&self, index: usize) -> u64;
    fn write_word(&mut self, index: usize, word: u64);
}

fn write_cell<C: CellStore>(cells: &mut C, idx24: u32, nibble: u8) {
    let wi = (idx24 / 16) as usize;
    let shift = (idx24 % 16) * 4;
    let w = cells.read_word(wi);
    let nw = (w & !(0xF << shift)) | (u64::from(nibble) << shift);
    if nw != w {
        cells.write_word(wi, nw);
    }
}

/// Moves one /24 from `old` to `new` in live tables, in an order where every
/// host whose verdict does not change keeps it at every intermediate step.
pub(crate) fn transition<C: CellStore, S: Store<xdpg_v4_bucket>>(
    cells: &mut C,
    store: &mut S,
    seed: u32,
    idx24: u32,
    old: &Cell,
    new: &Cell,
) -> Result<(), TableError> {
    let addr = |h: u8| (idx24 << 8) | u32::from(h);
    match (old, new) {
        (_, Cell::Uniform(v)) => {
            write_cell(cells, idx24, *v);
            if let Cell::Mixed { exceptions, .. } = old {
                for &(h, _) in exceptions {
                    host_clear(store, seed, addr(h))?;
                }
            }
        }
        (Cell::Uniform(_), Cell::Mixed { exceptions, .. }) => {
            // Invisible until the cell says "mixed".
            for &(h, v) in exceptions {
                host_set(store, seed, addr(h), v)?;
            }
            write_cell(cells, idx24, new.nibble());
        }
        (Cell::Mixed { default: d0, exceptions: e0 }, Cell::Mixed { default: d1, exceptions: e1 }) => {
            if d0 != d1 {
                // Pin every host to its old verdict so the default can flip.
                for h in 0..=255u8 {
                    if !e0.iter().any(|&(x, _)| x == h) {
                        host_set(store, seed, addr(h), *d0)?;
                    }
                }
                write_cell(cells, idx24, new.nibble());
                for h in 0..=255u8 {
                    let v = new.verdict_of(h);
                    if v == *d1 {
                        host_clear(store, seed, addr(h))?;
                    } else {
                        host_set(store, seed, addr(h), v)?;
                    }
                }
            } else {
                for &(h, v) in e1 {
                    host_set(store, seed, addr(h), v)?;
                }
                for &(h, _) in e0 {
                    if !e1.iter().any(|&(x, _)| x == h) {
                        host_clear(store, seed, addr(h))?;
                    }
                }
            }
        }
    }
    Ok(())
}

impl CellStore for Vec<u64> {
    fn read_word(&self, index: usize) -> u64 {
        self[index]
    }
    fn write_word(&mut self, index: usize, word: u64) {
        self[index] = word;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hash::mix32;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn check_all(rules: &V4Rules, t: &V4Tables, seed: u32, addrs: &[u32]) {
        let words = |i: usize| t.words[i];
        for &a in addrs {
            assert_eq!(
                lookup(&words, &t.buckets, seed, a),
                rules.verdict(a),
                "addr {}",
                std::net::Ipv4Addr::from(a)
            );
        }
    }

    #[test]
    fn allow_hole_inside_block_and_overlaps() {
        let mut r = V4Rules::default();
        r.insert(ip("192.0.2.0"), 24, LIST_BLOCK);
        r.insert(ip("192.0.2.128"), 25, LIST_BLOCK);
        r.insert(ip("192.0.2.7"), 32, LIST_ALLOW);
        r.insert(ip("198.51.100.0"), 23, LIST_BLOCK);
        r.insert(ip("198.51.100.0"), 24, LIST_ALLOW);
        r.insert(ip("203.0.113.9"), 32, LIST_BLOCK);
        let t = r.build(64, 7).unwrap();
        assert_eq!(r.verdict(ip("192.0.2.7")), ALLOW);
        assert_eq!(r.verdict(ip("192.0.2.8")), BLOCK);
        assert_eq!(r.verdict(ip("198.51.100.1")), ALLOW);
        assert_eq!(r.verdict(ip("198.51.101.1")), BLOCK);
        assert_eq!(r.verdict(ip("203.0.113.9")), BLOCK);
        assert_eq!(r.verdict(ip("203.0.113.10")), PASS);
        let addrs: Vec<u32> = (0..=255).flat_map(|h| {
            [ip("192.0.2.0") + h, ip("198.51.100.0") + h, ip("198.51.101.0") + h, ip("203.0.113.0") + h]
        }).collect();
        check_all(&r, &t, 7, &addrs);
        // Removing the /25 leaves the /24 blocking the same hosts.
        r.remove(ip("192.0.2.128"), 25, LIST_BLOCK);
        assert_eq!(r.verdict(ip("192.0.2.200")), BLOCK);
    }

    #[test]
    fn majority_default_keeps_exceptions_few() {
        let mut r = V4Rules::default();
        r.insert(ip("192.0.2.0"), 25, LIST_BLOCK);
        r.insert(ip("192.0.2.128"), 26, LIST_BLOCK);
        match r.cell(ip("192.0.2.0") >> 8) {
            Cell::Mixed { default, exceptions } => {
                assert_eq!(default, BLOCK);
                assert_eq!(exceptions.len(), 64);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn buckets_overflow_into_neighbours_and_report_full() {
        const PROBES: usize = XDPG_V4_MAX_PROBES as usize;
        let seed = 1;
        let mut store = vec![xdpg_v4_bucket::default(); 64];
        // Every one of these hashes to bucket 0, so they fill the whole chain.
        let same_home: Vec<u32> =
            (0x0A00_0000u32..).filter(|&a| mix32(v4_host_hash(a, seed)) & 63 == 0).take(SLOTS * PROBES + 1).collect();
        for &a in &same_home[..SLOTS * PROBES] {
            host_set(&mut store, seed, a, BLOCK).unwrap();
        }
        assert_eq!(host_set(&mut store, seed, same_home[SLOTS * PROBES], BLOCK), Err(TableError::Full));
        let words = |_| u64::from(MIXED | PASS) * 0x1111_1111_1111_1111;
        for &a in &same_home[..SLOTS * PROBES] {
            assert_eq!(lookup(&words, &store, seed, a), BLOCK, "{a:#x} reachable");
        }
        assert_eq!(lookup(&words, &store, seed, same_home[SLOTS * PROBES]), PASS);
        // A cleared slot is a tombstone: reused by the same address only.
        host_clear(&mut store, seed, same_home[0]).unwrap();
        assert_eq!(lookup(&words, &store, seed, same_home[0]), PASS);
        assert_eq!(host_set(&mut store, seed, same_home[SLOTS * PROBES], BLOCK), Err(TableError::Full));
        assert_eq!(host_set(&mut store, seed, same_home[0], ALLOW), Ok(()));
        assert_eq!(lookup(&words, &store, seed, same_home[0]), ALLOW);
    }

    /// Random rules, random interleaved inserts and removals: the tables,
    /// edited live through `transition`, always give the reference verdict,
    /// and so does a table rebuilt from scratch.
    #[test]
    fn differential_against_reference() {
        let mut rng = StdRng::seed_from_u64(0x5EED);
        let seed = 0x1234_5678;
        let base = ip("198.51.96.0"); // a /20 of documentation-like space
        let mut r = V4Rules::default();
        let mut live = r.build(256, seed).unwrap();
        let mut present: Vec<(u32, u8, u8)> = Vec::new();
        for step in 0..3000 {
            let remove = !present.is_empty() && rng.random_bool(0.4);
            let (net, len, bit) = if remove {
                present.swap_remove(rng.random_range(0..present.len()))
            } else {
                let len = *[16u8, 20, 22, 23, 24, 24, 25, 26, 28, 30, 31, 32, 32, 32, 32]
                    .get(rng.random_range(0..15))
                    .unwrap();
                let a = base + rng.random_range(0..4096u32);
                let bit = if rng.random_bool(0.25) { LIST_ALLOW } else { LIST_BLOCK };
                (a & mask(len), len, bit)
            };
            let cells = cells_of(net, len);
            let old: Vec<Cell> = cells.clone().map(|c| r.cell(c)).collect();
            let changed = if remove { r.remove(net, len, bit) } else { r.insert(net, len, bit) };
            if !remove && changed {
                present.push((net, len, bit));
            }
            for (c, o) in cells.zip(old) {
                let n = r.cell(c);
                transition(&mut live.words, &mut live.buckets, seed, c, &o, &n).unwrap();
            }
            if step % 100 == 0 {
                let probe: Vec<u32> = (0..2000).map(|_| base.wrapping_sub(2048) + rng.random_range(0..8192u32)).collect();
                check_all(&r, &live, seed, &probe);
                let fresh = r.build(256, seed).unwrap();
                check_all(&r, &fresh, seed, &probe);
            }
        }
    }

    /// The host buckets take the 1.25 hosts per entry they are sized for,
    /// at the default capacity, whatever the hash seed.
    #[test]
    fn host_buckets_take_what_they_are_sized_for() {
        let capacity = 1_048_576usize;
        let c = crate::filter::maps::Capacity::new(capacity, 1);
        for seed in 0..20u32 {
            let mut t = vec![xdpg_v4_bucket::default(); c.v4_buckets];
            let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
            for i in 0..(capacity + capacity / 4) as u32 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                assert!(host_set(&mut t, seed, x, 1).is_ok(), "seed {seed}: full after {i} hosts");
            }
        }
    }

    /// The chained-bucket table's write order, over this layout: random
    /// hosts (0.0.0.0 among them, which a live table never retires) crowded
    /// into a few home buckets, set and retired in random order.
    #[test]
    fn host_buckets_keep_readers_safe_after_every_store() {
        for seed in 0..6u32 {
            let hosts: Vec<(u32, u32)> = std::iter::once(0)
                .chain((1..2000u32).map(|i| 0xC000_0200 | mix32(i ^ seed)).filter(|&a| mix32(v4_host_hash(a, seed)) & 63 < 3))
                .take(60)
                .map(|a| (a, v4_host_hash(a, seed)))
                .collect();
            let seen = crate::core::table::tests::check_write_order::<xdpg_v4_bucket>(
                64,
                &hosts,
                &[XDPG_VERDICT_BLOCK, XDPG_VERDICT_ALLOW, XDPG_HOST_PASS],
                1500,
                u64::from(seed),
            );
            assert!(seen.extensions > 0 && seen.tombstones_reused > 0 && seen.unpatchable > 0, "{seen:?}");
        }
    }
}
