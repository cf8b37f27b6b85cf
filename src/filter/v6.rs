//! IPv6 lists: the rule model, and the per-length hash the data plane reads.
//!
//! Every entry is stored once, keyed by (length, network), with its
//! *effective* verdict: allow when the entry is allowlisted or an allowlist
//! entry covers it, block otherwise. The data plane probes the lengths in
//! use, longest first; the first hit is the most specific entry, and its
//! stored verdict already accounts for the allowlist winning. Real lists use
//! few lengths (/128, /64, /56, /48, /32), so a lookup is a few probes.

use std::collections::BTreeSet;
#[cfg(test)]
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use crate::filter::v4::{ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK, PASS};

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

/// The v6 entries of both lists.
#[derive(Debug, Clone)]
pub(crate) struct V6Rules {
    rules: FxHashMap<(u128, u8), u8>,
    /// The same entries in address order, for "entries inside this prefix".
    ordered: BTreeSet<(u128, u8)>,
    /// Entries per length (any list), and allowlist entries per length.
    len_counts: [u32; 129],
    allow_len_counts: [u32; 129],
}

impl Default for V6Rules {
    fn default() -> Self {
        Self { rules: FxHashMap::default(), ordered: BTreeSet::new(), len_counts: [0; 129], allow_len_counts: [0; 129] }
    }
}

impl V6Rules {
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    pub(crate) fn lists(&self, net: u128, len: u8) -> u8 {
        self.rules.get(&(net, len)).copied().unwrap_or(0)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, u8, u8)> + '_ {
        self.rules.iter().map(|(&(n, l), &b)| (n, l, b))
    }

    pub(crate) fn insert(&mut self, net: u128, len: u8, bit: u8) -> bool {
        let bits = self.rules.entry((net, len)).or_insert(0);
        if *bits & bit != 0 {
            return false;
        }
        if *bits == 0 {
            self.ordered.insert((net, len));
            self.len_counts[usize::from(len)] += 1;
        }
        *bits |= bit;
        if bit == LIST_ALLOW {
            self.allow_len_counts[usize::from(len)] += 1;
        }
        true
    }

    pub(crate) fn remove(&mut self, net: u128, len: u8, bit: u8) -> bool {
        let Some(bits) = self.rules.get_mut(&(net, len)) else {
            return false;
        };
        if *bits & bit == 0 {
            return false;
        }
        *bits &= !bit;
        if *bits == 0 {
            self.rules.remove(&(net, len));
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
        (0..=len).any(|l| {
            self.allow_len_counts[usize::from(l)] > 0 && self.lists(net & mask(l), l) & LIST_ALLOW != 0
        })
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

    /// Entries strictly inside `net/len` (longer prefixes within it).
    pub(crate) fn inside(&self, net: u128, len: u8) -> impl Iterator<Item = (u128, u8)> + '_ {
        self.ordered
            .range((net, 0)..=(last_addr(net, len), 128))
            .copied()
            .filter(move |&(_, l)| l > len)
    }

    /// All entries with their effective verdicts.
    pub(crate) fn entries(&self) -> Vec<(u128, u8, u8)> {
        self.rules
            .keys()
            .map(|&(n, l)| (n, l, self.effective(n, l).expect("is an entry")))
            .collect()
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
        if self.matching(addr, LIST_ALLOW).is_some() {
            ALLOW
        } else if self.matching(addr, LIST_BLOCK).is_some() {
            BLOCK
        } else {
            PASS
        }
    }

    /// What the data plane computes: the first hit, longest length first.
    #[cfg(test)]
    pub(crate) fn dataplane_verdict(table: &HashMap<(u128, u8), u8>, lens: &[u8], addr: u128) -> u8 {
        lens.iter()
            .find_map(|&l| table.get(&(addr & mask(l), l)).copied())
            .unwrap_or(PASS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    let a = base | (u128::from(rng.random_range(0..17u8)) << 88) | u128::from(rng.random::<u8>() & 0x1F);
                    assert_eq!(V6Rules::dataplane_verdict(&table, &lens, a), r.verdict(a));
                }
            }
        }
    }
}
