/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Structs of the guard's rate limits and timed blocks, defined once;
 * src/filter/guard/limits.rs asserts the same sizes and offsets in Rust. */
#ifndef XDPG_GUARD_LIMIT_STRUCTS_H
#define XDPG_GUARD_LIMIT_STRUCTS_H

#include <linux/types.h>
#include "guard_limit_consts.h"

/* The limits' config, one entry, mmapped by user space. */
struct xdpg_limit_config {
	__u32 version;	    /* XDPG_LIMIT_LAYOUT_VERSION */
	__u32 timed_active; /* nonzero while timed blocks may exist: only then
			     * does the guard look them up */
	__u64 window_ns;    /* the sketch's window (0: XDPG_RL_WINDOW_NS) */
	__u32 promote_max;  /* new buckets a CPU makes per window (0: default) */
	__u32 seed;	    /* of the sketch's and buckets' hashes, random */
};

/* A rate-limit rule's limit, by rule id. Both rates are kept as a
 * generic cell rate algorithm (GCRA): each packet moves the key's
 * "theoretical arrival time" (TAT) on by its cost; a packet conforms while
 * the TAT it would make stays within `burst` of now. Times in 1/16 ns. */
struct xdpg_limit_spec {
	__u64 pkt_cost;	  /* per packet (0: no packet rate) */
	__u64 pkt_burst;  /* how far ahead of now the packet TAT may run */
	__u64 byte_cost;  /* per byte (0: no byte rate) */
	__u64 byte_burst; /* the same, bytes */
	__u64 block_ns;	  /* over the limit: block the key this long (0: off) */
	__u32 admit;	  /* sketch estimate (packets in a window) up to which
			   * a key gets no exact bucket: it cannot be over */
	__u32 sketch_max; /* packets in a window beyond which a key without a
			   * bucket is over (when no bucket can be made) */
	__u8 v4_len;	  /* key: the source's prefix (32 / 128: the address) */
	__u8 v6_len;
	__u8 pad[6];
	__u32 block_after; /* the over-limit packet of a key that blocks it
			    * (the Nth; 0 and 1: the first) */
	__u32 reserved;
};

/* An exact bucket's key: the rule and the source's prefix. */
struct xdpg_limit_key {
	__u32 rule;
	__u32 family_len; /* family (4 or 6) << 8 | prefix length */
	__u32 addr[4];	  /* network byte order, host bits cleared */
};

/* An exact bucket: the packet and byte TATs (1/16 ns), and how many of the
 * key's packets were over the limit (for `block ... after N`). */
struct xdpg_limit_bucket {
	__u64 tat_pkts;
	__u64 tat_bytes;
	__u64 over;
};

/* Per rule, per CPU: what the limit decided. */
struct xdpg_limit_counter {
	__u64 packets; /* over the limit: dropped (monitor: would drop) */
	__u64 bytes;
	__u64 blocks; /* auto-blocks this rule made */
	__u64 reserved;
};

/* Per CPU, one entry: the limiter's own bookkeeping and counters. */
struct xdpg_limit_stats {
	__u64 window;	      /* the window promotions are counted in */
	__u64 window_made;    /* buckets made in it */
	__u64 buckets_made;   /* exact buckets made (promotions), all time */
	__u64 promote_capped; /* promotions refused by the cap: the sketch decided */
	__u64 sketch_over;    /* ... and found the key over */
	__u64 blocks_failed;  /* auto-blocks the timed-block table refused */
	__u64 expired;	      /* expired timed blocks the data plane removed */
	__u64 reserved;
};

/* A chunk of the sketch: XDPG_RL_CHUNK_BLOCKS blocks of 16 counters. */
struct xdpg_sketch_chunk {
	__u32 c[XDPG_RL_CHUNK_BLOCKS * XDPG_RL_BLOCK_SLOTS];
};

/* A timed block's key (an LPM trie key: prefixlen counts the tag's bits). */
struct xdpg_tblock_key {
	__u32 prefixlen;
	__u32 tag;     /* network byte order: 1 for IPv6 */
	__u32 addr[4]; /* network byte order; IPv4 in word 0 */
};

/* A timed block: until when (guard clock, ns), and who made it. */
struct xdpg_tblock {
	__u64 expires_ns;
	__u32 rule; /* the rule that auto-blocked it, or XDPG_TB_BY_USER */
	__u32 len;  /* the prefix's length (to delete it by its key) */
};

_Static_assert(sizeof(struct xdpg_limit_config) == 24, "xdpg_limit_config layout");
_Static_assert(sizeof(struct xdpg_limit_spec) == 64, "xdpg_limit_spec layout");
_Static_assert(__builtin_offsetof(struct xdpg_limit_spec, admit) == 40, "admit offset");
_Static_assert(__builtin_offsetof(struct xdpg_limit_spec, v4_len) == 48, "v4_len offset");
_Static_assert(sizeof(struct xdpg_limit_key) == 24, "xdpg_limit_key layout");
_Static_assert(__builtin_offsetof(struct xdpg_limit_spec, block_after) == 56, "block_after offset");
_Static_assert(sizeof(struct xdpg_limit_bucket) == 24, "xdpg_limit_bucket layout");
_Static_assert(sizeof(struct xdpg_limit_counter) == 32, "xdpg_limit_counter layout");
_Static_assert(sizeof(struct xdpg_limit_stats) == 64, "xdpg_limit_stats layout");
_Static_assert(sizeof(struct xdpg_sketch_chunk) == 32768, "a per-CPU value's most");
_Static_assert(XDPG_RL_CHUNKS *XDPG_RL_CHUNK_BLOCKS == XDPG_RL_BLOCKS, "sketch chunks");
_Static_assert(sizeof(struct xdpg_tblock_key) == 24, "xdpg_tblock_key layout");
_Static_assert(sizeof(struct xdpg_tblock) == 16, "xdpg_tblock layout");

#endif
