/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The load balancer's maps. Names are stable and fit the kernel's 15
 * characters (bpftool map dump name ...); user space sets every
 * capacity-dependent max_entries before loading. */
#ifndef XDPG_LB_MAPS_H
#define XDPG_LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "common.h"
#include "lb_structs.h"
#include "lb_parsing.h"

/* Large temporaries of the rare paths: kept off the BPF stack, whose 512
 * bytes are shared by a program and the subprograms it calls. */
struct xdpg_lb_scratch {
	struct bpf_fib_lookup fib;
	struct xdpg_lb_quoted quoted;
	__u32 icmp[32]; /* an ICMP message being built (with its pseudo-header) */
};

/* Config and policies, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_lb_config);
} xdpg_lb_cfg SEC(".maps");

/* IPv4 VIPs: (address, port or 0 for all ports, protocol) -> mode, table, slot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_VIPS);
	__type(key, struct xdpg_lb_vip_key4);
	__type(value, struct xdpg_lb_vip);
} xdpg_lb_vips4 SEC(".maps");

/* IPv6 VIPs, likewise. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_VIPS);
	__type(key, struct xdpg_lb_vip_key);
	__type(value, struct xdpg_lb_vip);
} xdpg_lb_vips6 SEC(".maps");

/* Addresses used by any VIP -> number of VIPs on it (fragments, ICMP echo). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_VIPS);
	__type(key, struct xdpg_lb_addr_key);
	__type(value, __u32);
} xdpg_lb_vaddrs SEC(".maps");

/* Template of one VIP's Maglev table: slot -> backend. BPF_F_INNER_MAP lets
 * each VIP's table have its own (prime) size. */
struct xdpg_lb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

/* VIP slot -> its Maglev table; a batch of changes is one update here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__array(values, struct xdpg_lb_table);
} xdpg_lb_tables SEC(".maps");

/* Backend slots: address, NAT port, generation (and user bookkeeping). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_BACKENDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_lb_backend);
} xdpg_lb_backend SEC(".maps");

/* The IPv6 connection table and the NAT tables keep one LRU list for all CPUs (no
 * BPF_F_NO_COMMON_LRU). Per-CPU lists were measured slower here for every
 * insert, with one CPU or two inserting at once (benches/per_packet.rs,
 * BENCHMARKS.md), and they split the capacity: a CPU that sees most new
 * flows evicts once it has filled its 1/N share. Lookups see every entry
 * either way, so a flow keeps its backend whichever CPU sees it. */

/* IPv4 connection table: 64-byte lines of two slots, a power of two of
 * them (cfg->ct4_mask + 1), twice the slots of the connections asked for;
 * a flow lives in one of the four slots of its two lines, and a new one
 * takes an empty slot, else the one idle longest (ct4_* in lb_select.h,
 * sizes and measurements in src/lb/conntrack.rs). It replaced an LRU hash
 * in layout 4: a hit there was two dependent cache misses. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_LB_DEFAULT_CONNECTIONS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_lb_ct4_line);
} xdpg_lb_conns4 SEC(".maps");

/* IPv6 connection table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_CONNECTIONS);
	__type(key, struct xdpg_lb_flow);
	__type(value, struct xdpg_lb_conn);
} xdpg_lb_conns6 SEC(".maps");

/* IPv4 NAT reply translation: reply flow (backend -> client) -> VIP address/port. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_CONNECTIONS);
	__type(key, struct xdpg_lb_flow4);
	__type(value, struct xdpg_lb_nat_rev);
} xdpg_lb_nat4 SEC(".maps");

/* IPv6 NAT reply translation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_CONNECTIONS);
	__type(key, struct xdpg_lb_flow);
	__type(value, struct xdpg_lb_nat_rev);
} xdpg_lb_nat6 SEC(".maps");

/* Per-VIP counters, per CPU, indexed by VIP slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct xdpg_lb_vip_stats);
} xdpg_lb_vipcnt SEC(".maps");

/* Per-backend counters, per CPU, indexed by backend slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xdpg_lb_backend_stats);
} xdpg_lb_becnt SEC(".maps");

/* The managed neighbour entries user space created for backends' next
 * hops (struct xdpg_lb_nbr_key -> the low 32 bits of the LB's network
 * namespace's cookie; 0, in earlier builds' records, for any), so it removes
 * exactly those. Only user space uses it; it lives here to be pinned with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_BACKENDS);
	__type(key, struct xdpg_lb_nbr_key);
	__type(value, __u32);
} xdpg_lb_nbrs SEC(".maps");

/* Drop reasons and events (enum xdpg_lb_counter), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_COUNTER_COUNT);
	__type(key, __u32);
	__type(value, struct xdpg_counter);
} xdpg_lb_cnt SEC(".maps");

/* Each backend's next hop, per CPU, refreshed from the FIB every
 * nexthop_ttl jiffies. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_DEFAULT_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xdpg_lb_nexthop);
} xdpg_lb_nexthop SEC(".maps");

/* Per-CPU scratch space (struct xdpg_lb_scratch). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_lb_scratch);
} xdpg_lb_scratch SEC(".maps");

/* A VIP lookup's answer, cached per CPU and valid for one config
 * generation (see vip_lookup in lb_select.h). Not shared with user space. */
struct xdpg_lb_vip_cache {
	__u64 generation; /* cfg->hdr.generation + 1 when filled (0: empty) */
	__u64 key[3];	  /* the lookup key's words (IPv4: key[0] only) */
	struct xdpg_lb_vip vip;
};

#define XDPG_LB_VIP_CACHE_SLOTS 16

/* Per-CPU cache of VIP lookups, direct-mapped by key. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_VIP_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct xdpg_lb_vip_cache);
} xdpg_lb_vipc SEC(".maps");

/* The per-CPU new-flow rate bound's state. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_lb_rate);
} xdpg_lb_rate SEC(".maps");

/* Egress interfaces for XDP_REDIRECT, keyed by ifindex (filled by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, XDPG_LB_DEFAULT_DEVICES);
	__type(key, __u32);
	__type(value, __u32);
} xdpg_lb_devmap SEC(".maps");

#endif
