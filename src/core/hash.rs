//! The hash every program's data plane builds on (`xdpg_mix32` in
//! src/bpf/hash.h), mirrored so user space can predict it. The verdict tests
//! fail if the two disagree.

/// `xdpg_mix32`: a murmur3-style 32-bit finaliser.
pub(crate) fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
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
