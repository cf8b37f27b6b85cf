//! The data plane's flow hash (`src/bpf/lb_hash.h`) and the IPIP outer
//! source derived from it, mirrored bit for bit so user space predicts the
//! kernel's choices. The verdict tests prove the two agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::core::hash::mix32;
use crate::core::layout::consts::{XDPG_LB_FAMILY_V4, XDPG_LB_FAMILY_V6};

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const K3: u64 = 0x1656_67B1_9E37_79F9;
const K4: u64 = 0xD6E8_FEB8_6659_FD93;
const K5: u64 = 0xFF51_AFD7_ED55_8CCD;

/// `xdpg_lb_lane`: two words as one 64-bit lane.
fn lane(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// An address as the four words the kernel loads from the packet
/// (network-order bytes read natively; IPv4 in word 0).
pub(crate) fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => bytemuck::cast(a.octets()),
    }
}

/// A port as the kernel loads it (network-order bytes read natively).
pub(crate) fn port_word(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub(crate) fn family_code(ip: IpAddr) -> u8 {
    (if ip.is_ipv4() { XDPG_LB_FAMILY_V4 } else { XDPG_LB_FAMILY_V6 }) as u8
}

/// The hash input: what the kernel's `struct xdpg_lb_flow` holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 0 for fragments.
    pub sport: u16,
    /// 0 for fragments.
    pub dport: u16,
    pub proto: u8,
}

/// `xdpg_lb_flow_hash`.
pub(crate) fn flow_hash(flow: &FlowKey, seed: u32, src_only: bool) -> u32 {
    let s = addr_words(flow.src);
    let mut h = (lane(s[0], s[1]) ^ u64::from(seed)).wrapping_mul(K1).wrapping_add(lane(s[2], s[3]).wrapping_mul(K2));
    if !src_only {
        let d = addr_words(flow.dst);
        let ports = u32::from(port_word(flow.sport)) | (u32::from(port_word(flow.dport)) << 16);
        let kind = u32::from(flow.proto) | (u32::from(family_code(flow.src)) << 8);
        h = h
            .wrapping_add(lane(d[0], d[1]).wrapping_mul(K3))
            .wrapping_add(lane(d[2], d[3]).wrapping_mul(K4))
            .wrapping_add(lane(ports, kind).wrapping_mul(K5));
    }
    mix32(((h >> 32) as u32) ^ (h as u32))
}

/// The IPIP outer IPv4 source for a flow hash: the prefix with its host
/// bits taken from the hash.
pub(crate) fn ipip_source_v4(prefix: Ipv4Addr, host_mask: u32, hash: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(prefix) | (hash & host_mask))
}

/// The IPIP outer IPv6 source: words 2 and 3 (as numbers) take host bits
/// from `mix32(hash)` and `hash`.
pub(crate) fn ipip_source_v6(prefix: Ipv6Addr, host_mask: u64, hash: u32) -> Ipv6Addr {
    let p = u128::from(prefix);
    let low = (u64::from(mix32(hash)) << 32) | u64::from(hash);
    Ipv6Addr::from(p | u128::from(low & host_mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_spreads_consecutive_ports() {
        // Consecutive source ports (what clients use) must not cluster
        // modulo a prime table size.
        let base = FlowKey {
            src: "192.0.2.1".parse().unwrap(),
            dst: "203.0.113.10".parse().unwrap(),
            sport: 0,
            dport: 80,
            proto: 6,
        };
        let mut buckets = [0u32; 7];
        for p in 0..7000u16 {
            let h = flow_hash(&FlowKey { sport: 30000 + p, ..base }, 0, false);
            buckets[(h % 7) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (900..1100).contains(&b)), "{buckets:?}");
    }

    #[test]
    fn source_only_ignores_ports_and_destination() {
        let a = FlowKey {
            src: "192.0.2.1".parse().unwrap(),
            dst: "203.0.113.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        let b = FlowKey { sport: 40001, dport: 443, dst: "203.0.113.11".parse().unwrap(), ..a };
        assert_eq!(flow_hash(&a, 7, true), flow_hash(&b, 7, true));
        assert_ne!(flow_hash(&a, 7, false), flow_hash(&b, 7, false));
        assert_ne!(flow_hash(&a, 7, false), flow_hash(&a, 8, false));
    }

    #[test]
    fn outer_sources_stay_in_prefix() {
        for h in [0u32, 1, 0xFFFF_FFFF, 0x1234_5678] {
            let s = ipip_source_v4("198.51.100.0".parse().unwrap(), 0xFF, h);
            assert_eq!(s.octets()[..3], [198, 51, 100]);
            let s6 = ipip_source_v6("2001:db8:ff::".parse().unwrap(), u64::MAX, h);
            assert_eq!(s6.segments()[..3], [0x2001, 0xdb8, 0xff]);
        }
    }
}
