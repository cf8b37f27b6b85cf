//! Digests of a load balancer's effective state: per VIP, everything that
//! decides which backend a new flow gets, and one over all VIPs. Two LB
//! nodes with equal digests send every new flow to the same backend, so
//! nodes behind ECMP can be compared without dumping their tables
//! ([`LoadBalancer::digest`]; `xdpguard-lb status`, `vip list`; `xdpguard
//! apply` prints them and checks them against the configuration).
//!
//! What a VIP's digest covers (version 1, SHA-256, every number big-endian):
//! the tag `xdpguard-lb-vip-v1`; the VIP (protocol number, port or 0 for
//! all ports, family and address); its configuration (mode, hash input,
//! conntrack, table size); the LB's hash seed; its backends in canonical
//! order (family, address, port; as [`Backend`](crate::Backend)s list them)
//! with their weights; and its Maglev table as built, each slot as the
//! position of its backend in that order (so the kernel's backend slot
//! numbers, which differ between nodes, do not count). The overall digest
//! covers the tag `xdpguard-lb-v1`, the hash seed and every VIP with its
//! digest, in VIP order. Not covered: policies, timeouts, capacities,
//! interfaces and counters, which do not choose backends.
//!
//! Cost: one SHA-256 pass over the table, 4 bytes a slot (about 0.3 ms for
//! a 65537-slot table here); the tables themselves are the ones the library
//! already keeps (built once per backend change).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::types::{BackendAddr, HashInput, Vip, VipConfig};
use super::{maglev, LoadBalancer};
use crate::core::layout::consts::XDPG_LB_NO_BACKEND;
use crate::error::{LbError, ParseError};

/// A SHA-256 digest of load-balancer state ([`LoadBalancer::digest`]),
/// shown and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for people (as `git` shortens commits).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    /// Parses 64 hex digits (what `Display` shows).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseError::Invalid { what: "digest", input: s.to_owned(), example: "64 hex digits" };
        let t = s.trim();
        if t.len() != 64 || !t.is_ascii() {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Digest(out))
    }
}

/// A load balancer's digests: one per VIP, and one over all of them (see
/// [`LoadBalancer::digest`] for what they cover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbDigest {
    /// Over every VIP's digest and the hash seed.
    pub overall: Digest,
    /// Each VIP's, in VIP order.
    pub vips: Vec<(Vip, Digest)>,
}

impl LbDigest {
    /// One VIP's digest.
    pub fn vip(&self, vip: &Vip) -> Option<Digest> {
        self.vips.iter().find(|(v, _)| v == vip).map(|(_, d)| *d)
    }
}

fn put_addr(h: &mut Sha256, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            h.update([4]);
            h.update(a.octets());
        }
        IpAddr::V6(a) => {
            h.update([6]);
            h.update(a.octets());
        }
    }
}

fn put_vip(h: &mut Sha256, vip: &Vip) {
    h.update([vip.protocol.number()]);
    h.update(vip.port.unwrap_or(0).to_be_bytes());
    put_addr(h, vip.addr);
}

/// A VIP's digest from its parts: `backends` in canonical order with their
/// weights, and `table` holding positions in that list (or
/// [`XDPG_LB_NO_BACKEND`] for an empty slot); `None` when no backend has a
/// weight.
fn vip_digest(
    vip: &Vip,
    config: &VipConfig,
    seed: u32,
    backends: &[(BackendAddr, u32)],
    table: Option<&[u32]>,
) -> Digest {
    let mut h = Sha256::new();
    h.update(b"xdpguard-lb-vip-v1");
    put_vip(&mut h, vip);
    h.update([config.mode.code(), u8::from(config.hash == HashInput::SourceAddress), u8::from(config.conntrack)]);
    h.update(config.table_size.to_be_bytes());
    h.update(seed.to_be_bytes());
    h.update((backends.len() as u32).to_be_bytes());
    for (addr, weight) in backends {
        h.update(addr.identity());
        h.update(weight.to_be_bytes());
    }
    match table {
        None => h.update([0]),
        Some(t) => {
            h.update([1]);
            // One update per slot costs ~3x more than one over the bytes.
            let bytes: Vec<u8> = t.iter().flat_map(|p| p.to_be_bytes()).collect();
            h.update(&bytes);
        }
    }
    Digest(h.finalize().into())
}

fn overall(seed: u32, vips: &[(Vip, Digest)]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"xdpguard-lb-v1");
    h.update(seed.to_be_bytes());
    h.update((vips.len() as u32).to_be_bytes());
    for (vip, d) in vips {
        put_vip(&mut h, vip);
        h.update(d.0);
    }
    Digest(h.finalize().into())
}

/// The digests an LB with this hash seed and these VIPs (each with its
/// backends and weights, any order) would show: what a configuration
/// promises, computed without an LB. The same tables as the library builds.
#[cfg_attr(not(feature = "config"), allow(dead_code))]
pub(crate) fn expected<'a>(
    seed: u32,
    vips: impl IntoIterator<Item = (Vip, VipConfig, &'a [(BackendAddr, u32)])>,
) -> LbDigest {
    let mut out: Vec<(Vip, Digest)> = vips
        .into_iter()
        .map(|(vip, config, backends)| {
            let mut sorted = backends.to_vec();
            sorted.sort();
            let entries: Vec<maglev::Entry> = sorted
                .iter()
                .enumerate()
                .map(|(i, (addr, weight))| maglev::Entry { addr: *addr, weight: *weight, id: i as u32 })
                .collect();
            let table = maglev::build(config.table_size, &entries);
            (vip, vip_digest(&vip, &config, seed, &sorted, table.as_deref()))
        })
        .collect();
    out.sort_by_key(|(vip, _)| *vip);
    LbDigest { overall: overall(seed, &out), vips: out }
}

impl LoadBalancer {
    /// Digests of what decides where new flows go: per VIP, its
    /// configuration, the hash seed, its backends and weights and its
    /// Maglev table; and one over all VIPs. LB nodes with equal digests
    /// choose the same backend for every new flow (whatever order their
    /// backends were added in), so comparing digests is how to check that
    /// the nodes behind one ECMP route agree. What each covers exactly,
    /// byte by byte, is a cross-node contract (version 1): see the `digest`
    /// module's notes in the source, or the README's Operations section.
    /// Policies, timeouts, capacities and interfaces are not covered.
    ///
    /// Read from the configuration in the maps (a consistent snapshot
    /// under the pin directory's lock), so it sees every process's edits.
    ///
    /// # Errors
    ///
    /// [`LbError::Pin`] when the pin directory cannot be locked;
    /// [`LbError::Map`] when another process's edit cannot be read back.
    pub fn digest(&self) -> Result<LbDigest, LbError> {
        let seed = self.hash_seed();
        let vips = self.read(|st| {
            st.vips
                .iter_mut()
                .map(|(vip, vs)| {
                    let backends: Vec<(BackendAddr, u32)> = vs.backends.iter().map(|(a, s)| (*a, s.weight)).collect();
                    let position: HashMap<u32, u32> =
                        vs.backends.values().enumerate().map(|(i, s)| (s.id, i as u32)).collect();
                    let table = vs.table().map(|t| {
                        t.iter().map(|id| position.get(id).copied().unwrap_or(XDPG_LB_NO_BACKEND)).collect::<Vec<_>>()
                    });
                    (*vip, vip_digest(vip, &vs.config, seed, &backends, table.as_deref()))
                })
                .collect::<Vec<_>>()
        })?;
        Ok(LbDigest { overall: overall(seed, &vips), vips })
    }

    /// One VIP's digest (see [`LoadBalancer::digest`]).
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; as [`LoadBalancer::digest`].
    pub fn vip_digest(&self, vip: &Vip) -> Result<Digest, LbError> {
        self.digest()?.vip(vip).ok_or(LbError::VipNotFound { vip: *vip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ForwardingMode;

    fn b(s: &str, w: u32) -> (BackendAddr, u32) {
        (s.parse().unwrap(), w)
    }

    #[test]
    fn digests_show_parse_and_depend_on_what_chooses_backends() {
        let vip = Vip::tcp("203.0.113.10:80".parse().unwrap());
        let cfg = VipConfig::new(ForwardingMode::Ipip).table_size(1021);
        let set = [b("198.51.100.11", 1), b("198.51.100.12", 2), b("2001:db8:b::11", 1)];
        let base = expected(7, [(vip, cfg, &set[..])]);
        let shown = base.overall.to_string();
        assert_eq!(shown.len(), 64);
        assert_eq!(shown.parse::<Digest>().unwrap(), base.overall);
        assert_eq!(base.overall.short(), shown[..12]);
        assert!("xyz".parse::<Digest>().is_err() && shown[..63].parse::<Digest>().is_err());

        // Order of backends does not matter; everything that moves flows does.
        let reversed: Vec<_> = set.iter().rev().copied().collect();
        assert_eq!(expected(7, [(vip, cfg, &reversed[..])]), base);
        let weights = [b("198.51.100.11", 1), b("198.51.100.12", 3), b("2001:db8:b::11", 1)];
        let variants = [
            expected(8, [(vip, cfg, &set[..])]),
            expected(7, [(vip, cfg.table_size(1031), &set[..])]),
            expected(7, [(vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(1021), &set[..])]),
            expected(7, [(vip, cfg.hash(HashInput::SourceAddress), &set[..])]),
            expected(7, [(vip, cfg, &weights[..])]),
            expected(7, [(vip, cfg, &set[..2])]),
            expected(7, [(Vip::udp("203.0.113.10:80".parse().unwrap()), cfg, &set[..])]),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v.overall, base.overall, "variant {i}");
            assert_ne!(v.vips[0].1, base.vips[0].1, "variant {i}");
        }
        // Drained backends take no slots, but the set still counts.
        let drained = [b("198.51.100.11", 0)];
        let none = expected(7, [(vip, cfg, &drained[..])]);
        assert_ne!(none.vips[0].1, expected(7, [(vip, cfg, &[][..])]).vips[0].1);
        assert_eq!(expected(7, []).vips, vec![]);
        assert_ne!(expected(7, []).overall, expected(8, []).overall);
    }
}
