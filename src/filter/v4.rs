//! IPv4 lists: the rule model, from which `v4_tables.rs` derives the
//! two-level table the data plane reads.
//!
//! Level 1 holds a 2-bit cell per /24: the verdict for the whole /24, or
//! the default of a "mixed" /24's hosts; the hosts whose verdict differs
//! from that default are kept in cache-line host buckets of fifteen, and
//! the first seven of each /18 also inline in the /18's level-1 line (64
//! cells and 7 hosts in 32 bytes: 8 MiB for all of IPv4). A lookup
//! therefore reads one line, whatever the number of prefixes, unless a /18
//! holds more than seven listed hosts (then a host bucket too), where an
//! LPM trie walks a chain of cache misses.
//!
//! Exact CIDR semantics are kept by deriving the tables from the rules:
//! overlapping prefixes, allowlist entries (which win over the blocklist
//! whatever their length) and removals that never unblock what another
//! entry still covers.

use std::ops::Range;

use rustc_hash::FxHashMap;

use crate::core::table::TableError;
use crate::filter::entries::{self, Entries};
use crate::filter::layout::{xdpg_v4_bucket, ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK, PASS};
use crate::filter::v4_tables::{cell_verdict, fill_cells, host_set, new_lines, set_cell_verdict, V4Tables};

/// The model's "mixed" bit over a /24's verdict (the nibble of a /24 with
/// listed hosts); the data plane stores only the verdict, its hosts decide.
pub(crate) const MIXED: u8 = 4;

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
        self.short_lens[list_index(bit)].iter().any(|&len| self.lists(addr & mask(len), len) & bit != 0)
    }

    /// The verdict of a whole /24 from rules of length ≤ 24 alone.
    fn base24(&self, idx24: u32) -> u8 {
        entries::verdict(|bit| self.covers24(idx24, bit))
    }

    /// Host slots the lists take (the exceptions of every mixed /24): only
    /// a /24 with longer prefixes in it can be mixed.
    pub(crate) fn host_slots(&self) -> usize {
        self.long
            .keys()
            .map(|&c| match self.cell(c) {
                Cell::Mixed { exceptions, .. } => exceptions.len(),
                Cell::Uniform(_) => 0,
            })
            .sum()
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
        (0..=32u8).rev().map(|len| (addr & mask(len), len)).find(|&(n, l)| self.lists(n, l) & bit != 0)
    }

    /// The verdict for `addr`, straight from the rules (the reference the
    /// tables are checked against).
    pub(crate) fn verdict(&self, addr: u32) -> u8 {
        entries::verdict(|bit| self.matching(addr, bit).is_some())
    }

    /// Builds both levels from scratch.
    pub(crate) fn build(&self, bucket_count: usize, seed: u32) -> Result<V4Tables, TableError> {
        let mut lines = new_lines();
        // Short prefixes: blocks first, then allows over them.
        for (bit, value) in [(LIST_BLOCK, BLOCK), (LIST_ALLOW, ALLOW)] {
            for (net, len, bits) in self.rules.iter() {
                if len <= 24 && bits & bit != 0 {
                    fill_cells(&mut lines, cells_of(net, len), value);
                }
            }
        }
        let mut buckets = vec![xdpg_v4_bucket::default(); bucket_count];
        let mut exceptions = Vec::with_capacity(256);
        for (&idx24, long) in &self.long {
            let base = cell_verdict(&lines, idx24);
            if base == ALLOW {
                continue;
            }
            let nibble = self.classify_long(long.as_slice(), base, &mut exceptions);
            for &(host, verdict) in &exceptions {
                host_set(&mut lines, &mut buckets, seed, (idx24 << 8) | u32::from(host), verdict)?;
            }
            set_cell_verdict(&mut lines, idx24, nibble & 3);
        }
        Ok(V4Tables { lines, buckets })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
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
}
