/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the load balancer (xdpg_lb), shared with Rust through
 * build.rs (crate::core::layout::consts). Every name starts with XDPG_LB_
 * because consts.rs is one module for all *consts.h files. Only integer
 * literals and enums: build.rs reads nothing else. */
#ifndef XDPG_LB_CONSTS_H
#define XDPG_LB_CONSTS_H

/* Written into xdpg_lb_cfg so a pin directory can be recognised as an LB's,
 * and bumped whenever an LB layout changes. */
#define XDPG_LB_MAGIC 0x58474C42u /* "XGLB" */
#define XDPG_LB_LAYOUT_VERSION 4

/* Default capacities; user space sizes the maps before loading. */
#define XDPG_LB_DEFAULT_MAX_VIPS 512
#define XDPG_LB_DEFAULT_MAX_BACKENDS 4096
#define XDPG_LB_DEFAULT_CONNECTIONS 131072
#define XDPG_LB_DEFAULT_DEVICES 64

/* Maglev table sizes: primes only (checked in Rust). */
#define XDPG_LB_DEFAULT_TABLE_SIZE 65537
#define XDPG_LB_MAX_TABLE_SIZE 1048573

/* Address families as stored in keys (not AF_*, so one byte suffices);
 * the decapsulator's keys use them too. */
#define XDPG_LB_FAMILY_V4 4
#define XDPG_LB_FAMILY_V6 6

/* Forwarding modes, per VIP. */
#define XDPG_LB_MODE_DSR 0  /* rewrite the Ethernet header only (both MACs, to the next hop) */
#define XDPG_LB_MODE_IPIP 1 /* encapsulate in an outer IPv4 or IPv6 header */
#define XDPG_LB_MODE_NAT 2  /* rewrite destination address and port */

/* VIP flags. */
#define XDPG_LB_VIP_HASH_SRC_ONLY 1 /* hash the source address only */
#define XDPG_LB_VIP_NO_CONNTRACK 2  /* never read or write the connection table */

/* Backend slot flags. */
#define XDPG_LB_BACKEND_ACTIVE 1 /* may receive packets (also when draining) */
/* User space only (the data plane tests ACTIVE alone): weight 0 set by a
 * health checker, which restores it; any other weight write clears it.
 * A configuration's keep_drained holds only these at 0. */
#define XDPG_LB_BACKEND_CHECKER_DRAINED 2

/* What the Maglev table holds where no backend is (never stored in a live
 * table: a VIP without usable backend has no table at all). */
#define XDPG_LB_NO_BACKEND 0xFFFFFFFF

/* Policies, in the config entry. */
#define XDPG_LB_ECHO_ANSWER 0 /* reply to ICMP echo sent to a VIP address */
#define XDPG_LB_ECHO_PASS 1   /* hand it to the LB host's stack */
#define XDPG_LB_ECHO_DROP 2

#define XDPG_LB_FRAG_FORWARD 0 /* fragments to an all-ports DSR/IPIP VIP are forwarded; others dropped */
#define XDPG_LB_FRAG_DROP 1    /* every fragment to a VIP address is dropped */

#define XDPG_LB_OPTIONS_FORWARD 0 /* IPv4 options to a VIP are forwarded (and counted) */
#define XDPG_LB_OPTIONS_DROP 1

/* Outer header TTL / hop limit for IPIP. */
#define XDPG_LB_OUTER_TTL 64

/* Global per-CPU counters: what happened to packets that are not counted
 * per VIP, and every drop reason. Drops first, then events. */
enum xdpg_lb_counter {
	XDPG_LB_DROP_NO_BACKEND = 0, /* VIP without usable backend */
	XDPG_LB_DROP_MTU,	     /* too big for the egress link after encapsulation */
	XDPG_LB_DROP_FRAGMENT,	     /* fragment to a VIP address, by the fragment policy */
	XDPG_LB_DROP_IP_OPTIONS,     /* IPv4 options to a VIP, by the options policy */
	XDPG_LB_DROP_ECHO,	     /* ICMP echo to a VIP, by the echo policy (or from/to a group MAC) */
	XDPG_LB_DROP_ICMP,	     /* ICMP error about a VIP flow we cannot deliver */
	XDPG_LB_DROP_UNSUPPORTED,    /* backend family the mode cannot reach */
	XDPG_LB_DROP_HEADROOM,	     /* no room to encapsulate or grow a DSR probe (adjust_head/tail failed) */
	XDPG_LB_DROP_NAT_UNTRACKED,  /* new NAT flow over the new-flow bound: untranslatable replies */
	XDPG_LB_PASS_NON_VIP,	     /* not for a VIP: passed untouched */
	XDPG_LB_PASS_MALFORMED,	     /* bad or truncated headers (frame or IP length): passed untouched */
	XDPG_LB_PASS_NO_NEIGH, /* next hop not resolved: to the stack, rewritten (or as a DSR probe), which resolves it */
	XDPG_LB_PASS_NO_ROUTE,	      /* FIB lookup failed (no route, forwarding off): passed */
	XDPG_LB_PASS_NO_DEVMAP,	      /* egress interface not in the devmap: passed rewritten */
	XDPG_LB_PASS_TTL,	      /* NAT: TTL/hop limit would expire: passed to the stack */
	XDPG_LB_PASS_ECHO,	      /* ICMP echo to a VIP passed by the echo policy */
	XDPG_LB_EV_CT_REFUSED,	      /* new flow not tracked: per-CPU rate bound hit */
	XDPG_LB_EV_FRAG_FORWARDED,    /* fragment forwarded (hashed without ports) */
	XDPG_LB_EV_OPTIONS_FORWARDED, /* IPv4 packet with options forwarded */
	XDPG_LB_EV_ICMP_FORWARDED,    /* ICMP error sent to the backend of its flow */
	XDPG_LB_EV_ECHO_ANSWERED,     /* ICMP echo to a VIP answered */
	XDPG_LB_EV_NAT_REPLY,	      /* backend reply (or ICMP error about a NAT flow) translated to the VIP */
	XDPG_LB_EV_TX,		      /* forwarded out of the receiving interface */
	XDPG_LB_EV_REDIRECT,	      /* forwarded out of another interface */
	XDPG_LB_EV_TOO_BIG_SENT,      /* too big: ICMP frag-needed / packet-too-big sent back */
	XDPG_LB_COUNTER_COUNT,
};

#endif
