//! The filter's table hashes (src/bpf/hash.h), mirrored so user space puts
//! every entry where the data plane looks for it. The verdict tests fail if
//! the two disagree.

use crate::core::hash::mix32;
use crate::core::layout::consts::{XDPG_V6_ANCHOR_MULSHIFT, XDPG_V6_ANCHOR_MURMUR, XDPG_V6_BUCKET_SLOTS};

/// What `xdpg_v4_bucket_index` mixes into a host's home bucket
/// (`mix32(hash) & mask`, as for every chained-bucket table).
pub(crate) fn v4_host_hash(addr: u32, seed: u32) -> u32 {
    addr ^ seed
}

/// `xdpg_v6_key_hash`: `words` is the masked address as the kernel stores
/// it (network byte order, read as native-endian words). Its low bits pick
/// the Bloom bit; `mix32` of it picks the bucket.
pub(crate) fn v6_key_hash(len: u32, words: [u32; 4], seed: u32) -> u32 {
    let h = mix32(seed ^ len ^ words[0]);
    let h = mix32(h ^ words[1]);
    mix32(h ^ words[2] ^ words[3].wrapping_mul(0x9E37_79B1))
}

/// How a v6 table files the /48s' chains: the view's `anchor_hash`
/// (`XDPG_V6_ANCHOR_*`). The data plane reads either; this build writes
/// [`AnchorHash::MulShift`] (tables of layouts 5–7 are rebuilt in it by the
/// migration to layout 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum AnchorHash {
    /// `xdpg_v6_anchor_hash`: two `mix32`, then `mix32` again for the
    /// bucket (layouts 5–7; written by the test kit's rehearsal of them).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Murmur = XDPG_V6_ANCHOR_MURMUR as u8,
    /// `xdpg_v6_anchor_mixed`: one multiply from the address to the bucket.
    MulShift = XDPG_V6_ANCHOR_MULSHIFT as u8,
}

/// The hashes a v6 table's chains are filed under: the filter's seed, and
/// how the /48s' chains are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct V6Hashes {
    pub(crate) seed: u32,
    pub(crate) anchor: AnchorHash,
}

impl V6Hashes {
    /// This build's hashes under `seed`.
    #[cfg(test)]
    pub(crate) fn new(seed: u32) -> V6Hashes {
        V6Hashes { seed, anchor: AnchorHash::MulShift }
    }

    /// The chain hash of a /48 (`w0`, `w1` its first two words as the
    /// kernel stores them, `w1` with its last 16 bits cleared): `mix32` of
    /// it is the chain's home bucket and slot, its low bits its Bloom bit.
    pub(crate) fn anchor(self, w0: u32, w1: u32) -> u32 {
        match self.anchor {
            AnchorHash::Murmur => mix32(mix32(self.seed ^ 0xA5C3_0000 ^ w0) ^ w1),
            AnchorHash::MulShift => unmix32(v6_anchor_mixed(w0, w1, v6_anchor_mult(self.seed))),
        }
    }

    /// The chain hash of a masked key of length `len` ([`v6_key_hash`]).
    pub(crate) fn key(self, len: u32, words: [u32; 4]) -> u32 {
        v6_key_hash(len, words, self.seed)
    }
}

/// `xdpg_v6_anchor_mult`: the odd multiplier of the /48 chains' hash.
pub(crate) fn v6_anchor_mult(seed: u32) -> u64 {
    ((u64::from(seed) << 32 | u64::from(seed)) ^ 0xD6E8_FEB8_6659_FD93).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// `xdpg_v6_anchor_mixed`: a /48's chain as `mix32` of its chain hash
/// (bucket in the low bits, home slot in bits 22–31).
pub(crate) fn v6_anchor_mixed(w0: u32, w1: u32, mult: u64) -> u32 {
    ((u64::from(w1) << 32 | u64::from(w0)).wrapping_mul(mult) >> 32) as u32
}

/// `xdpg_unmix32`: `mix32` undone.
pub(crate) fn unmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7ED1_B41D);
    h ^= (h >> 13) ^ (h >> 26);
    h = h.wrapping_mul(0xA5CB_9243);
    h ^= h >> 16;
    h
}

/// `XDPG_HOME_SLOT` of a v6 bucket's slots: the slot of its home bucket a
/// v6 entry goes in when that slot is free (`mixed` is `mix32` of its chain
/// hash; bits 22–31, above any bucket index, scaled to the bucket's slots).
pub(crate) fn v6_home_slot(mixed: u32) -> usize {
    (((mixed >> 22) * XDPG_V6_BUCKET_SLOTS) >> 10) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `XDPG_HOME_SLOT`'s compile-time checks pin in
    /// src/bpf/hash.h (three slots): each slot's first and last `mixed`.
    #[test]
    fn home_slots_match_the_data_plane() {
        let edges = [(0, 0), (0x557F_FFFF, 0), (0x5580_0000, 1), (0xAABF_FFFF, 1), (0xAAC0_0000, 2), (u32::MAX, 2)];
        for (mixed, slot) in edges {
            assert_eq!(v6_home_slot(mixed), slot, "{mixed:#x}");
        }
    }

    #[test]
    fn unmix32_undoes_mix32() {
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            assert_eq!(mix32(unmix32(x)), x);
            assert_eq!(unmix32(mix32(x)), x);
            x = x.wrapping_mul(0x9E37_79B1).wrapping_add(0x7F4A_7C15);
        }
    }

    /// The /48s of one /32 (whose keys differ in 16 bits only) get a
    /// bucket each in a table of 2^16 or more buckets, whatever the seed:
    /// the multiplier is odd, so w1 * mult is a bijection modulo any power
    /// of two.
    #[test]
    fn the_48s_of_one_32_do_not_share_a_bucket() {
        for seed in [0, 1, 0xDEAD_BEEF, u32::MAX] {
            let mult = v6_anchor_mult(seed);
            let mut seen = vec![false; 1 << 16];
            for w1 in 0..=0xFFFFu32 {
                let b = (v6_anchor_mixed(0xB80D_0120, w1, mult) & 0xFFFF) as usize;
                assert!(!seen[b], "seed {seed:#x}, w1 {w1:#x}");
                seen[b] = true;
            }
        }
    }

    /// Random /48s spread over the buckets as random keys do: at the 1M
    /// capacity's load (2^20 /48s over 2^19 buckets, two a bucket) the
    /// fullest bucket holds about what a Poisson(2) draw gives, and the
    /// home slots (bits 22-31) are used evenly.
    #[test]
    fn random_48s_spread_evenly() {
        let mult = v6_anchor_mult(0x5EED);
        let mut load = vec![0u8; 1 << 19];
        let mut slots = [0u32; 3];
        let mut x = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mixed = v6_anchor_mixed(x as u32, (x >> 32) as u32 & 0xFFFF, mult);
            load[(mixed & ((1 << 19) - 1)) as usize] += 1;
            slots[v6_home_slot(mixed)] += 1;
        }
        let max = *load.iter().max().unwrap();
        assert!(max <= 14, "fullest bucket {max}");
        let empty = load.iter().filter(|&&l| l == 0).count() as f64 / load.len() as f64;
        assert!((empty - (-2f64).exp()).abs() < 0.01, "empty share {empty}");
        for s in slots {
            assert!((f64::from(s) / f64::from(1u32 << 20) - 1.0 / 3.0).abs() < 0.01, "{slots:?}");
        }
    }
}
