//! The filter's table hashes (src/bpf/hash.h), mirrored so user space puts
//! every entry where the data plane looks for it. The verdict tests fail if
//! the two disagree.

use crate::core::hash::mix32;

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
