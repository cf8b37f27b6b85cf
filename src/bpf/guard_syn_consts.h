/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the guard's SYN-flood stage (guard_syn.h). Shared with the
 * Rust side through build.rs (consts.rs); src/filter/guard/syn.rs checks
 * the layouts. */
#ifndef XDPG_GUARD_SYN_CONSTS_H
#define XDPG_GUARD_SYN_CONSTS_H

/* Protected ports: at most this many, each in a slot of xdpg_syn_slots;
 * xdpg_syn_idx maps each of the 65,536 ports to its slot + 1 (0: not
 * protected). */
#define XDPG_SYN_MAX_PORTS 64
#define XDPG_SYN_IDX_ENTRIES 65536

/* A protected port's mode (xdpg_syn_port.mode; 0: the slot is free). */
#define XDPG_SYN_MODE_DROP 1   /* over the threshold: drop SYNs of unknown sources */
#define XDPG_SYN_MODE_COOKIE 2 /* answer every SYN with a SYN cookie (XDP_TX) */

/* xdpg_syn_port.flags */
#define XDPG_SYN_F_MONITOR 0x1	      /* count what would be dropped/answered, pass it */
#define XDPG_SYN_F_TCP_OPTIONS 0x2    /* cookie mode: window scaling, SACK, timestamps (below) */
#define XDPG_SYN_F_DROP_UNTRACKED 0x4 /* cookie mode: drop ACKs neither conntrack's nor cookies */

/* The SYN rate is measured over windows of this many ns, the previous
 * window's count weighted by how much of it still overlaps the last second. */
#define XDPG_SYN_WINDOW_NS 1000000000

/* Sources that completed a handshake: an LRU of this many. */
#define XDPG_SYN_KNOWN_MAX 65536
/* A known source's last-seen time is rewritten at most this often. */
#define XDPG_SYN_KNOWN_REFRESH_NS 1000000000
/* Default of xdpg_syn_config.known_ttl_s: one hour. */
#define XDPG_SYN_KNOWN_TTL_S 3600

/* The SYN-ACK's IPv4 TTL / IPv6 hop limit, and its TCP header: 20 bytes
 * and the MSS option (4 bytes); with XDPG_SYN_F_TCP_OPTIONS and a SYN that
 * offers timestamps, 16 more: SACK permitted (or two NOPs), timestamps,
 * and NOP + window scale (or four NOPs), the order of Linux's own. */
#define XDPG_SYN_TTL 64
#define XDPG_SYN_TCP_LEN 24
#define XDPG_SYN_TCP_LEN_OPTIONS 40
/* The timestamp cookie (nf_synproxy's encoding, which synproxy decodes
 * from the ACK's echoed timestamp): the low 6 bits of the SYN-ACK's
 * timestamp value carry the client's window scale (0xF: none) and its
 * SACK permission (bit 4); the rest are milliseconds. */
#define XDPG_SYN_TS_OPT_MASK 0x3F
#define XDPG_SYN_TS_WSCALE_NONE 0xF
#define XDPG_SYN_TS_SACK 0x10
#define XDPG_SYN_MAX_WSCALE 14
#define XDPG_SYN_DEFAULT_MSS4 1460
#define XDPG_SYN_DEFAULT_MSS6 1440

/* What xdpg_syn_guard() decided. */
#define XDPG_SYN_NONE 0	      /* not the SYN guard's: the packet goes on */
#define XDPG_SYN_DROP 1	      /* drop (XDPG_REASON_SYN_DROPPED) */
#define XDPG_SYN_WOULD_DROP 2 /* monitor: pass (XDPG_REASON_WOULD_DROP_SYN) */
#define XDPG_SYN_TX 3	      /* the frame is now a SYN-ACK: XDP_TX */
#define XDPG_SYN_COOKIE_OK 4  /* an ACK with a valid cookie: pass */

#endif
