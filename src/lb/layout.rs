//! The load balancer's and the decapsulator's kernel/user shared layouts:
//! the skeleton-generated types of `src/bpf/lb_structs.h`, checked at
//! compile time against the sizes and offsets the C side pins with
//! `_Static_assert`.

#![allow(missing_docs, non_camel_case_types, clippy::all)]

use std::mem::{offset_of, size_of};

use crate::core::layout::consts;

/// The load balancer's skeleton (`src/bpf/lb.bpf.c`).
pub(crate) mod lb_skel {
    #![allow(unused_imports, unused_qualifications, dead_code, missing_docs, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/lb.skel.rs"));
}

/// The decapsulator's skeleton (`src/bpf/decap.bpf.c`).
pub(crate) mod decap_skel {
    #![allow(unused_imports, unused_qualifications, dead_code, missing_docs, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/decap.skel.rs"));
}

pub(crate) use decap_skel::types::{xdpg_decap_config, xdpg_decap_key};
pub(crate) use lb_skel::types::{
    xdpg_counter, xdpg_header, xdpg_lb_addr_key, xdpg_lb_backend, xdpg_lb_backend_stats, xdpg_lb_config, xdpg_lb_conn,
    xdpg_lb_flow, xdpg_lb_flow4, xdpg_lb_nat_rev, xdpg_lb_nbr_key, xdpg_lb_vip, xdpg_lb_vip_key, xdpg_lb_vip_key4,
    xdpg_lb_vip_stats,
};

/// The decapsulator's copies of the shared types.
pub(crate) mod decap {
    pub(crate) use super::decap_skel::types::{xdpg_counter, xdpg_header};
}

use crate::core::layout::pod;
use crate::core::maps::{config, counter, summable};

pod!(
    xdpg_counter,
    xdpg_header,
    xdpg_lb_addr_key,
    xdpg_lb_backend,
    xdpg_lb_backend_stats,
    xdpg_lb_config,
    xdpg_lb_conn,
    xdpg_lb_flow,
    xdpg_lb_flow4,
    xdpg_lb_nat_rev,
    xdpg_lb_nbr_key,
    xdpg_lb_vip,
    xdpg_lb_vip_key,
    xdpg_lb_vip_key4,
    xdpg_lb_vip_stats,
    xdpg_decap_key,
    xdpg_decap_config,
    decap::xdpg_counter,
    decap::xdpg_header,
);

config!(xdpg_lb_config, xdpg_header);
config!(xdpg_decap_config, decap::xdpg_header);
counter!(xdpg_counter, decap::xdpg_counter);
summable!(
    xdpg_lb_vip_stats { packets, bytes, new_flows, lru_hits, lru_misses },
    xdpg_lb_backend_stats { packets, bytes, no_neigh_packets, no_neigh_bytes },
);

// The same numbers as the _Static_asserts in src/bpf/lb_structs.h.
const _: () = {
    assert!(size_of::<xdpg_lb_vip_key>() == 20);
    assert!(offset_of!(xdpg_lb_vip_key, port) == 16);
    assert!(offset_of!(xdpg_lb_vip_key, family) == 19);
    assert!(size_of::<xdpg_lb_vip_key4>() == 8);
    assert!(offset_of!(xdpg_lb_vip_key4, proto) == 6);
    assert!(size_of::<xdpg_lb_flow4>() == 16);
    assert!(offset_of!(xdpg_lb_flow4, proto) == 12);
    assert!(size_of::<xdpg_lb_conn>() == 16);
    assert!(offset_of!(xdpg_lb_conn, hash) == 12);
    assert!(size_of::<xdpg_lb_vip>() == 16);
    assert!(offset_of!(xdpg_lb_vip, mode) == 8);
    assert!(size_of::<xdpg_lb_addr_key>() == 20);
    assert!(size_of::<xdpg_lb_backend>() == 32);
    assert!(offset_of!(xdpg_lb_backend, port) == 16);
    assert!(offset_of!(xdpg_lb_backend, gen) == 20);
    assert!(offset_of!(xdpg_lb_backend, weight) == 28);
    assert!(size_of::<xdpg_lb_flow>() == 40);
    assert!(offset_of!(xdpg_lb_flow, sport) == 32);
    assert!(offset_of!(xdpg_lb_flow, proto) == 36);
    assert!(size_of::<xdpg_lb_nat_rev>() == 24);
    assert!(size_of::<xdpg_lb_vip_stats>() == 40);
    assert!(size_of::<xdpg_counter>() == 16);
    assert!(size_of::<decap::xdpg_counter>() == 16);
    assert!(size_of::<xdpg_lb_config>() == 136);
    assert!(offset_of!(xdpg_lb_config, hash_seed) == 24);
    assert!(offset_of!(xdpg_lb_config, netns_dev) == 120);
    assert!(offset_of!(xdpg_lb_config, netns_ino) == 128);
    assert!(size_of::<xdpg_lb_backend_stats>() == 32);
    assert!(offset_of!(xdpg_lb_backend_stats, no_neigh_packets) == 16);
    assert!(size_of::<xdpg_lb_nbr_key>() == 24);
    assert!(offset_of!(xdpg_lb_nbr_key, ifindex) == 16);
    assert!(offset_of!(xdpg_lb_nbr_key, family) == 20);
    assert!(offset_of!(xdpg_lb_config, nexthop_ttl) == 104);
    assert!(offset_of!(xdpg_lb_config, ns_per_jiffy) == 112);
    assert!(offset_of!(xdpg_lb_config, echo_policy) == 36);
    assert!(offset_of!(xdpg_lb_config, udp_timeout) == 40);
    assert!(offset_of!(xdpg_lb_config, new_flow_interval) == 48);
    assert!(offset_of!(xdpg_lb_config, ipip_v4_src) == 64);
    assert!(offset_of!(xdpg_lb_config, ipip_v6_mask) == 88);
    assert!(offset_of!(xdpg_lb_config, next_backend) == 96);
    assert!(size_of::<xdpg_decap_key>() == 20);
    assert!(size_of::<xdpg_decap_config>() == 24);
    assert!(consts::XDPG_LB_DROP_NO_BACKEND == 0);
    assert!(consts::XDPG_LB_DECAP_PASSED + 1 == consts::XDPG_LB_DECAP_COUNT);
};
