//! The IPv4 connection table (`xdpg_lb_conns4`, `ct4_*` in
//! `src/bpf/lb_select.h`) as user space sees it: where a flow's entry is,
//! counting and flushing, and filling it from the kernel LRU hash that held
//! IPv4 connections up to LB layout 3.
//!
//! The table is an array of 64-byte lines of two slots (key, entry). A
//! flow's two lines follow from its key and the LB's flow-hash seed (fixed
//! for the LB's life), so the data plane fetches both in one memory round
//! trip; a new flow takes an empty slot of the emptier line, else moves an
//! entry of its four slots to that entry's other line, else replaces the
//! one idle longest (`lines_for`). Measured against the LRU hash it
//! replaces (BENCHMARKS.md, "Issue 13, fifth session"): a hit is one
//! dependent cache miss where the LRU hash took two (its bucket, then the
//! element), and an insert is five stores into a line the lookup already
//! fetched, where the LRU took two locks and a free-list pop (about 230 ns
//! on AMD EPYC).

use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, Ordering};

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
/// all taken first tries to move one of their entries to its other line (a
/// cuckoo step); only when none can move does it replace the one idle
/// longest, though other slots are free. Filling a table to half load (the
/// `connections` asked for), that happens to 2 new flows in 65,536; to
/// three quarters, 1 in 104 (`tests`; without the cuckoo step 1 in 110 and
/// 1 in 18). A replaced flow chooses by Maglev again on its next
/// packet, so it keeps its backend unless the backends changed meanwhile.
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

/// Byte offset of slot `j` in a line, and of a slot's words in it (from
/// the layout generated from C).
const fn slot_offset(j: usize) -> usize {
    offset_of!(xdpg_lb_ct4_line, slot) + j * size_of::<xdpg_lb_ct4_slot>()
}
const KEY0: usize = offset_of!(xdpg_lb_ct4_slot, key);
const KEY1: usize = KEY0 + size_of::<u64>();
const CONN: usize = offset_of!(xdpg_lb_ct4_slot, conn);

/// Where a table's lines are: the mmapped map (or, in unit tests, memory).
pub(crate) trait Lines {
    fn len(&self) -> usize;
    /// A copy of line `i`.
    fn line(&self, i: usize) -> xdpg_lb_ct4_line;
    /// The 64-bit word at `byte_offset` in line `i`, for single stores.
    fn word(&self, i: usize, byte_offset: usize) -> &AtomicU64;
}

impl Lines for MappedArray<xdpg_lb_ct4_line> {
    fn len(&self) -> usize {
        MappedArray::len(self)
    }
    fn line(&self, i: usize) -> xdpg_lb_ct4_line {
        self.get(i)
    }
    fn word(&self, i: usize, byte_offset: usize) -> &AtomicU64 {
        self.atomic_u64(i, byte_offset)
    }
}

/// The table over its lines, with the seed the data plane places by.
pub(crate) struct Ct4<'a, L: Lines + ?Sized = MappedArray<xdpg_lb_ct4_line>> {
    pub lines: &'a L,
    pub seed: u32,
}

impl<L: Lines + ?Sized> Ct4<'_, L> {
    fn lines_of(&self, key: [u64; 2]) -> [u32; 2] {
        lines_of(key, self.seed, self.lines.len() as u32 - 1)
    }

    /// The entry of the flow with key words `key`.
    pub(crate) fn find(&self, key: [u64; 2]) -> Option<xdpg_lb_conn> {
        self.lines_of(key)
            .into_iter()
            .find_map(|line| self.lines.line(line as usize).slot.iter().find(|s| s.key == key).map(|s| s.conn))
    }

    /// Adds the flow's entry as the data plane does (`ct4_insert`): the
    /// slot of its lines most worth taking at `now` (jiffies); when all
    /// four are taken, the first whose entry can move to its other line,
    /// else the one idle longest. Returns whether an entry was replaced.
    pub(crate) fn insert(&self, key: [u64; 2], conn: xdpg_lb_conn, now: u32) -> bool {
        let at = self.lines_of(key);
        let lines = at.map(|i| self.lines.line(i as usize));
        let candidates = [(0, 0), (0, 1), (1, 0), (1, 1)];
        let (mut best, mut best_worth) = ((0, 0), worth(&lines[0], 0, now));
        for &(c, j) in &candidates[1..] {
            let w = worth(&lines[c], j, now);
            if w > best_worth {
                (best, best_worth) = ((c, j), w);
            }
        }
        let mut replaced = false;
        if best_worth < u32::MAX - 1 {
            match candidates.iter().find(|&&(c, j)| self.move_out(&lines[c].slot[j], at[c])) {
                Some(&moved) => best = moved,
                None => replaced = true,
            }
        }
        self.store(at[best.0] as usize, best.1, key, bytemuck::cast(conn));
        replaced
    }

    /// Moves an entry of line `here` to an empty slot of its other line
    /// (`ct4_move`); returns whether it could.
    fn move_out(&self, s: &xdpg_lb_ct4_slot, here: u32) -> bool {
        let [a, b] = self.lines_of(s.key);
        let there = if a == here { b } else { a };
        let line = self.lines.line(there as usize);
        let Some(j) = (0..2).find(|&j| line.slot[j].key[0] == 0) else { return false };
        self.store(there as usize, j, s.key, bytemuck::cast(s.conn));
        true
    }

    /// Writes slot `j` of line `line` (`ct4_store`): the first key word is
    /// cleared first and written last, so the data plane never reads a key
    /// with another flow's entry.
    fn store(&self, line: usize, j: usize, key: [u64; 2], conn: [u64; 2]) {
        let at = slot_offset(j);
        self.lines.word(line, at + KEY0).store(0, Ordering::Release);
        self.lines.word(line, at + CONN).store(conn[0], Ordering::Release);
        self.lines.word(line, at + CONN + size_of::<u64>()).store(conn[1], Ordering::Release);
        self.lines.word(line, at + KEY1).store(key[1], Ordering::Release);
        self.lines.word(line, at + KEY0).store(key[0], Ordering::Release);
    }

    /// Entries in the table.
    pub(crate) fn count(&self) -> usize {
        (0..self.lines.len()).map(|i| self.lines.line(i).slot.iter().filter(|s| s.key[0] != 0).count()).sum()
    }

    /// Empties the table; returns the entries removed. Clearing a slot's
    /// first key word empties it for the data plane at once.
    pub(crate) fn clear(&self) -> usize {
        let mut n = 0;
        for i in 0..self.lines.len() {
            for j in 0..2 {
                n += usize::from(self.lines.word(i, slot_offset(j) + KEY0).swap(0, Ordering::AcqRel) != 0);
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
        move |e: libbpf_rs::Error| PinError::Io { op, path, error: io_from_libbpf(e) }
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
    // Oldest first: where flows compete for the same slots, the ones seen
    // last are kept, as the LRU would.
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

    /// Lines in memory, for the twin's placement without a kernel.
    struct Memory(Vec<[AtomicU64; 8]>);

    impl Lines for Memory {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn line(&self, i: usize) -> xdpg_lb_ct4_line {
            bytemuck::cast(self.0[i].each_ref().map(|w| w.load(Ordering::Acquire)))
        }
        fn word(&self, i: usize, byte_offset: usize) -> &AtomicU64 {
            &self.0[i][byte_offset / 8]
        }
    }

    /// Fills a table of `lines` lines with `flows` new flows, one a tick;
    /// returns how many replaced an entry, and checks that every flow not
    /// replaced is still found.
    fn fill(lines: usize, flows: u64) -> usize {
        let memory = Memory((0..lines).map(|_| Default::default()).collect());
        let table = Ct4 { lines: &memory, seed: 0x5EED };
        let key = |i: u64| [0x0A00_0001 ^ (i << 32), 0x06_0050_0000 | (i & 0xFFFF) | ((i >> 16) << 40)];
        let mut replaced = 0;
        for i in 0..flows {
            let conn = xdpg_lb_conn { backend: i as u32, last_seen: i as u32, ..Default::default() };
            replaced += usize::from(table.insert(key(i), conn, i as u32));
        }
        let found = (0..flows).filter(|&i| table.find(key(i)).is_some_and(|c| c.backend == i as u32)).count();
        assert_eq!(found + replaced, flows as usize, "a flow lost without a replacement counted");
        assert_eq!(table.count(), found);
        replaced
    }

    #[test]
    fn a_table_filled_to_half_load_replaces_almost_nothing() {
        let lines = 1 << 16;
        // Measured: 0 of 32,768 flows, 2 of 65,536 and 944 of 98,304 (without
        // the cuckoo step 9, 606 and 5,326).
        assert_eq!(fill(lines, lines as u64 / 2), 0, "up to a quarter");
        assert!(fill(lines, lines as u64) <= 10, "up to half");
        assert!(fill(lines, lines as u64 * 3 / 2) <= 2000, "up to three quarters");
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
