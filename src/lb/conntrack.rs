//! The IPv4 connection table (`xdpg_lb_conns4`, `ct4_*` in
//! `src/bpf/lb_select.h`) as user space sees it: where a flow's entry is,
//! counting and flushing, and filling it from the kernel LRU hash that held
//! IPv4 connections up to LB layout 3.
//!
//! The table is an array of 64-byte lines of two slots (key, entry). A
//! flow's two lines follow from its key alone, so the data plane fetches
//! both in one memory round trip; a new flow takes an empty slot of the
//! two (its first line's first), else the one idle longest. Measured
//! against the LRU hash it replaces (BENCHMARKS.md, "Issue 13, fifth
//! session"): a hit is one dependent cache miss where the LRU hash took
//! two (its bucket, then the element), and an insert is four stores into a
//! line the lookup already fetched, where the LRU took two locks and a
//! free-list pop (about 230 ns on AMD EPYC).

use std::sync::atomic::Ordering;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::layout::{xdpg_lb_conn, xdpg_lb_ct4_line, xdpg_lb_ct4_slot, xdpg_lb_flow4};
use super::maps::LbMaps;
use crate::core::layout::names;
use crate::core::maps::io_from_libbpf;
use crate::core::mmap::MappedArray;
use crate::core::pin::PinDir;
use crate::error::{Error, PinError};

/// Lines for `connections` entries: a power of two, two slots each, so the
/// table has at least twice the slots asked for (64 MiB for 1M, where the
/// LRU hash took about 100 bytes an entry). A new flow whose four slots are
/// all taken replaces the one idle longest, though other slots are free:
/// filling a table to a quarter, 1 new flow in 3,600 does; to half (the
/// `connections` asked for), 1 in 110; to three quarters, 1 in 18
/// (`tests`). A replaced flow chooses by Maglev again on its next packet,
/// so it keeps its backend unless the backends changed meanwhile. Not built:
/// moving the replaced entry to its other line when that has room (a
/// cuckoo step: one more cold read on that path).
pub(crate) fn lines_for(connections: u32) -> u32 {
    connections.max(2).next_power_of_two()
}

/// A flow's key as the data plane's two words (`ct4_probe`): the
/// `xdpg_lb_flow4` layout read as two native 64-bit words.
pub(crate) fn key_words(flow: &xdpg_lb_flow4) -> [u64; 2] {
    bytemuck::cast(*flow)
}

/// The two lines of a key (`ct4_probe`): a multiplicative hash of the key
/// words and the flow-hash seed, remixed for the second line, which is
/// never the first.
pub(crate) fn lines_of(key: [u64; 2], seed: u32, mask: u32) -> [u32; 2] {
    let h = (key[0] ^ key[1].wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ u64::from(seed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let a = (h >> 32) as u32 & mask;
    let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut b = (h >> 32) as u32 & mask;
    if b == a {
        b ^= 1;
    }
    [a, b]
}

/// How much slot `j` of a line is worth taking (`ct4_worth`): an empty one
/// in an empty line most, then an empty one beside an entry, else the one
/// idle longest.
fn worth(line: &xdpg_lb_ct4_line, j: usize, now: u32) -> u32 {
    match (line.slot[j].key[0], line.slot[1 - j].key[0]) {
        (0, 0) => u32::MAX,
        (0, _) => u32::MAX - 1,
        _ => now.wrapping_sub(line.slot[j].conn.last_seen),
    }
}

/// Byte offsets in a line of slot `j`'s words.
const fn slot_offset(j: usize) -> usize {
    j * size_of::<xdpg_lb_ct4_slot>()
}
const KEY1: usize = 8;
const CONN: usize = 16;

/// The table over its mmapped lines, with the seed and mask the data
/// plane places by.
pub(crate) struct Ct4<'a> {
    pub lines: &'a MappedArray<xdpg_lb_ct4_line>,
    pub seed: u32,
}

impl Ct4<'_> {
    fn mask(&self) -> u32 {
        self.lines.len() as u32 - 1
    }

    /// The entry of the flow with key words `key`.
    pub(crate) fn find(&self, key: [u64; 2]) -> Option<xdpg_lb_conn> {
        for line in lines_of(key, self.seed, self.mask()) {
            let l = self.lines.get(line as usize);
            if let Some(s) = l.slot.iter().find(|s| s.key == key) {
                return Some(s.conn);
            }
        }
        None
    }

    /// Adds the flow's entry as the data plane does (`ct4_insert`): the
    /// slot of its lines most worth taking at `now` (jiffies). The slot's
    /// first key word is cleared first and written last, so the data plane
    /// never reads a key with another flow's entry.
    pub(crate) fn insert(&self, key: [u64; 2], conn: xdpg_lb_conn, now: u32) {
        let [a, b] = lines_of(key, self.seed, self.mask());
        let (la, lb) = (self.lines.get(a as usize), self.lines.get(b as usize));
        let candidates = [(a, &la, 0), (a, &la, 1), (b, &lb, 0), (b, &lb, 1)];
        let (mut best, mut best_worth) = ((a, 0), worth(&la, 0, now));
        for (line, l, j) in &candidates[1..] {
            let w = worth(l, *j, now);
            if w > best_worth {
                (best, best_worth) = ((*line, *j), w);
            }
        }
        let (line, j) = (best.0 as usize, slot_offset(best.1));
        let words: [u64; 2] = bytemuck::cast(conn);
        self.lines.atomic_u64(line, j).store(0, Ordering::Release);
        self.lines.atomic_u64(line, j + CONN).store(words[0], Ordering::Release);
        self.lines.atomic_u64(line, j + CONN + 8).store(words[1], Ordering::Release);
        self.lines.atomic_u64(line, j + KEY1).store(key[1], Ordering::Release);
        self.lines.atomic_u64(line, j).store(key[0], Ordering::Release);
    }

    /// Entries in the table.
    pub(crate) fn count(&self) -> usize {
        (0..self.lines.len()).map(|i| self.lines.get(i).slot.iter().filter(|s| s.key[0] != 0).count()).sum()
    }

    /// Empties the table; returns the entries removed. Clearing a slot's
    /// first key word empties it for the data plane at once.
    pub(crate) fn clear(&self) -> usize {
        let mut n = 0;
        for i in 0..self.lines.len() {
            for j in 0..2 {
                n += usize::from(self.lines.atomic_u64(i, slot_offset(j)).swap(0, Ordering::AcqRel) != 0);
            }
        }
        n
    }
}

/// The migration from LB layout 3, before the swap: the new table's mask
/// goes into the config the new program will read, and every IPv4 entry of
/// the pinned LRU hash the old program still runs on is placed in the new
/// table. Entries the old program adds after this copy are not copied
/// again: the pin directory is locked, so no edit runs until the swap, and
/// a flow created meanwhile chose by the same Maglev table, which the new
/// program consults when it finds no entry.
///
/// # Errors
///
/// [`PinError::Io`] when the pinned table cannot be read.
pub(crate) fn adopt_lru(old: &PinDir, maps: &LbMaps) -> Result<(), Error> {
    let path = old.join(names::XDPG_LB_CONNS4);
    let io = |op: &'static str| {
        let path = path.clone();
        move |e: libbpf_rs::Error| PinError::Io { op, path, source: io_from_libbpf(e) }
    };
    maps.ct4_mask().store(maps.conns4.len() as u32 - 1, Ordering::Release);
    let src = MapHandle::from_pinned_path(&path).map_err(io("opening pinned map"))?;
    let mut entries = Vec::new();
    for key in src.keys() {
        // An LRU entry may go between the key and its lookup.
        let Some(value) = src.lookup(&key, MapFlags::ANY).map_err(io("reading map"))? else { continue };
        let (Ok(flow), Ok(conn)) =
            (bytemuck::try_pod_read_unaligned::<xdpg_lb_flow4>(&key), bytemuck::try_pod_read_unaligned(&value))
        else {
            continue;
        };
        entries.push((key_words(&flow), conn));
    }
    // The most recent first: where four flows compete for the same slots,
    // the ones seen last are kept, as the LRU would.
    let now = entries.iter().map(|(_, c): &(_, xdpg_lb_conn)| c.last_seen).max().unwrap_or(0);
    entries.sort_by_key(|(_, c)| now.wrapping_sub(c.last_seen));
    let table = maps.ct4();
    for (key, conn) in entries.into_iter().rev() {
        table.insert(key, conn, now);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_give_at_least_the_connections_asked_for() {
        for (asked, lines) in [(1, 2), (4, 4), (5, 8), (1024, 1024), (1 << 20, 1 << 20), ((1 << 20) + 1, 1 << 21)] {
            assert_eq!(lines_for(asked), lines, "{asked}");
            assert!(lines_for(asked) >= asked);
        }
    }

    #[test]
    fn a_key_has_two_distinct_lines_in_range() {
        for mask in [1u32, 3, 1023, (1 << 19) - 1] {
            for i in 0..2000u64 {
                let key = [i.wrapping_mul(0x1234_5678_9ABC_DEF1), 0x11_0050_1F90 + i];
                let [a, b] = lines_of(key, 7, mask);
                assert!(a <= mask && b <= mask && a != b, "{key:?} {mask}");
            }
        }
    }

    /// How often a new flow finds all four of its slots taken, at the
    /// loads the sizing allows (the placement of `ct4_insert`, simulated).
    fn full_candidates(lines: usize, flows: usize) -> usize {
        let mut used = vec![0u8; lines];
        let mask = lines as u32 - 1;
        let mut full = 0;
        for i in 0..flows as u64 {
            let key = [0x0A00_0001 ^ (i << 32), 0x06_0050_0000 | (i & 0xFFFF) | ((i >> 16) << 40)];
            let [a, b] = lines_of(key, 0, mask);
            let (a, b) = (a as usize, b as usize);
            match (used[a], used[b]) {
                (2, 2) => full += 1,
                (ua, ub) if ua <= ub => used[a] += 1,
                _ => used[b] += 1,
            }
        }
        full
    }

    #[test]
    fn at_half_load_a_new_flow_almost_always_finds_an_empty_slot() {
        let lines = 1 << 16;
        let quarter = full_candidates(lines, lines / 2);
        let half = full_candidates(lines, lines);
        let three_quarters = full_candidates(lines, lines * 3 / 2);
        // Measured: 9 of 32,768, 606 of 65,536, 5,326 of 98,304.
        assert!(quarter * 1000 <= lines / 2, "{quarter} of {} flows up to a quarter", lines / 2);
        assert!(half * 66 <= lines, "{half} of {lines} flows up to half");
        assert!(three_quarters * 12 <= lines * 3 / 2, "{three_quarters} of {} up to three quarters", lines * 3 / 2);
    }

    #[test]
    fn key_words_are_the_flow4_layout() {
        let flow = xdpg_lb_flow4 {
            src: 0x0100_000A,
            dst: 0x0200_000A,
            sport: 0x3412,
            dport: 0x5000,
            proto: 6,
            ..Default::default()
        };
        assert_eq!(key_words(&flow), [0x0200_000A_0100_000A, 0x06_5000_3412]);
    }
}
