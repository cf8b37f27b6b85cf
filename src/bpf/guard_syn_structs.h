/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The SYN guard's structs shared with user space, defined once;
 * src/filter/guard/syn.rs asserts the same sizes and offsets in Rust. */
#ifndef XDPG_GUARD_SYN_STRUCTS_H
#define XDPG_GUARD_SYN_STRUCTS_H

#include <linux/types.h>
#include "guard_syn_consts.h"

/* The SYN guard's config, one entry, mmapped by user space. */
struct xdpg_syn_config {
	__u32 ports;	   /* protected ports; 0: the SYN guard is off */
	__u32 known_ttl_s; /* a source stays known this long after a handshake */
	__u64 reserved[3];
};

/* A protected port's slot: its policy (written by user space) and its SYN
 * rate (written by the data plane, racily: a lost update costs one SYN of
 * the count). One cache line. */
struct xdpg_syn_port {
	__u32 threshold; /* drop mode: SYNs a second the port takes from anyone */
	__u16 port;	 /* host byte order */
	__u16 mss;	 /* cookie mode: the MSS the SYN-ACK advertises */
	__u8 mode;	 /* XDPG_SYN_MODE_*; 0: free */
	__u8 flags;	 /* XDPG_SYN_F_* */
	__u8 wscale;	 /* cookie mode, XDPG_SYN_F_TCP_OPTIONS: the window scale the SYN-ACK offers */
	__u8 pad;
	__u32 pad2;
	__u64 window; /* number of the current rate window */
	__u64 cur;    /* SYNs in it */
	__u64 prev;   /* SYNs in the window before it */
	__u64 reserved[3];
};

/* A protected port's counters, per CPU. */
struct xdpg_syn_counters {
	__u64 syns;	    /* SYNs to the port */
	__u64 dropped;	    /* drop mode: over the threshold, unknown source; cookie: untracked ACKs */
	__u64 would_drop;   /* monitor: would have been dropped or answered */
	__u64 cookies_sent; /* cookie mode: SYN-ACKs sent */
	__u64 cookies_ok;   /* cookie mode: ACKs with a valid cookie, passed */
	__u64 acks_other;   /* cookie mode: ACKs that are not cookies, passed to conntrack */
	__u64 known_passed; /* drop mode: over the threshold, known source, passed */
	__u64 unanswerable; /* cookie mode: SYNs not answered (IP options, IPv6 ext headers, group MAC, martian IP): dropped */
};

/* A source that completed a handshake (xdpg_syn_known's key). */
struct xdpg_syn_key {
	__u32 addr[4]; /* network byte order; IPv4 in word 0 */
	__u32 family;  /* 4 or 6 */
};

/* Scratch space for a SYN's TCP header, which the cookie helpers read from
 * memory (xdpg_syn_tmp). */
struct xdpg_syn_scratch {
	__u8 tcp[64]; /* a TCP header is at most 60 bytes */
};

_Static_assert(sizeof(struct xdpg_syn_config) == 32, "xdpg_syn_config layout");
_Static_assert(sizeof(struct xdpg_syn_port) == 64, "a port slot is one cache line");
_Static_assert(__builtin_offsetof(struct xdpg_syn_port, mode) == 8, "mode offset");
_Static_assert(__builtin_offsetof(struct xdpg_syn_port, window) == 16, "window offset");
_Static_assert(sizeof(struct xdpg_syn_counters) == 64, "xdpg_syn_counters layout");
_Static_assert(sizeof(struct xdpg_syn_key) == 20, "xdpg_syn_key layout");

#endif
