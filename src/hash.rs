//! The hashes the eBPF programs compute (src/bpf/hash.h), mirrored so user
//! space can predict them. The verdict tests fail if the two disagree.

/// `xdpg_mix32`: a murmur3-style 32-bit finaliser.
pub(crate) fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
}

/// `xdpg_v4_bucket_index`.
pub(crate) fn v4_bucket_index(addr: u32, seed: u32, mask: u32) -> u32 {
    mix32(addr ^ seed) & mask
}

/// `xdpg_v6_key_hash`: `words` is the masked address as the kernel stores
/// it (network byte order, read as native-endian words). Its low bits pick
/// the Bloom bit; `mix32` of it picks the bucket.
pub(crate) fn v6_key_hash(len: u32, words: [u32; 4], seed: u32) -> u32 {
    let h = mix32(seed ^ len ^ words[0]);
    let h = mix32(h ^ words[1]);
    mix32(h ^ words[2] ^ words[3].wrapping_mul(0x9E37_79B1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix32_known_values() {
        // murmur3's fmix32 reference values.
        assert_eq!(mix32(0), 0);
        assert_eq!(mix32(1), 0x514E_28B7);
        assert_ne!(mix32(2), mix32(3));
    }
}
