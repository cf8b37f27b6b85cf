/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The filter's constants (xdpg_filter), shared with Rust through build.rs
 * (crate::core::layout::consts; src/filter/layout.rs uses them). Only
 * integer literals and enums: build.rs reads nothing else. */
#ifndef XDPG_FILTER_CONSTS_H
#define XDPG_FILTER_CONSTS_H

/* Written into the config map so a pin directory can be recognised as ours,
 * and bumped whenever a shared layout changes. */
#define XDPG_MAGIC 0x58445047u /* "XDPG" */
/* 8: the v6 view says how its table hashes the /48s' chains
 * (`anchor_hash`, XDPG_V6_ANCHOR_*); migrated from 7, 6 and 5, whose views
 * leave it 0 (murmur), by rebuilding both v6 tables in the multiply hash
 * once the new program (which reads both) runs. 7: the guard's gate
 * (xdpg_gate, and its open bit in `tables`) added; migrated from 6 and 5,
 * the gate created closed (those layouts leave bit 31 of `tables` clear). */
#define XDPG_LAYOUT_VERSION 8

/* Verdict codes stored in the v4 per-/24 array, the v4 host buckets and the
 * v6 buckets. Allow wins over block whatever the prefix lengths. */
#define XDPG_VERDICT_PASS 0
#define XDPG_VERDICT_BLOCK 1
#define XDPG_VERDICT_ALLOW 2
/* Host-bucket slots use 0 for "empty", so a host that must pass is stored
 * with this code instead of XDPG_VERDICT_PASS. */
#define XDPG_HOST_PASS 3

/* v4 level 1: one 32-byte line per /18 (struct xdpg_v4_line): a 2-bit cell
 * per /24, its verdict (the default of a /24 with listed hosts), then up to
 * seven listed hosts of the /18 inline, in 16-bit slots. */
#define XDPG_V4_LINES 262144 /* 2^24 /24s, 64 per line */
#define XDPG_V4_CELLS_PER_WORD 32
#define XDPG_V4_LINE_CELL_WORDS 2
#define XDPG_V4_LINE_SLOT_WORDS 2
#define XDPG_V4_LINE_SLOTS 7 /* the 8th slot holds the overflow mark */
/* In the 8th slot: some listed host of this /18 is only in the host
 * buckets. Its code bits are 0, so it never matches a host. */
#define XDPG_V4_LINE_OVERFLOW 0xFFFC

/* v4 host buckets: one cache line each. */
#define XDPG_V4_BUCKET_SLOTS 15
#define XDPG_V4_BUCKET_OVERFLOW 0x80000000
#define XDPG_V4_MAX_PROBES 16

/* v6 buckets: three entries per cache line. */
#define XDPG_V6_BUCKET_SLOTS 3
#define XDPG_V6_BUCKET_OVERFLOW 0x80000000
#define XDPG_V6_MAX_PROBES 64

/* v6 entries of /48 and longer are anchored: kept in the bucket chain of
 * their /48's hash (xdpg_v6_anchor_hash), so one walk of one chain finds
 * the longest of them, unless their /48 holds too many and is marked dense
 * (then they are in the chains of their own (length, prefix) hashes, as the
 * shorter entries always are). */
#define XDPG_V6_ANCHOR_LEN 48
/* An entry's kind, in len_code bits 16-17 (struct xdpg_v6_entry). */
#define XDPG_V6_KIND_LEN 0	/* in the chain of its (length, prefix) hash */
#define XDPG_V6_KIND_ANCHORED 1 /* in the chain of its /48's hash */
#define XDPG_V6_KIND_DENSE 2	/* a /48's mark (length 48): its entries are KIND_LEN */
#define XDPG_V6_KIND_SINGLE 3	/* in the chain of its /48's hash, the /48's only one */

/* How a v6 table hashes the /48s' chains (struct xdpg_v6_view's
 * anchor_hash, src/bpf/hash.h). */
#define XDPG_V6_ANCHOR_MURMUR 0	  /* xdpg_v6_anchor_hash: layouts 5-7 */
#define XDPG_V6_ANCHOR_MULSHIFT 1 /* xdpg_v6_anchor_mixed: from layout 8 */

/* v6: prefix lengths 0..128 can all be in use at once. */
#define XDPG_V6_MAX_LENS 129
/* Views are rotated so a reader never sees a view being rewritten. */
#define XDPG_V6_VIEWS 4
/* config->tables: bit 0 picks the v4 table pair, these bits the v6 view. */
#define XDPG_TABLES_V4_MASK 0x1
#define XDPG_TABLES_V6_SHIFT 8
#define XDPG_TABLES_V6_MASK 0xFF
/* Set while the guard's gate (filter_maps.h, xdpg_gate) is open: in the word
 * the filter reads anyway, so a closed gate costs it no memory access. */
#define XDPG_TABLES_GATE_OPEN 0x80000000

/* List membership bits of a stored rule. */
#define XDPG_LIST_BLOCK 1
#define XDPG_LIST_ALLOW 2

/* Why the filter let a packet through or dropped it: one per-CPU counter each. */
enum xdpg_filter_reason {
	XDPG_REASON_PASSED = 0,		/* IP, in no list */
	XDPG_REASON_ALLOWLISTED,	/* matched the allowlist */
	XDPG_REASON_BLOCKED_V4,		/* IPv4 source blocked */
	XDPG_REASON_BLOCKED_V6,		/* IPv6 source blocked */
	XDPG_REASON_MALFORMED,		/* bad or truncated L2/L3 headers */
	XDPG_REASON_NON_IP,		/* ARP, LLDP, ... */
	XDPG_REASON_RULE_DROPPED,	/* dropped by a rule (the guard stage) */
	XDPG_REASON_RULE_PASSED,	/* passed by a pass rule */
	XDPG_REASON_WOULD_DROP_BLOCKED, /* monitor mode: blocklisted, passed */
	XDPG_REASON_WOULD_DROP_RULE,	/* monitor mode: a drop rule matched, passed */
	XDPG_REASON_SYN_DROPPED,	/* SYN guard: over the port's threshold, unknown source */
	XDPG_REASON_WOULD_DROP_SYN,	/* monitor: the SYN guard would drop or answer it, passed */
	XDPG_REASON_SYN_COOKIE_SENT,	/* SYN guard: answered with a SYN cookie SYN-ACK (XDP_TX) */
	XDPG_REASON_SYN_COOKIE_PASSED,	/* SYN guard: an ACK with a valid cookie, passed */
	XDPG_REASON_RATE_LIMITED,	/* over a rate-limit rule's limit: dropped */
	XDPG_REASON_WOULD_DROP_LIMIT,	/* monitor mode: over a limit, passed */
	XDPG_REASON_TIMED_BLOCKED,	/* in a timed block (guard stage): dropped */
	XDPG_REASON_WOULD_DROP_TIMED,	/* monitor mode: in a timed block, passed */
	XDPG_REASON_COUNT,
};

/* config->monitor: monitor (dry-run) mode, every drop decision after the
 * allowlist is counted as "would drop" and the packet passed. */
#define XDPG_MONITOR_ON 1

/* What the filter does with malformed packets. */
#define XDPG_MALFORMED_PASS 0
#define XDPG_MALFORMED_DROP 1

#endif
