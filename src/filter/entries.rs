//! What the IPv4 and IPv6 models share: the entries of both lists by
//! (network, prefix length) with their list bits, and how list matches
//! make a verdict.

use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::filter::layout::{ALLOW, BLOCK, LIST_ALLOW, LIST_BLOCK, PASS};

/// (network, prefix length) → list bits (`LIST_*`), for one family.
#[derive(Debug, Clone)]
pub(crate) struct Entries<N> {
    bits: FxHashMap<(N, u8), u8>,
}

impl<N> Default for Entries<N> {
    fn default() -> Self {
        Entries { bits: FxHashMap::default() }
    }
}

impl<N: Copy + Eq + Hash> Entries<N> {
    pub(crate) fn len(&self) -> usize {
        self.bits.len()
    }

    /// The list bits of `net/len` (0: not an entry).
    pub(crate) fn lists(&self, net: N, len: u8) -> u8 {
        self.bits.get(&(net, len)).copied().unwrap_or(0)
    }

    /// Every entry: (network, length, list bits).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (N, u8, u8)> + '_ {
        self.bits.iter().map(|(&(n, l), &b)| (n, l, b))
    }

    /// Adds `bit` to `net/len`. Returns its bits before, or `None` when it
    /// already had the bit.
    pub(crate) fn add(&mut self, net: N, len: u8, bit: u8) -> Option<u8> {
        let bits = self.bits.entry((net, len)).or_insert(0);
        let before = *bits;
        (before & bit == 0).then(|| {
            *bits |= bit;
            before
        })
    }

    /// Removes `bit` from `net/len`. Returns its bits after (0: it is no
    /// longer an entry), or `None` when it did not have the bit.
    pub(crate) fn remove(&mut self, net: N, len: u8, bit: u8) -> Option<u8> {
        let bits = self.bits.get_mut(&(net, len))?;
        if *bits & bit == 0 {
            return None;
        }
        *bits &= !bit;
        let now = *bits;
        if now == 0 {
            self.bits.remove(&(net, len));
        }
        Some(now)
    }
}

/// The verdict, given whether the allowlist (`matches(LIST_ALLOW)`) and the
/// blocklist match: the allowlist wins, whatever the prefix lengths.
pub(crate) fn verdict(matches: impl Fn(u8) -> bool) -> u8 {
    if matches(LIST_ALLOW) {
        ALLOW
    } else if matches(LIST_BLOCK) {
        BLOCK
    } else {
        PASS
    }
}
