//! The load balancer's settings, read and changed in place (each takes
//! effect for the next packet): IPIP sources, policies, timeouts, the
//! new-flow bound; and the connection table.

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::layout::xdpg_lb_config;
use super::maps::LbMaps;
use super::{EchoPolicy, ForwardingMode, FragmentPolicy, LoadBalancer, NewFlowLimit, OptionsPolicy};
use crate::error::LbError;

impl LoadBalancer {
    /// Sets the prefix IPIP outer sources of its family are drawn from.
    /// The host bits (up to the low 64 of an IPv6 prefix) come from the
    /// flow hash. Takes effect for the next packet.
    ///
    /// # Errors
    ///
    /// [`LbError::Unsupported`] for a prefix whose sources no backend's
    /// reply comes back to: a /0 (every address of the family), or one at
    /// an unspecified, loopback, multicast or broadcast address;
    /// [`LbError::Ipv4Mapped`] for an IPv4-mapped IPv6 prefix (give it as
    /// IPv4). Nothing is changed then.
    pub fn set_ipip_source(&self, prefix: IpNetwork) -> Result<(), LbError> {
        check_ipip_source(prefix)?;
        match prefix {
            IpNetwork::V4(p) => {
                let mask = if p.prefix() == 0 { u32::MAX } else { (1u64 << (32 - u32::from(p.prefix()))) as u32 - 1 };
                let base = u32::from(p.network());
                self.maps().ipip_v4_src().store(u32::from_ne_bytes(base.to_be_bytes()), Ordering::Release);
                self.maps().ipip_v4_mask().store(u32::from_ne_bytes(mask.to_be_bytes()), Ordering::Release);
            }
            IpNetwork::V6(p) => {
                let host_bits = 128 - u32::from(p.prefix());
                let mask: u64 = if host_bits >= 64 { u64::MAX } else { (1u64 << host_bits) - 1 };
                let base = u128::from(p.network()) & !u128::from(mask);
                let words: [u32; 4] = bytemuck::cast(base.to_be_bytes());
                for (i, w) in words.into_iter().enumerate() {
                    self.maps().ipip_v6_word(i).store(w, Ordering::Release);
                }
                self.maps()
                    .ipip_v6_word(4)
                    .store(u32::from_ne_bytes(((mask >> 32) as u32).to_be_bytes()), Ordering::Release);
                self.maps().ipip_v6_word(5).store(u32::from_ne_bytes((mask as u32).to_be_bytes()), Ordering::Release);
            }
        }
        Ok(())
    }

    /// The IPIP outer source prefixes in force (IPv4 first), as the data
    /// plane uses them: an IPv6 prefix shorter than /64 draws host bits
    /// from the low 64 only, so it shows as its first /64.
    pub fn ipip_sources(&self) -> Vec<IpNetwork> {
        ipip_sources_in(self.maps())
    }

    /// Forgets the IPIP outer source prefix of one family (IPv6 when
    /// `ipv6`), so [`LoadBalancer::ipip_sources`] no longer shows it.
    ///
    /// # Errors
    ///
    /// [`LbError::Unsupported`] while an IPIP VIP has a backend of that
    /// family (its packets need an outer source: remove the backend first);
    /// [`LbError::Pin`] when the pin directory cannot be locked.
    pub fn clear_ipip_source(&self, ipv6: bool) -> Result<(), LbError> {
        self.edit(|st, maps| {
            let users = st.vips.iter().find(|(_, vs)| {
                vs.config.mode == ForwardingMode::Ipip && vs.backends.keys().any(|b| b.ip.is_ipv6() == ipv6)
            });
            if let Some((vip, _)) = users {
                return Err(LbError::Unsupported {
                    what: format!(
                        "clearing the IPv{} IPIP source while IPIP VIP {vip} has such backends",
                        if ipv6 { 6 } else { 4 }
                    ),
                    fix: "remove those backends (or the VIP) first",
                });
            }
            if ipv6 {
                for i in 0..6 {
                    maps.ipip_v6_word(i).store(0, Ordering::Release);
                }
            } else {
                maps.ipip_v4_src().store(0, Ordering::Release);
                maps.ipip_v4_mask().store(0, Ordering::Release);
            }
            Ok(())
        })
    }

    /// `d` as a timeout of the data plane stores it (whole kernel ticks,
    /// rounded up): what [`LoadBalancer::udp_timeout`] would read back.
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) fn as_stored(&self, d: Duration) -> Duration {
        let tick = self.maps().ns_per_jiffy().load(Ordering::Acquire);
        Duration::from_nanos(super::maps::to_jiffies(d, tick).saturating_mul(tick))
    }

    fn set_policy_byte(&self, byte: usize, value: u8) {
        let word = self.maps().policies();
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let mut b = cur.to_ne_bytes();
            b[byte] = value;
            match word.compare_exchange(cur, u32::from_ne_bytes(b), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The ICMP echo policy in force.
    pub fn echo_policy(&self) -> EchoPolicy {
        EchoPolicy::from_code(self.maps().config().echo_policy)
    }

    /// Changes the ICMP echo policy; takes effect for the next packet.
    pub fn set_echo_policy(&self, policy: EchoPolicy) {
        self.set_policy_byte(0, policy.code());
    }

    /// The fragment policy in force.
    pub fn fragment_policy(&self) -> FragmentPolicy {
        FragmentPolicy::from_code(self.maps().config().frag_policy)
    }

    /// Changes the fragment policy.
    pub fn set_fragment_policy(&self, policy: FragmentPolicy) {
        self.set_policy_byte(1, policy.code());
    }

    /// The IPv4 options policy in force.
    pub fn options_policy(&self) -> OptionsPolicy {
        OptionsPolicy::from_code(self.maps().config().options_policy)
    }

    /// Changes the IPv4 options policy.
    pub fn set_options_policy(&self, policy: OptionsPolicy) {
        self.set_policy_byte(2, policy.code());
    }

    /// The new-flow bound in force.
    pub fn new_flow_limit(&self) -> NewFlowLimit {
        let c = self.maps().config();
        NewFlowLimit::from_gcra(c.new_flow_interval, c.new_flow_burst)
    }

    /// Changes the per-CPU new-flow bound.
    pub fn set_new_flow_limit(&self, limit: NewFlowLimit) {
        let (interval, burst) = limit.gcra();
        // Burst first: a reader never sees a bound tighter than either.
        self.maps().new_flow_burst().store(burst, Ordering::Release);
        self.maps().new_flow_interval().store(interval, Ordering::Release);
    }

    /// The UDP idle timeout in force.
    pub fn udp_timeout(&self) -> Duration {
        self.maps().duration(self.maps().udp_timeout())
    }

    /// Changes the UDP idle timeout. Zero: a UDP flow chooses its backend
    /// afresh at every kernel tick; at most about 49 days (`u32::MAX` ticks,
    /// what the program's tick arithmetic counts), longer is clamped.
    pub fn set_udp_timeout(&self, timeout: Duration) {
        let tick = self.maps().ns_per_jiffy().load(Ordering::Acquire);
        self.maps().udp_timeout().store(super::maps::udp_timeout_jiffies(timeout, tick), Ordering::Release);
    }

    /// How long each CPU reuses a backend's next hop from the FIB.
    pub fn next_hop_cache(&self) -> Duration {
        self.maps().duration(self.maps().nexthop_ttl())
    }

    /// Changes how long each CPU reuses a backend's next hop (zero: a FIB
    /// lookup for every packet). Cached hops already made live out their time.
    pub fn set_next_hop_cache(&self, ttl: Duration) {
        self.maps().set_duration(self.maps().nexthop_ttl(), ttl);
    }

    /// The flow hash seed.
    pub fn hash_seed(&self) -> u32 {
        self.maps().hash_seed().load(Ordering::Acquire)
    }

    /// Empties the connection and NAT tables: every flow chooses afresh
    /// (by Maglev) from its next packet. NAT replies of live flows are no
    /// longer translated, so NAT connections break.
    ///
    /// # Errors
    ///
    /// None today (entries that vanish meanwhile are skipped); kept for map
    /// failures to come.
    pub fn flush_connections(&self) -> Result<usize, LbError> {
        let maps = self.maps();
        let flushed = maps.ct4().clear() + maps.conns6.clear();
        maps.nat4.clear();
        maps.nat6.clear();
        Ok(flushed)
    }

    /// Number of entries in the connection table (walks it: diagnostics only).
    pub fn connection_count(&self) -> usize {
        self.maps().ct4().count() + self.maps().conns6.keys().count()
    }
}

/// Refuses an IPIP outer source prefix no backend's packets come back from
/// the LB's own: the whole family (/0), or a network at an address no
/// packet is routed back to (`types::unusable`: unspecified, loopback,
/// multicast, broadcast), or IPv4-mapped IPv6 (the data plane sends IPv6
/// outer headers from it, which no IPv4 host answers). The unspecified
/// one also reads back as "no prefix set" (`ipip_sources`), and so would
/// let `clear_ipip_source`'s check be bypassed. Also what a configuration
/// file is checked with.
pub(crate) fn check_ipip_source(prefix: IpNetwork) -> Result<(), LbError> {
    const FIX: &str = "give a prefix of addresses the backends route back to the LB, e.g. a /24 (IPv4) or /64 (IPv6)";
    if prefix.prefix() == 0 {
        return Err(LbError::Unsupported {
            what: format!("IPIP source prefix {prefix} (every address of the family)"),
            fix: FIX,
        });
    }
    if let Some(why) = super::types::unusable(prefix.network()) {
        return Err(LbError::Unsupported { what: format!("IPIP source prefix {prefix} at {why}"), fix: FIX });
    }
    if let Some(v4) = super::types::ipv4_mapped(prefix.network()) {
        let bits = prefix.prefix().saturating_sub(96).max(1);
        return Err(LbError::Ipv4Mapped {
            what: format!("IPIP source prefix {prefix}"),
            as_ipv4: format!("{v4}/{bits}"),
        });
    }
    Ok(())
}

/// The IPv4 IPIP outer source's base and host-bits mask in `cfg`, as the
/// data plane reads them.
pub(super) fn ipip_v4_base_mask(cfg: &xdpg_lb_config) -> (Ipv4Addr, u32) {
    (Ipv4Addr::from(cfg.ipip_v4_src.to_ne_bytes()), u32::from_be_bytes(cfg.ipip_v4_mask.to_ne_bytes()))
}

/// The IPv6 IPIP outer source's base and the mask of the host bits it
/// draws from the low 64 in `cfg`.
pub(super) fn ipip_v6_base_mask(cfg: &xdpg_lb_config) -> (Ipv6Addr, u64) {
    let mut bytes = [0u8; 16];
    for (i, w) in cfg.ipip_v6_src.iter().enumerate() {
        bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let hi = u32::from_be_bytes(cfg.ipip_v6_mask[0].to_ne_bytes());
    let lo = u32::from_be_bytes(cfg.ipip_v6_mask[1].to_ne_bytes());
    (Ipv6Addr::from(bytes), (u64::from(hi) << 32) | u64::from(lo))
}

/// [`LoadBalancer::ipip_sources`] of the LB whose maps are `maps`.
pub(super) fn ipip_sources_in(maps: &LbMaps) -> Vec<IpNetwork> {
    let cfg = maps.config();
    let mut out = Vec::new();
    if cfg.ipip_v4_src != 0 || cfg.ipip_v4_mask != 0 {
        let (base, mask) = ipip_v4_base_mask(&cfg);
        out.extend(Ipv4Network::new(base, mask.leading_zeros() as u8).ok().map(IpNetwork::V4));
    }
    if cfg.ipip_v6_src.iter().chain(&cfg.ipip_v6_mask).any(|w| *w != 0) {
        let (base, mask) = ipip_v6_base_mask(&cfg);
        out.extend(Ipv6Network::new(base, 64 + mask.leading_zeros() as u8).ok().map(IpNetwork::V6));
    }
    out
}

/// The IPIP tunnel prefix per family (IPv4, IPv6), if set.
pub(super) fn ipip_tunnels(maps: &LbMaps) -> [Option<IpNetwork>; 2] {
    let sources = ipip_sources_in(maps);
    [false, true].map(|ipv6| sources.iter().find(|n| n.is_ipv6() == ipv6).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipip_sources_no_reply_comes_back_to_are_refused() {
        for bad in ["0.0.0.0/0", "::/0", "0.0.0.0/32", "224.0.0.0/24", "127.0.0.1/32", "ff02::/64", "::/64", "::1/128"]
        {
            let err = check_ipip_source(bad.parse().unwrap()).expect_err(bad);
            assert!(matches!(err, LbError::Unsupported { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
        let err = check_ipip_source("::ffff:198.51.100.0/120".parse().unwrap()).unwrap_err();
        assert!(matches!(&err, LbError::Ipv4Mapped { as_ipv4, .. } if as_ipv4 == "198.51.100.0/24"), "{err}");
        for good in ["198.51.100.0/24", "203.0.113.7/32", "2001:db8:1::/64", "2001:db8::/48"] {
            check_ipip_source(good.parse().unwrap()).expect(good);
        }
    }
}
