//! The filter's table hashes (src/bpf/hash.h), mirrored so user space puts
//! every entry where the data plane looks for it. The verdict tests fail if
//! the two disagree.

use crate::core::hash::mix32;
use crate::core::layout::consts::XDPG_V6_BUCKET_SLOTS;

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

/// `xdpg_v6_anchor_hash`: the home of a /48's chain (its anchored entries and
/// its dense mark). `w0`, `w1` are the /48's first two words as the kernel
/// stores them, `w1` with its last 16 bits cleared.
pub(crate) fn v6_anchor_hash(w0: u32, w1: u32, seed: u32) -> u32 {
    mix32(mix32(seed ^ 0xA5C3_0000 ^ w0) ^ w1)
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
}
