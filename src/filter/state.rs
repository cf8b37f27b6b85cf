//! The filter's model of its lists: every entry of both families with its
//! list bits, and where each is stored in the rule maps (the source of truth
//! a reopening process reads back). The verdict questions the API answers
//! are answered here, from the model.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;
use rustc_hash::FxHashMap;

use crate::filter::layout::{LIST_ALLOW, LIST_BLOCK};
use crate::filter::lists::ListKind;
use crate::filter::maps::FilterMaps;
use crate::filter::v4::V4Rules;
use crate::filter::v6::V6Rules;

/// The rules of both families, and where each is stored.
#[derive(Debug, Default)]
pub(crate) struct ListState {
    pub v4: V4Rules,
    /// Where each v4 entry is stored in `xdpg_v4_rules`.
    pub v4_slots: FxHashMap<(u32, u8), u32>,
    pub v6: V6Rules,
    /// Where each v6 entry is stored in `xdpg_v6_rules`.
    pub v6_slots: FxHashMap<(u128, u8), u32>,
    /// v6 removals since the Bloom filter was last rebuilt (their bits linger).
    pub v6_bloom_stale: usize,
}

pub(crate) fn v6_words(net: u128) -> [u32; 4] {
    bytemuck::cast(net.to_be_bytes())
}

pub(crate) fn v6_from_words(words: [u32; 4]) -> u128 {
    u128::from_be_bytes(bytemuck::cast(words))
}

impl ListState {
    /// Reads the rule store back (after a reopen, or another handle's edit).
    pub(crate) fn load(maps: &FilterMaps) -> Self {
        let mut st = ListState::default();
        let n4 = (maps.v4_rule_count().load(Ordering::Acquire) as usize).min(maps.v4_rules.len());
        for i in 0..n4 {
            let r = maps.v4_rules.get(i);
            for bit in [LIST_BLOCK, LIST_ALLOW] {
                if r.lists & bit != 0 {
                    st.v4.insert(r.addr, r.prefixlen, bit);
                }
            }
            st.v4_slots.insert((r.addr, r.prefixlen), i as u32);
        }
        let n6 = (maps.v6_rule_count().load(Ordering::Acquire) as usize).min(maps.v6_rules.len());
        for i in 0..n6 {
            let r = maps.v6_rules.get(i);
            let net = v6_from_words(r.addr);
            for bit in [LIST_BLOCK, LIST_ALLOW] {
                if r.lists & bit != 0 {
                    st.v6.insert(net, r.prefixlen, bit);
                }
            }
            st.v6_slots.insert((net, r.prefixlen), i as u32);
        }
        st
    }

    pub(crate) fn entries(&self, list: ListKind) -> Vec<IpNetwork> {
        let bit = list.bit();
        let mut out: Vec<IpNetwork> = self
            .v4
            .iter()
            .filter(|&(_, _, b)| b & bit != 0)
            .map(|(n, l, _)| IpNetwork::new(IpAddr::from(n.to_be_bytes()), l).expect("valid"))
            .chain(
                self.v6
                    .iter()
                    .filter(|&(_, _, b)| b & bit != 0)
                    .map(|(n, l, _)| IpNetwork::new(IpAddr::from(n.to_be_bytes()), l).expect("valid")),
            )
            .collect();
        out.sort_by_key(|n| (n.is_ipv6(), n.ip(), n.prefix()));
        out
    }

    pub(crate) fn count(&self, list: ListKind) -> usize {
        let bit = list.bit();
        self.v4.iter().filter(|&(_, _, b)| b & bit != 0).count()
            + self.v6.iter().filter(|&(_, _, b)| b & bit != 0).count()
    }

    pub(crate) fn contains(&self, net: IpNetwork, list: ListKind) -> bool {
        let bits = match net {
            IpNetwork::V4(n) => self.v4.lists(u32::from(n.network()), n.prefix()),
            IpNetwork::V6(n) => self.v6.lists(u128::from(n.network()), n.prefix()),
        };
        bits & list.bit() != 0
    }

    pub(crate) fn matching(&self, addr: IpAddr, list: ListKind) -> Option<IpNetwork> {
        let (ip, len) = match addr {
            IpAddr::V4(a) => {
                let (n, l) = self.v4.matching(u32::from(a), list.bit())?;
                (IpAddr::from(n.to_be_bytes()), l)
            }
            IpAddr::V6(a) => {
                let (n, l) = self.v6.matching(u128::from(a), list.bit())?;
                (IpAddr::from(n.to_be_bytes()), l)
            }
        };
        IpNetwork::new(ip, len).ok()
    }

    /// The verdict the filter gives a source address.
    pub(crate) fn verdict(&self, addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(a) => self.v4.verdict(u32::from(a)),
            IpAddr::V6(a) => self.v6.verdict(u128::from(a)),
        }
    }
}
