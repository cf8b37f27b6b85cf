//! The IPv4 tables the data plane reads, derived from the rule model
//! (`v4.rs`): level 1, a 4-bit cell per /24 in 64-bit words; level 2, the
//! host buckets of mixed /24s, a chained-bucket table
//! ([`crate::core::table`]) of fifteen hosts per cache line. Built whole
//! for a swap, or moved /24 by /24 in place ([`transition`]).

use std::ops::Range;

use crate::core::layout::consts::*;
use crate::core::table::{self, Layout, Store, TableError};
use crate::filter::hash::v4_host_hash;
use crate::filter::layout::{xdpg_v4_bucket, PASS};
use crate::filter::v4::Cell;

const SLOTS: usize = XDPG_V4_BUCKET_SLOTS as usize;

/// The cell of /24 number `idx24` in level-1 `words`.
pub(crate) fn cell_nibble(words: &[u64], idx24: u32) -> u8 {
    ((words[(idx24 / 16) as usize] >> ((idx24 % 16) * 4)) & 0xF) as u8
}

/// Sets that cell.
pub(crate) fn set_cell_nibble(words: &mut [u64], idx24: u32, nibble: u8) {
    let (w, shift) = ((idx24 / 16) as usize, (idx24 % 16) * 4);
    words[w] = (words[w] & !(0xF << shift)) | (u64::from(nibble) << shift);
}

/// Sets every cell in `range` to `nibble`, a whole word at a time where it can.
pub(crate) fn fill_cells(words: &mut [u64], range: Range<u32>, nibble: u8) {
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
pub(crate) fn host_set<S: Store<xdpg_v4_bucket>>(
    store: &mut S,
    seed: u32,
    addr: u32,
    verdict: u8,
) -> Result<(), TableError> {
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
    if cell & crate::filter::v4::MIXED == 0 {
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
    use crate::filter::layout::{ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK};
    use crate::filter::v4::{cells_of, mask, V4Rules, MIXED};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn check_all(rules: &V4Rules, t: &V4Tables, seed: u32, addrs: &[u32]) {
        let words = |i: usize| t.words[i];
        for &a in addrs {
            assert_eq!(lookup(&words, &t.buckets, seed, a), rules.verdict(a), "addr {}", std::net::Ipv4Addr::from(a));
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
        let addrs: Vec<u32> = (0..=255)
            .flat_map(|h| [ip("192.0.2.0") + h, ip("198.51.100.0") + h, ip("198.51.101.0") + h, ip("203.0.113.0") + h])
            .collect();
        check_all(&r, &t, 7, &addrs);
        // Removing the /25 leaves the /24 blocking the same hosts.
        r.remove(ip("192.0.2.128"), 25, LIST_BLOCK);
        assert_eq!(r.verdict(ip("192.0.2.200")), BLOCK);
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
                let probe: Vec<u32> =
                    (0..2000).map(|_| base.wrapping_sub(2048) + rng.random_range(0..8192u32)).collect();
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
            let crowded = |&a: &u32| mix32(v4_host_hash(a, seed)) & 63 < 3;
            let hosts: Vec<(u32, u32)> = std::iter::once(0)
                .chain((1..2000u32).map(|i| 0xC000_0200 | mix32(i ^ seed)).filter(crowded))
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
