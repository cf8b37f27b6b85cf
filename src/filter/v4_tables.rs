//! The IPv4 tables the data plane reads, derived from the rule model
//! (`v4.rs`): level 1, one 32-byte line per /18 ([`xdpg_v4_line`]) holding
//! its 64 cells (each /24's verdict, or the default of its listed hosts)
//! and up to seven listed hosts inline; level 2, the host buckets, a
//! chained-bucket table ([`crate::core::table`]) of fifteen hosts per cache
//! line holding every listed host, read only for a /18 whose line
//! overflowed. Built whole for a swap, or moved /24 by /24 in place
//! ([`transition`]).

use std::ops::Range;

use crate::core::layout::consts::*;
use crate::core::table::{self, Layout, Store, TableError};
use crate::filter::hash::v4_host_hash;
use crate::filter::layout::{xdpg_v4_bucket, xdpg_v4_line, PASS};
use crate::filter::v4::Cell;

const SLOTS: usize = XDPG_V4_BUCKET_SLOTS as usize;
const CELL_WORDS: usize = XDPG_V4_LINE_CELL_WORDS as usize;
/// The slot holding a line's overflow mark (after its host slots).
const MARK_SLOT: usize = XDPG_V4_LINE_SLOTS as usize;
const MARK: u16 = XDPG_V4_LINE_OVERFLOW as u16;

/// Level-1 lines: where cell and inline-host writes go. `word` counts the
/// line's 64-bit words: first its cells, then its host slots.
pub(crate) trait LineStore {
    fn read(&self, line: usize, word: usize) -> u64;
    fn write(&mut self, line: usize, word: usize, value: u64);
}

impl LineStore for Vec<xdpg_v4_line> {
    fn read(&self, line: usize, word: usize) -> u64 {
        let l = &self[line];
        if word < CELL_WORDS {
            l.cells[word]
        } else {
            l.slots[word - CELL_WORDS]
        }
    }
    fn write(&mut self, line: usize, word: usize, value: u64) {
        let l = &mut self[line];
        if word < CELL_WORDS {
            l.cells[word] = value;
        } else {
            l.slots[word - CELL_WORDS] = value;
        }
    }
}

/// A fresh level 1: every /24 passes, no host inline.
pub(crate) fn new_lines() -> Vec<xdpg_v4_line> {
    vec![xdpg_v4_line::default(); XDPG_V4_LINES as usize]
}

/// Where /24 number `idx24`'s cell is: its line, the word, the shift.
fn cell_at(idx24: u32) -> (usize, usize, u32) {
    let per_word = XDPG_V4_CELLS_PER_WORD;
    ((idx24 >> 6) as usize, ((idx24 % 64) / per_word) as usize, (idx24 % per_word) * 2)
}

/// The cell of /24 number `idx24`: its verdict, or its hosts' default.
pub(crate) fn cell_verdict<L: LineStore>(lines: &L, idx24: u32) -> u8 {
    let (line, word, shift) = cell_at(idx24);
    ((lines.read(line, word) >> shift) & 3) as u8
}

/// Sets that cell, with one store of its word (none if it is unchanged).
pub(crate) fn set_cell_verdict<L: LineStore>(lines: &mut L, idx24: u32, verdict: u8) {
    let (line, word, shift) = cell_at(idx24);
    let w = lines.read(line, word);
    let nw = (w & !(3 << shift)) | (u64::from(verdict & 3) << shift);
    if nw != w {
        lines.write(line, word, nw);
    }
}

/// Sets every cell in `range` to `verdict`, a whole word at a time where it can.
pub(crate) fn fill_cells<L: LineStore>(lines: &mut L, range: Range<u32>, verdict: u8) {
    let per_word = XDPG_V4_CELLS_PER_WORD;
    let whole = u64::from(verdict & 3) * 0x5555_5555_5555_5555;
    let mut i = range.start;
    while i < range.end {
        if i % per_word == 0 && range.end - i >= per_word {
            let (line, word, _) = cell_at(i);
            lines.write(line, word, whole);
            i += per_word;
        } else {
            set_cell_verdict(lines, i, verdict);
            i += 1;
        }
    }
}

/// Both levels, ready to copy into the maps.
pub(crate) struct V4Tables {
    pub lines: Vec<xdpg_v4_line>,
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

/// Host codes in buckets and slots: 0 means none, so PASS is stored as
/// XDPG_HOST_PASS.
fn host_code(verdict: u8) -> u32 {
    if verdict == PASS {
        XDPG_HOST_PASS
    } else {
        u32::from(verdict)
    }
}

/// Host `addr`'s key in an inline slot: its /24 within the /18 and its
/// last octet, in bits 2-15 (bits 0-1 take the code).
fn slot_key(addr: u32) -> u16 {
    ((((addr >> 8) & 63) << 10) | ((addr & 0xFF) << 2)) as u16
}

fn slot<L: LineStore>(lines: &L, line: usize, s: usize) -> u16 {
    (lines.read(line, CELL_WORDS + s / 4) >> (16 * (s % 4))) as u16
}

/// Writes one slot with one store of its word.
fn write_slot<L: LineStore>(lines: &mut L, line: usize, s: usize, value: u16) {
    let (word, shift) = (CELL_WORDS + s / 4, 16 * (s % 4));
    let w = lines.read(line, word);
    lines.write(line, word, (w & !(0xFFFF << shift)) | (u64::from(value) << shift));
}

fn overflowed<L: LineStore>(lines: &L, line: usize) -> bool {
    slot(lines, line, MARK_SLOT) == MARK
}

/// The slot holding host `addr` with a code, if any.
fn live_slot<L: LineStore>(lines: &L, line: usize, key: u16) -> Option<usize> {
    (0..MARK_SLOT).find(|&s| {
        let v = slot(lines, line, s);
        v & !3 == key && v & 3 != 0
    })
}

/// Gives host `addr` `code` in its line: in its own slot if it has one
/// (live or retired: a host keeps one slot for the table's life, so a
/// reader scanning the slots never misses it by a move), else in an empty
/// one; with none left, marks the line overflowed (the host is already in
/// the buckets).
fn inline_set<L: LineStore>(lines: &mut L, addr: u32, code: u32) {
    let (line, key) = ((addr >> 14) as usize, slot_key(addr));
    let value = key | code as u16;
    let own = live_slot(lines, line, key).or_else(|| (0..MARK_SLOT).find(|&s| key != 0 && slot(lines, line, s) == key));
    if let Some(s) = own {
        write_slot(lines, line, s, value);
    } else if overflowed(lines, line) {
        // Found through the buckets.
    } else if let Some(s) = (0..MARK_SLOT).find(|&s| slot(lines, line, s) == 0) {
        write_slot(lines, line, s, value);
    } else {
        write_slot(lines, line, MARK_SLOT, MARK);
    }
}

/// Retires host `addr` from its line: its slot keeps the key with code 0.
/// Key 0's retired slot would look empty and could go to another host, so
/// that line is marked overflowed first (its hosts stay found through the
/// buckets).
fn inline_clear<L: LineStore>(lines: &mut L, addr: u32) {
    let (line, key) = ((addr >> 14) as usize, slot_key(addr));
    if let Some(s) = live_slot(lines, line, key) {
        if key == 0 {
            write_slot(lines, line, MARK_SLOT, MARK);
        }
        write_slot(lines, line, s, key);
    }
}

/// Stores `verdict` for host `addr`: in the buckets first (a reader gets
/// there only through a line's mark), then in its line.
pub(crate) fn host_set<L: LineStore, S: Store<xdpg_v4_bucket>>(
    lines: &mut L,
    store: &mut S,
    seed: u32,
    addr: u32,
    verdict: u8,
) -> Result<(), TableError> {
    let code = host_code(verdict);
    table::set(store, v4_host_hash(addr, seed), &addr, code)?;
    inline_set(lines, addr, code);
    Ok(())
}

/// Retires host `addr`: it follows its /24's default again. From its line
/// first, then from the buckets.
pub(crate) fn host_clear<L: LineStore, S: Store<xdpg_v4_bucket>>(
    lines: &mut L,
    store: &mut S,
    seed: u32,
    addr: u32,
) -> Result<(), TableError> {
    inline_clear(lines, addr);
    table::clear(store, v4_host_hash(addr, seed), &addr).map(drop)
}

/// The data plane's lookup (`v4_verdict`), in Rust: what `xdpg_filter`
/// returns for `addr`.
#[cfg(test)]
pub(crate) fn lookup<L: LineStore, S: Store<xdpg_v4_bucket>>(lines: &L, store: &S, seed: u32, addr: u32) -> u8 {
    let line = (addr >> 14) as usize;
    let code = match live_slot(lines, line, slot_key(addr)) {
        Some(s) => u32::from(slot(lines, line, s) & 3),
        None if overflowed(lines, line) => table::get(store, v4_host_hash(addr, seed), &addr),
        None => 0,
    };
    match code {
        0 => cell_verdict(lines, addr >> 8),
        XDPG_HOST_PASS => PASS,
        code => code as u8,
    }
}

/// A cell's default and its listed hosts (none for a uniform /24).
fn parts(cell: &Cell) -> (u8, &[(u8, u8)]) {
    match cell {
        Cell::Uniform(v) => (*v, &[]),
        Cell::Mixed { default, exceptions } => (*default, exceptions),
    }
}

/// Moves one /24 from `old` to `new` in live tables, in an order where every
/// host whose verdict does not change keeps it at every intermediate step
/// (a host's entry wins over its cell): the new hosts' entries first, then
/// the cell, then the old entries the new cell makes redundant. A host that
/// keeps its verdict either has a new entry before the cell changes, or
/// keeps its old entry until the cell already says the same.
pub(crate) fn transition<L: LineStore, S: Store<xdpg_v4_bucket>>(
    lines: &mut L,
    store: &mut S,
    seed: u32,
    idx24: u32,
    old: &Cell,
    new: &Cell,
) -> Result<(), TableError> {
    let addr = |h: u8| (idx24 << 8) | u32::from(h);
    let ((_, e0), (d1, e1)) = (parts(old), parts(new));
    for &(h, v) in e1 {
        if !e0.contains(&(h, v)) {
            host_set(lines, store, seed, addr(h), v)?;
        }
    }
    set_cell_verdict(lines, idx24, d1);
    for &(h, _) in e0 {
        if !e1.iter().any(|&(x, _)| x == h) {
            host_clear(lines, store, seed, addr(h))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hash::mix32;
    use crate::filter::layout::{ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK};
    use crate::filter::v4::{cells_of, mask, V4Rules};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn check_all(rules: &V4Rules, t: &V4Tables, seed: u32, addrs: &[u32]) {
        for &a in addrs {
            assert_eq!(lookup(&t.lines, &t.buckets, seed, a), rules.verdict(a), "addr {}", std::net::Ipv4Addr::from(a));
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
        // Every line marked overflowed and no host inline: only the buckets answer.
        let mut lines = new_lines();
        for l in &mut lines {
            l.slots[1] = u64::from(MARK) << 48;
        }
        for &a in &same_home[..SLOTS * PROBES] {
            host_set(&mut lines, &mut store, seed, a, BLOCK).unwrap();
        }
        assert_eq!(host_set(&mut lines, &mut store, seed, same_home[SLOTS * PROBES], BLOCK), Err(TableError::Full));
        for &a in &same_home[..SLOTS * PROBES] {
            assert_eq!(lookup(&lines, &store, seed, a), BLOCK, "{a:#x} reachable");
        }
        assert_eq!(lookup(&lines, &store, seed, same_home[SLOTS * PROBES]), PASS);
        // A cleared slot is a tombstone: reused by the same address only.
        host_clear(&mut lines, &mut store, seed, same_home[0]).unwrap();
        assert_eq!(lookup(&lines, &store, seed, same_home[0]), PASS);
        assert_eq!(host_set(&mut lines, &mut store, seed, same_home[SLOTS * PROBES], BLOCK), Err(TableError::Full));
        assert_eq!(host_set(&mut lines, &mut store, seed, same_home[0], ALLOW), Ok(()));
        assert_eq!(lookup(&lines, &store, seed, same_home[0]), ALLOW);
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
                transition(&mut live.lines, &mut live.buckets, seed, c, &o, &n).unwrap();
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

    /// Both levels behind one RefCell, so the line and bucket stores a
    /// transition writes through can each check every host of the /24
    /// after every single store, as a concurrent reader would see them.
    struct Watched<'a> {
        state: &'a std::cell::RefCell<(Vec<xdpg_v4_line>, Vec<xdpg_v4_bucket>)>,
        check: &'a dyn Fn(&Vec<xdpg_v4_line>, &Vec<xdpg_v4_bucket>),
    }

    impl LineStore for Watched<'_> {
        fn read(&self, line: usize, word: usize) -> u64 {
            LineStore::read(&self.state.borrow().0, line, word)
        }
        fn write(&mut self, line: usize, word: usize, value: u64) {
            LineStore::write(&mut self.state.borrow_mut().0, line, word, value);
            let st = self.state.borrow();
            (self.check)(&st.0, &st.1);
        }
    }

    impl Store<xdpg_v4_bucket> for Watched<'_> {
        const SHARED: bool = true;
        fn len(&self) -> usize {
            self.state.borrow().1.len()
        }
        fn read(&self, index: usize) -> xdpg_v4_bucket {
            self.state.borrow().1[index]
        }
        fn write(&mut self, index: usize, word: usize, value: u32) {
            Store::write(&mut self.state.borrow_mut().1, index, word, value);
            let st = self.state.borrow();
            (self.check)(&st.0, &st.1);
        }
        fn publish(&mut self, index: usize, word: usize, value: u32) {
            Store::write(self, index, word, value);
        }
    }

    /// Every kind of move of a /24 (uniform and mixed, defaults that flip,
    /// exceptions added, changed and dropped, /24s of one /18 crowding its
    /// seven slots): after every single store of a transition, a host whose
    /// verdict does not change reads it, and one that changes reads its old
    /// or its new verdict.
    #[test]
    fn transitions_keep_unchanged_hosts_after_every_store() {
        let mut rng = StdRng::seed_from_u64(0xC0FFEE);
        let seed = 3;
        let base = ip("198.51.100.0");
        let mut r = V4Rules::default();
        let state = std::cell::RefCell::new((new_lines(), vec![xdpg_v4_bucket::default(); 512]));
        let mut present: Vec<(u32, u8, u8)> = Vec::new();
        let mut stores = 0usize;
        for _ in 0..600 {
            let remove = !present.is_empty() && rng.random_bool(0.4);
            let (net, len, bit) = if remove {
                present.swap_remove(rng.random_range(0..present.len()))
            } else {
                let len = [22u8, 24, 25, 26, 29, 32, 32, 32][rng.random_range(0..8)];
                let a = base + rng.random_range(0..1024u32);
                let bit = if rng.random_bool(0.3) { LIST_ALLOW } else { LIST_BLOCK };
                (a & mask(len), len, bit)
            };
            let cells: Vec<u32> = cells_of(net, len).collect();
            let before = r.clone();
            let changed = if remove { r.remove(net, len, bit) } else { r.insert(net, len, bit) };
            if !remove && changed {
                present.push((net, len, bit));
            }
            for &c in &cells {
                let (o, n) = (before.cell(c), r.cell(c));
                let hosts: Vec<(u32, u8, u8)> =
                    (0..256u32).map(|h| (c << 8) | h).map(|a| (a, before.verdict(a), r.verdict(a))).collect();
                let check = |lines: &Vec<xdpg_v4_line>, buckets: &Vec<xdpg_v4_bucket>| {
                    for &(a, old, new) in &hosts {
                        let now = lookup(lines, buckets, seed, a);
                        assert!(now == old || now == new, "{a:#x}: {now}, not {old} or {new}");
                    }
                };
                let counted = std::cell::Cell::new(0usize);
                let counting = |l: &Vec<xdpg_v4_line>, b: &Vec<xdpg_v4_bucket>| {
                    counted.set(counted.get() + 1);
                    check(l, b)
                };
                let mut lines = Watched { state: &state, check: &counting };
                let mut buckets = Watched { state: &state, check: &counting };
                transition(&mut lines, &mut buckets, seed, c, &o, &n).unwrap();
                stores += counted.get();
                let st = state.borrow();
                for &(a, _, new) in &hosts {
                    assert_eq!(lookup(&st.0, &st.1, seed, a), new, "{a:#x} after the move");
                }
            }
        }
        assert!(stores > 1000, "{stores} stores checked");
    }

    /// The host x.x.x.0 of a line's first /24 has slot key 0: retired, its
    /// slot would look empty and go to another host, and set again it would
    /// land in another slot (a reader scanning could miss it between the
    /// two). So retiring it marks the line overflowed: still found.
    #[test]
    fn retiring_slot_key_zero_marks_the_line() {
        let (h0, a, b) = (ip("198.51.64.0"), ip("198.51.64.1"), ip("198.51.64.2"));
        let line = (h0 >> 14) as usize;
        let mut lines = new_lines();
        let mut store = vec![xdpg_v4_bucket::default(); 64];
        host_set(&mut lines, &mut store, 1, h0, BLOCK).unwrap();
        host_set(&mut lines, &mut store, 1, a, BLOCK).unwrap();
        assert!(!overflowed(&lines, line));
        host_clear(&mut lines, &mut store, 1, h0).unwrap();
        assert!(overflowed(&lines, line));
        host_set(&mut lines, &mut store, 1, b, ALLOW).unwrap();
        host_set(&mut lines, &mut store, 1, h0, ALLOW).unwrap();
        for (h, v) in [(h0, ALLOW), (a, BLOCK), (b, ALLOW), (h0 + 3, PASS)] {
            assert_eq!(lookup(&lines, &store, 1, h), v, "{h:#x}");
        }
    }

    /// Inline slots under random sets and retirements of hosts crowded
    /// into two lines (x.x.x.0 of a line's first /24 among them, whose
    /// retired slot looks empty): every host reads its verdict after every
    /// edit; a host never changes slots while its line is not overflowed
    /// (so a reader scanning the words one by one cannot miss it by a
    /// move); a line overflows only when full or when that host retires,
    /// and stays so.
    #[test]
    fn inline_slots_keep_hosts_in_place() {
        use std::collections::HashMap;
        let seed = 9;
        let mut rng = StdRng::seed_from_u64(7);
        let lines_at = [ip("198.51.64.0"), ip("203.0.64.0")];
        let hosts: Vec<u32> = lines_at
            .iter()
            .flat_map(|&l| std::iter::once(l).chain((0..20).map(move |i| l + (i * 769) % 16384 + 1)))
            .collect();
        let mut lines = new_lines();
        let mut store = vec![xdpg_v4_bucket::default(); 256];
        let mut want: HashMap<u32, u8> = HashMap::new();
        let mut slot_of: HashMap<u32, usize> = HashMap::new();
        let mut marked = [false; 2];
        for step in 0..4000 {
            let h = hosts[rng.random_range(0..hosts.len())];
            let full = (0..MARK_SLOT).all(|s| slot(&lines, (h >> 14) as usize, s) != 0);
            if want.contains_key(&h) && rng.random_bool(0.4) {
                host_clear(&mut lines, &mut store, seed, h).unwrap();
                want.remove(&h);
            } else {
                let v = [BLOCK, ALLOW, PASS][rng.random_range(0..3)];
                host_set(&mut lines, &mut store, seed, h, v).unwrap();
                want.insert(h, v);
            }
            for (i, &l) in lines_at.iter().enumerate() {
                let line = (l >> 14) as usize;
                let now = overflowed(&lines, line);
                assert!(marked[i] <= now, "step {step}: a mark was taken back");
                if now && !marked[i] {
                    assert!(h >> 14 == l >> 14 && (full || slot_key(h) == 0), "step {step}: marked without cause");
                }
                marked[i] = now;
            }
            for &g in &hosts {
                let line = (g >> 14) as usize;
                assert_eq!(
                    lookup(&lines, &store, seed, g),
                    want.get(&g).copied().unwrap_or(PASS),
                    "step {step}: {g:#x}"
                );
                let key = slot_key(g);
                let held = (0..MARK_SLOT)
                    .find(|&s| slot(&lines, line, s) & !3 == key && (key != 0 || slot(&lines, line, s) != 0));
                if let Some(s) = held {
                    if let Some(&before) = slot_of.get(&g) {
                        assert!(before == s || overflowed(&lines, line), "step {step}: {g:#x} moved {before} -> {s}");
                    }
                    slot_of.insert(g, s);
                }
            }
        }
        assert!(marked.iter().all(|&m| m), "both lines overflowed at some point (21 hosts each, 7 slots)");
    }

    /// The host buckets take the 1.25 hosts per entry they are sized for,
    /// at the default capacity, whatever the hash seed.
    #[test]
    fn host_buckets_take_what_they_are_sized_for() {
        let capacity = 1_048_576usize;
        let c = crate::filter::maps::Capacity::new(capacity, 1);
        for seed in 0..20u32 {
            let mut t = vec![xdpg_v4_bucket::default(); c.v4_buckets];
            let mut lines = new_lines();
            let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
            for i in 0..(capacity + capacity / 4) as u32 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                assert!(host_set(&mut lines, &mut t, seed, x, 1).is_ok(), "seed {seed}: full after {i} hosts");
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
