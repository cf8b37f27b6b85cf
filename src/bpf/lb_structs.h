/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every struct the load balancer shares with user space, defined once.
 * src/lb/layout.rs asserts the same sizes and offsets on the Rust side.
 * Addresses and ports are in network byte order; an IPv4 address sits in
 * addr[0] with addr[1..3] zero. */
#ifndef XDPG_LB_STRUCTS_H
#define XDPG_LB_STRUCTS_H

#include <linux/types.h>
#include "common.h"
#include "lb_consts.h"

/* Key of xdpg_lb_vips6: which packets a VIP takes. port 0 = all ports. */
struct xdpg_lb_vip_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* XDPG_LB_FAMILY_* */
};

/* Key of xdpg_lb_vips4: the same for IPv4, in 8 bytes (hashing a shorter
 * key is measurably cheaper on the hot path). */
struct xdpg_lb_vip_key4 {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* Value of xdpg_lb_vips: everything the data plane needs about a VIP, in
 * one lookup. */
struct xdpg_lb_vip {
	__u32 index;	  /* slot in xdpg_lb_tables and xdpg_lb_vip_stats */
	__u32 table_size; /* entries of its Maglev table (a prime) */
	__u8 mode;	  /* XDPG_LB_MODE_* */
	__u8 flags;	  /* XDPG_LB_VIP_* */
	__u16 pad;
	__u32 reserved;
};

/* Key of xdpg_lb_vip_addrs: an address some VIP uses (for fragments and
 * ICMP echo, which carry no port). */
struct xdpg_lb_addr_key {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* A backend slot of xdpg_lb_backends. The data plane reads the first 24
 * bytes; vip_index and weight are user space's bookkeeping, so a reopened
 * LB rebuilds its state from the maps alone. */
struct xdpg_lb_backend {
	__u32 addr[4];
	__u16 port;	 /* NAT: destination port on the backend; 0 keeps the client's */
	__u8 family;	 /* XDPG_LB_FAMILY_*, 0 for a free slot */
	__u8 flags;	 /* XDPG_LB_BACKEND_* */
	__u32 gen;	 /* bumped whenever the slot changes hands */
	__u32 vip_index; /* the VIP it serves */
	__u32 weight;	 /* 0 = draining */
};

/* A flow: the program's representation, the hash input, and the key of
 * the IPv6 connection and NAT tables. For fragments the ports are zero. */
struct xdpg_lb_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* An IPv4 flow as a key of xdpg_lb_conns4 and xdpg_lb_nat4 (16 bytes
 * instead of 40: a cheaper hash and compare on every lookup). */
struct xdpg_lb_flow4 {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Value of the connection tables: the backend a tracked flow goes to. */
struct xdpg_lb_conn {
	__u32 backend;	 /* slot in xdpg_lb_backend */
	__u32 gen;	 /* the slot's gen when chosen: a reassigned slot misses */
	__u32 last_seen; /* jiffies (low 32 bits), refreshed at most once a tick */
	__u32 hash;	 /* the flow hash, so a hit needs no rehash (IPIP source) */
};

/* An IPv4 connection-table slot: the flow's key as two words (src | dst <<
 * 32, sport | dport << 16 | proto << 32; all zero: empty) and its entry. */
struct xdpg_lb_ct4_slot {
	__u64 key[2];
	struct xdpg_lb_conn conn;
};

/* A line of the IPv4 connection table: one cache line, two slots. A flow
 * lives in one of the four slots of its two lines. */
struct xdpg_lb_ct4_line {
	struct xdpg_lb_ct4_slot slot[2];
};

/* Value of xdpg_lb_nat: how to translate a NAT reply back (its key is the
 * reply's flow: src = backend, dst = client). */
struct xdpg_lb_nat_rev {
	__u32 vip_addr[4];
	__u16 vip_port;
	__u16 pad;
	__u32 vip_index;
};

/* Per-VIP counters, per CPU. */
struct xdpg_lb_vip_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;  /* connection-table entries created */
	__u64 lru_hits;	  /* packets whose flow was in the table */
	__u64 lru_misses; /* packets that chose by Maglev (new flows, SYNs, untracked) */
};

/* Per-CPU new-flow rate bound (GCRA): the theoretical arrival time in ns,
 * on a clock of jiffies * ns_per_jiffy (reading a precise clock costs ~30 ns
 * in a VM; jiffies are free, and the burst absorbs a tick of granularity). */
struct xdpg_lb_rate {
	__u64 tat;
};

/* The LB's single config entry, mmapped by user space; fields are read on
 * their own and written with single stores. */
struct xdpg_lb_config {
	struct xdpg_header hdr; /* XDPG_LB_MAGIC, XDPG_LB_LAYOUT_VERSION; the VIP cache
				  * keys on its generation and dirty flag */
	__u32 hash_seed;	/* flow hash seed: equal on every LB node of a service */
	__u32 nat_vips;		/* NAT VIPs configured (0: skip reply lookups) */
	__u32 allport_vips;	/* all-ports VIPs (0: skip the second VIP lookup) */
	__u8 echo_policy;	/* XDPG_LB_ECHO_* */
	__u8 frag_policy;	/* XDPG_LB_FRAG_* */
	__u8 options_policy;	/* XDPG_LB_OPTIONS_* */
	__u8 pad0;
	__u64 udp_timeout;	 /* jiffies of idleness after which a UDP flow chooses afresh */
	__u64 new_flow_interval; /* ns between new entries per CPU; 0 = unbounded */
	__u64 new_flow_burst;	 /* ns of credit: burst = this / interval entries */
	__u32 ipip_v4_src;	 /* outer IPv4 source prefix */
	__u32 ipip_v4_mask;	 /* its host bits, filled from the flow hash */
	__u32 ipip_v6_src[4];	 /* outer IPv6 source prefix */
	__u32 ipip_v6_mask[2];	 /* host bits of words 2 and 3 */
	__u32 next_backend;	 /* user space: where the next backend slot search starts */
	__u32 ct4_mask;		 /* lines in xdpg_lb_conns4 - 1 (a power of two - 1) */
	__u64 nexthop_ttl;	 /* jiffies a CPU reuses a backend's FIB answer; 0 = ask every packet */
	__u64 ns_per_jiffy;	 /* the kernel tick, measured by user space */
	__u64 netns_dev;	 /* user space: the network namespace the LB was loaded in (its */
	__u64 netns_ino;	 /*   nsfs device and inode), where it manages next hops */
};

/* Value of xdpg_lb_becnt: per-backend counters, per CPU. */
struct xdpg_lb_backend_stats {
	__u64 packets; /* sent to it (or towards it), as received */
	__u64 bytes;
	__u64 no_neigh_packets; /* of those, found no resolved neighbour for its next hop */
	__u64 no_neigh_bytes;	/*   and went through the LB host's stack, which resolves it */
};

/* Key of xdpg_lb_nbrs: a neighbour entry (a backend's next hop) that user
 * space created as a managed entry and removes when no backend needs it.
 * The data plane never reads it. */
struct xdpg_lb_nbr_key {
	__u32 addr[4];
	__u32 ifindex;
	__u8 family; /* XDPG_LB_FAMILY_* */
	__u8 pad[3];
};

/* A backend's next hop as the FIB gave it, cached per CPU (xdpg_lb_nexthops)
 * so the hot path does not pay a FIB lookup per packet. */
struct xdpg_lb_nexthop {
	__u64 expires; /* jiffies after which the FIB is asked again */
	__u32 ifindex; /* egress */
	__u32 ingress; /* the ingress it was resolved for (forwarding is per ingress) */
	__u32 gen;     /* the backend slot's gen it was resolved for */
	__u16 mtu;     /* route MTU of the egress */
	__u16 pad;
	__u8 dmac[6];
	__u8 smac[6];
	__u32 pad2;
};

_Static_assert(sizeof(struct xdpg_lb_vip_key) == 20, "xdpg_lb_vip_key layout");
_Static_assert(sizeof(struct xdpg_lb_vip_key4) == 8, "xdpg_lb_vip_key4 layout");
_Static_assert(sizeof(struct xdpg_lb_flow4) == 16, "xdpg_lb_flow4 layout");
_Static_assert(sizeof(struct xdpg_lb_vip) == 16, "xdpg_lb_vip layout");
_Static_assert(sizeof(struct xdpg_lb_addr_key) == 20, "xdpg_lb_addr_key layout");
_Static_assert(sizeof(struct xdpg_lb_backend) == 32, "xdpg_lb_backend layout");
_Static_assert(__builtin_offsetof(struct xdpg_lb_backend, gen) == 20, "backend gen offset");
_Static_assert(sizeof(struct xdpg_lb_flow) == 40, "xdpg_lb_flow layout");
_Static_assert(sizeof(struct xdpg_lb_conn) == 16, "xdpg_lb_conn layout");
_Static_assert(sizeof(struct xdpg_lb_ct4_line) == 64, "xdpg_lb_ct4_line layout");
_Static_assert(sizeof(struct xdpg_lb_nat_rev) == 24, "xdpg_lb_nat_rev layout");
_Static_assert(sizeof(struct xdpg_lb_vip_stats) == 40, "xdpg_lb_vip_stats layout");
_Static_assert(sizeof(struct xdpg_lb_config) == 136, "xdpg_lb_config layout");
_Static_assert(sizeof(struct xdpg_lb_backend_stats) == 32, "xdpg_lb_backend_stats layout");
_Static_assert(sizeof(struct xdpg_lb_nbr_key) == 24, "xdpg_lb_nbr_key layout");
_Static_assert(sizeof(struct xdpg_lb_nexthop) == 40, "xdpg_lb_nexthop layout");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, hash_seed) == 24, "hash_seed offset");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, echo_policy) == 36, "policies offset");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, udp_timeout) == 40, "udp_timeout offset");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, ipip_v4_src) == 64, "ipip offset");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, netns_dev) == 120, "netns offset");
_Static_assert(__builtin_offsetof(struct xdpg_lb_config, ct4_mask) == 100, "ct4_mask offset");

#endif
