//! IPv6 lists: the rule model, and the entry layout the data plane reads.
//!
//! Every entry is stored once with its *effective* verdict: allow when the
//! entry is allowlisted or an allowlist entry covers it, block otherwise. So
//! the most specific entry covering an address decides, and its stored
//! verdict already accounts for the allowlist winning. Entries of /48 and
//! longer are found in one walk of their /48's chain, the shorter ones (and
//! those of a /48 crowded with entries) by probing the lengths in use,
//! longest first ([`crate::filter::v6_tables`] places them).
//!
//! The entries live in chained-bucket tables ([`crate::core::table`]) of
//! three entries per cache-line bucket, so a probe costs one cache miss
//! where a kernel hash map costs two (bucket head, then element).

use std::collections::BTreeSet;
#[cfg(test)]
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use crate::core::hash::mix32;
use crate::core::layout::consts::*;
use crate::core::table::Layout;
use crate::filter::entries::{self, Entries};
use crate::filter::layout::{xdpg_v6_bucket, xdpg_v6_entry, ALLOW, BLOCK, LIST_ALLOW};
use crate::filter::v6_tables::{Anchor, ANCHORED_MAX, ANCHOR_LEN};

pub(crate) fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn last_addr(net: u128, len: u8) -> u128 {
    net | !mask(len)
}

/// A masked key as the data plane probes it: the address words as the
/// kernel stores them (network byte order read natively), the length, and
/// the kind (`XDPG_V6_KIND_*`: which chain the entry sits in, or a dense
/// /48's mark; see [`crate::filter::v6_tables`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct V6Key {
    pub words: [u32; 4],
    pub len: u8,
    pub kind: u8,
}

impl V6Key {
    pub(crate) fn new(net: u128, len: u8, kind: u32) -> Self {
        V6Key { words: bytemuck::cast(net.to_be_bytes()), len, kind: kind as u8 }
    }
}

/// `len_code`: the length + 1 (so 0 marks a slot never used), the code and
/// the kind.
fn len_code(key: &V6Key, code: u32) -> u32 {
    (u32::from(key.len) + 1) | (code << 8) | (u32::from(key.kind) << 16)
}

const ENTRY_WORDS: usize = size_of::<xdpg_v6_entry>() / 4;
const LEN_CODE_WORD: usize = std::mem::offset_of!(xdpg_v6_entry, len_code) / 4;

/// The slot layout of a v6 bucket (`struct xdpg_v6_bucket`): three entries
/// whose `len_code` publishes or retires each with one store; the overflow
/// bit has a word of its own. The data plane reads an entry's `len_code`
/// first, then its address.
impl Layout for xdpg_v6_bucket {
    type Key = V6Key;
    const SLOTS: usize = XDPG_V6_BUCKET_SLOTS as usize;
    const MAX_PROBES: u32 = XDPG_V6_MAX_PROBES;
    const OVERFLOW_WORD: usize = std::mem::offset_of!(xdpg_v6_bucket, meta) / 4;
    const OVERFLOW_BIT: u32 = XDPG_V6_BUCKET_OVERFLOW;

    fn key(&self, slot: usize) -> Option<V6Key> {
        let e = &self.e[slot];
        let len = (e.len_code & 0xFF).checked_sub(1)?;
        Some(V6Key { words: e.addr, len: len as u8, kind: (e.len_code >> 16) as u8 })
    }
    fn code(&self, slot: usize) -> u32 {
        (self.e[slot].len_code >> 8) & 0xFF
    }
    fn write_key(slot: usize, key: &V6Key, store: &mut dyn FnMut(usize, u32)) {
        for (i, w) in key.words.iter().enumerate() {
            store(slot * ENTRY_WORDS + i, *w);
        }
        store(slot * ENTRY_WORDS + LEN_CODE_WORD, len_code(key, 0));
    }
    fn code_word(&self, slot: usize, key: &V6Key, code: u32) -> (usize, u32) {
        (slot * ENTRY_WORDS + LEN_CODE_WORD, len_code(key, code))
    }
    fn home_slot(hash: u32) -> Option<usize> {
        Some(crate::filter::hash::v6_home_slot(mix32(hash)))
    }
}

/// The v6 entries of both lists.
#[derive(Debug, Clone)]
pub(crate) struct V6Rules {
    rules: Entries<u128>,
    /// The same entries in address order, for "entries inside this prefix".
    ordered: BTreeSet<(u128, u8)>,
    /// Entries per length (any list), and allowlist entries per length.
    len_counts: [u32; 129],
    allow_len_counts: [u32; 129],
}

impl Default for V6Rules {
    fn default() -> Self {
        Self { rules: Entries::default(), ordered: BTreeSet::new(), len_counts: [0; 129], allow_len_counts: [0; 129] }
    }
}

impl V6Rules {
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    pub(crate) fn lists(&self, net: u128, len: u8) -> u8 {
        self.rules.lists(net, len)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u8, u8)> + '_ {
        self.rules.iter()
    }

    pub(crate) fn insert(&mut self, net: u128, len: u8, bit: u8) -> bool {
        let Some(before) = self.rules.add(net, len, bit) else {
            return false;
        };
        if before == 0 {
            self.ordered.insert((net, len));
            self.len_counts[usize::from(len)] += 1;
        }
        if bit == LIST_ALLOW {
            self.allow_len_counts[usize::from(len)] += 1;
        }
        true
    }

    pub(crate) fn remove(&mut self, net: u128, len: u8, bit: u8) -> bool {
        let Some(now) = self.rules.remove(net, len, bit) else {
            return false;
        };
        if now == 0 {
            self.ordered.remove(&(net, len));
            self.len_counts[usize::from(len)] -= 1;
        }
        if bit == LIST_ALLOW {
            self.allow_len_counts[usize::from(len)] -= 1;
        }
        true
    }

    /// Lengths with at least one entry, longest first.
    pub(crate) fn lens_desc(&self) -> Vec<u8> {
        (0..=128u8).rev().filter(|&l| self.len_counts[usize::from(l)] > 0).collect()
    }

    /// Whether an allowlist entry of length ≤ `len` covers `net/len`.
    fn allow_covers(&self, net: u128, len: u8) -> bool {
        (0..=len).any(|l| self.allow_len_counts[usize::from(l)] > 0 && self.lists(net & mask(l), l) & LIST_ALLOW != 0)
    }

    /// The verdict stored for an entry, or `None` when it is not an entry.
    pub(crate) fn effective(&self, net: u128, len: u8) -> Option<u8> {
        match self.lists(net, len) {
            0 => None,
            bits if bits & LIST_ALLOW != 0 => Some(ALLOW),
            _ if self.allow_covers(net, len) => Some(ALLOW),
            _ => Some(BLOCK),
        }
    }

    /// Entries of the anchor length or longer inside the /48 `anchor`: the
    /// entries [`crate::filter::v6_tables`] anchors in its chain.
    pub(crate) fn anchored(&self, anchor: u128) -> impl Iterator<Item = (u128, u8)> + '_ {
        self.ordered
            .range((anchor, ANCHOR_LEN)..=(last_addr(anchor, ANCHOR_LEN), 128))
            .copied()
            .filter(|&(_, l)| l >= ANCHOR_LEN)
    }

    /// How the entries of the /48 `anchor` sit in the table.
    pub(crate) fn anchor_state(&self, anchor: u128) -> Anchor {
        Anchor::of(self.anchored(anchor).take(ANCHORED_MAX + 1).count())
    }

    /// The state of every /48 holding an entry of /48 or longer.
    pub(crate) fn anchor_states(&self) -> FxHashMap<u128, Anchor> {
        let mut counts: FxHashMap<u128, usize> = FxHashMap::default();
        for (n, _, _) in self.rules.iter().filter(|&(_, l, _)| l >= ANCHOR_LEN) {
            *counts.entry(n & mask(ANCHOR_LEN)).or_default() += 1;
        }
        counts.into_iter().map(|(a, c)| (a, Anchor::of(c))).collect()
    }

    /// Entries strictly inside `net/len` (longer prefixes within it).
    pub(crate) fn inside(&self, net: u128, len: u8) -> impl Iterator<Item = (u128, u8)> + '_ {
        self.ordered.range((net, 0)..=(last_addr(net, len), 128)).copied().filter(move |&(_, l)| l > len)
    }

    /// All entries with their effective verdicts.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(u128, u8, u8)> {
        self.rules.iter().map(|(n, l, _)| (n, l, self.effective(n, l).expect("is an entry"))).collect()
    }

    /// The most specific entry of list `bit` covering `addr`.
    pub(crate) fn matching(&self, addr: u128, bit: u8) -> Option<(u128, u8)> {
        (0..=128u8)
            .rev()
            .filter(|&l| self.len_counts[usize::from(l)] > 0)
            .map(|l| (addr & mask(l), l))
            .find(|&(n, l)| self.lists(n, l) & bit != 0)
    }

    /// The reference verdict for `addr`.
    pub(crate) fn verdict(&self, addr: u128) -> u8 {
        entries::verdict(|bit| self.matching(addr, bit).is_some())
    }

    /// What the data plane computes: the first hit, longest length first.
    #[cfg(test)]
    pub(crate) fn dataplane_verdict(table: &HashMap<(u128, u8), u8>, lens: &[u8], addr: u128) -> u8 {
        lens.iter().find_map(|&l| table.get(&(addr & mask(l), l)).copied()).unwrap_or(crate::filter::layout::PASS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::{self, TableError};
    use crate::filter::layout::{LIST_BLOCK, PASS};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn ip(s: &str) -> u128 {
        u128::from(s.parse::<std::net::Ipv6Addr>().unwrap())
    }

    #[test]
    fn allow_beats_longer_block() {
        let mut r = V6Rules::default();
        r.insert(ip("2001:db8::"), 32, LIST_ALLOW);
        r.insert(ip("2001:db8:1::"), 48, LIST_BLOCK);
        r.insert(ip("2001:db9::1"), 128, LIST_BLOCK);
        assert_eq!(r.effective(ip("2001:db8:1::"), 48), Some(ALLOW));
        assert_eq!(r.verdict(ip("2001:db8:1::5")), ALLOW);
        assert_eq!(r.verdict(ip("2001:db9::1")), BLOCK);
        assert_eq!(r.verdict(ip("2001:db9::2")), PASS);
        assert_eq!(r.inside(ip("2001:db8::"), 32).collect::<Vec<_>>(), vec![(ip("2001:db8:1::"), 48)]);
        r.remove(ip("2001:db8::"), 32, LIST_ALLOW);
        assert_eq!(r.effective(ip("2001:db8:1::"), 48), Some(BLOCK));
        assert_eq!(r.lens_desc(), vec![128, 48]);
    }

    /// The stored effective verdicts, probed longest first, always agree
    /// with the reference, through random inserts and removals.
    #[test]
    fn differential_against_reference() {
        let mut rng = StdRng::seed_from_u64(6);
        let base = ip("2001:db8::");
        let mut r = V6Rules::default();
        let mut present = Vec::new();
        for step in 0..2000 {
            if !present.is_empty() && rng.random_bool(0.4) {
                let (n, l, b) = present.swap_remove(rng.random_range(0..present.len()));
                r.remove(n, l, b);
            } else {
                let l = [32u8, 40, 48, 56, 64, 64, 96, 127, 128, 128][rng.random_range(0..10)];
                let a = base | (u128::from(rng.random_range(0..16u8)) << 88) | u128::from(rng.random::<u16>() & 0xF);
                let b = if rng.random_bool(0.3) { LIST_ALLOW } else { LIST_BLOCK };
                let n = a & mask(l);
                if r.insert(n, l, b) {
                    present.push((n, l, b));
                }
            }
            if step % 50 == 0 {
                let table: HashMap<_, _> = r.entries().into_iter().map(|(n, l, v)| ((n, l), v)).collect();
                let lens = r.lens_desc();
                for _ in 0..500 {
                    let a =
                        base | (u128::from(rng.random_range(0..17u8)) << 88) | u128::from(rng.random::<u8>() & 0x1F);
                    assert_eq!(V6Rules::dataplane_verdict(&table, &lens, a), r.verdict(a));
                }
            }
        }
    }

    fn key(i: u32, len: u8) -> V6Key {
        V6Key { words: [0x2001_0db8u32.to_be(), i, 0, 0], len, kind: 0 }
    }

    #[test]
    fn set_get_clear_and_tombstones() {
        const PROBES: usize = XDPG_V6_MAX_PROBES as usize;
        const SLOTS: usize = XDPG_V6_BUCKET_SLOTS as usize;
        // Room beyond the longest chain, so the chain never wraps onto itself.
        let mut t = vec![xdpg_v6_bucket::default(); 4 * PROBES];
        let same_home: Vec<u32> =
            (0u32..).filter(|&h| mix32(h) as usize & (4 * PROBES - 1) == 5).take(SLOTS * PROBES + 1).collect();
        for (i, &h) in same_home[..SLOTS * PROBES].iter().enumerate() {
            table::set(&mut t, h, &key(i as u32, 48), 1).unwrap();
        }
        assert_eq!(table::set(&mut t, same_home[SLOTS * PROBES], &key(999, 48), 1), Err(TableError::Full));
        for (i, &h) in same_home[..SLOTS * PROBES].iter().enumerate() {
            assert_eq!(table::get(&t, h, &key(i as u32, 48)), 1);
            assert_eq!(table::get(&t, h, &key(i as u32, 47)), 0, "the length is part of the key");
        }
        table::clear(&mut t, same_home[0], &key(0, 48)).unwrap();
        assert_eq!(table::get(&t, same_home[0], &key(0, 48)), 0);
        // The tombstone is not reused by another key...
        assert_eq!(table::set(&mut t, same_home[SLOTS * PROBES], &key(999, 48), 1), Err(TableError::Full));
        // ...but is by the same one.
        table::set(&mut t, same_home[0], &key(0, 48), 2).unwrap();
        assert_eq!(table::get(&t, same_home[0], &key(0, 48)), 2);
    }

    #[test]
    fn the_zero_prefix_is_not_an_empty_slot() {
        let mut t = vec![xdpg_v6_bucket::default(); 64];
        let k = V6Key { words: [0; 4], len: 0, kind: 0 };
        assert_eq!(table::get(&t, 7, &k), 0);
        table::set(&mut t, 7, &k, 1).unwrap();
        assert_eq!(table::get(&t, 7, &k), 1);
    }

    /// A table sized for `capacity` entries (as `Capacity::new` sizes it)
    /// takes that many keys with random hashes, and the most dense /48
    /// marks they can need, whatever the hash seed: the probe limit is long
    /// enough for the clusters linear probing makes.
    #[test]
    fn a_table_takes_its_full_capacity() {
        for (capacity, seeds) in [(65_536usize, 12u32), (262_144, 4), (1 << 20, 1)] {
            let buckets = crate::filter::maps::Capacity::new(1, capacity).v6_buckets;
            for seed in 0..seeds {
                let mut t = vec![xdpg_v6_bucket::default(); buckets];
                let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
                let marks = capacity / (crate::filter::v6_tables::ANCHORED_MAX + 1);
                for i in 0..(capacity + marks) as u32 {
                    // xorshift32: a stand-in for the key hash.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let k = V6Key { words: [0x2001_0db8u32.to_be(), i, seed, 0], len: 64, kind: 0 };
                    assert!(table::set(&mut t, x, &k, 1).is_ok(), "capacity {capacity}, seed {seed}: full after {i}");
                }
            }
        }
    }

    /// The chained-bucket table's write order, over this layout: random
    /// keys of a few lengths crowded into a few home buckets, set and
    /// retired in random order.
    #[test]
    fn entry_buckets_keep_readers_safe_after_every_store() {
        for seed in 0..6u32 {
            let mut keys: Vec<(V6Key, u32)> = Vec::new();
            for i in 0..20_000u32 {
                let len = [0u8, 32, 48, 64, 128][i as usize % 5];
                let key = V6Key::new((u128::from(mix32(i ^ seed)) << 64) & mask(len), len, (i / 5) % 3);
                let hash = crate::filter::hash::v6_key_hash(u32::from(len), key.words, seed);
                if mix32(hash) & 31 < 2 && !keys.iter().any(|(k, _)| *k == key) && keys.len() < 24 {
                    keys.push((key, hash));
                }
            }
            let seen = crate::core::table::tests::check_write_order::<xdpg_v6_bucket>(
                32,
                &keys,
                &[u32::from(BLOCK), u32::from(ALLOW)],
                1500,
                u64::from(seed),
            );
            assert!(seen.extensions > 0 && seen.tombstones_reused > 0, "{seen:?}");
        }
    }
}
