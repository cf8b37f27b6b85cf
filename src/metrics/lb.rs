//! A pinned [`LoadBalancer`]'s samples: global counters (drops, passes and
//! events by name), per VIP, and per backend with its next hop.

use std::collections::HashMap;

use super::family::{Id, Label, Samples};
use crate::{Error, LoadBalancer, NeighbourState, VipReport};

/// Every neighbour state, each a sample of `xdpguard_lb_backend_neighbour_state`.
const NEIGHBOUR_STATES: [NeighbourState; 5] = [
    NeighbourState::Resolved,
    NeighbourState::Resolving,
    NeighbourState::Unreachable,
    NeighbourState::NoRoute,
    NeighbourState::Unknown,
];

/// The family and label value of a global counter, from its row name in
/// [`LbStats::rows`](crate::LbStats::rows): `drop_X` is dropped with
/// reason X, `passed_X` passed with reason X, anything else an event. So a
/// counter the LB gains is scraped once it is in `rows()`.
pub(crate) fn global_family(row: &'static str) -> (Id, Id, &'static str) {
    if let Some(reason) = row.strip_prefix("drop_") {
        (Id::LB_DROPPED_PACKETS, Id::LB_DROPPED_BYTES, reason)
    } else if let Some(reason) = row.strip_prefix("passed_") {
        (Id::LB_PASSED_PACKETS, Id::LB_PASSED_BYTES, reason)
    } else {
        (Id::LB_EVENT_PACKETS, Id::LB_EVENT_BYTES, row)
    }
}

/// Reads `lb`'s counters, VIPs and backends into `s`.
pub(crate) fn read(lb: &LoadBalancer, pin: Label, s: &mut Samples) -> Result<(), Error> {
    for (row, c) in lb.stats()?.rows() {
        let (packets, bytes, label) = global_family(row);
        s.push_counter(packets, bytes, [pin.clone(), label.into()], c);
    }
    // Next hops name their egress by index, in the LB's namespace: named
    // here when it is one of the LB's own interfaces (the usual case).
    let names: HashMap<u32, String> = lb.attachments().into_iter().map(|a| (a.ifindex, a.interface)).collect();
    for VipReport { vip, stats: vs, backends, .. } in lb.all_vip_stats()? {
        let v: Label = vip.to_string().into();
        s.push_counter(Id::VIP_PACKETS, Id::VIP_BYTES, [pin.clone(), v.clone()], vs.traffic);
        s.push(Id::VIP_NEW_FLOWS, [pin.clone(), v.clone()], vs.new_flows);
        s.push(Id::VIP_LRU_HITS, [pin.clone(), v.clone()], vs.lru_hits);
        s.push(Id::VIP_LRU_MISSES, [pin.clone(), v.clone()], vs.lru_misses);
        let draining = backends.iter().filter(|b| b.backend.weight == 0).count();
        s.push(Id::VIP_BACKENDS, [pin.clone(), v.clone(), "active".into()], (backends.len() - draining) as u64);
        s.push(Id::VIP_BACKENDS, [pin.clone(), v.clone(), "draining".into()], draining as u64);
        for b in backends {
            let labels: [Label; 3] = [pin.clone(), v.clone(), b.backend.addr.to_string().into()];
            s.push_counter(Id::BACKEND_PACKETS, Id::BACKEND_BYTES, labels.clone(), b.traffic);
            s.push_counter(Id::BACKEND_NO_NEIGH_PACKETS, Id::BACKEND_NO_NEIGH_BYTES, labels.clone(), b.no_neighbour);
            s.push(Id::BACKEND_WEIGHT, labels.clone(), u64::from(b.backend.weight));
            for state in NEIGHBOUR_STATES {
                let [p, v, a] = labels.clone();
                s.push(
                    Id::BACKEND_NEIGHBOUR,
                    [p, v, a, state.to_string().into()],
                    u64::from(b.next_hop.state == state),
                );
            }
            let via = b.next_hop.via.map(|a| a.to_string()).unwrap_or_default();
            let interface = match (b.next_hop.ifindex, names.get(&b.next_hop.ifindex)) {
                (0, _) => String::new(),
                (_, Some(name)) => name.clone(),
                (i, None) => format!("ifindex:{i}"),
            };
            let [p, v, a] = labels;
            s.push(Id::BACKEND_NEXT_HOP, [p, v, a, via.into(), interface.into()], 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_neighbour_state_is_a_sample() {
        assert_eq!(&NEIGHBOUR_STATES[..], NeighbourState::ALL);
    }
}
