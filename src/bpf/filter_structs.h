/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every struct the filter shares with user space, defined once.
 * src/filter/layout.rs asserts the same sizes and offsets on the Rust side;
 * the _Static_asserts here pin them on the C side. */
#ifndef XDPG_FILTER_STRUCTS_H
#define XDPG_FILTER_STRUCTS_H

#include <linux/types.h>
#include "common.h"
#include "filter_consts.h"

/* The filter's single config entry, mmapped by user space; each field is
 * read on its own and written with one atomic store. */
struct xdpg_filter_config {
	struct xdpg_header hdr; /* XDPG_MAGIC, XDPG_LAYOUT_VERSION */
	__u32 tables;		/* bit 0: the live v4 table pair; bits 8-15: the live v6
				 * view. One word, so a bulk edit of both families
				 * switches at one instant. Bit 31: the guard's
				 * gate is open (XDPG_TABLES_GATE_OPEN). */
	__u32 v4_bucket_mask;	/* number of host buckets - 1 (a power of two - 1) */
	__u32 hash_seed;	/* keys the v4 host-bucket and the v6 entry hashes */
	__u32 v6_bloom_mask;	/* bits in xdpg_v6_bloom - 1 (a power of two - 1) */
	__u32 malformed_policy; /* XDPG_MALFORMED_* */
	__u32 v4_rule_count;	/* rules stored in xdpg_v4_rules */
	__u32 v6_rule_count;	/* rules stored in xdpg_v6_rules */
	__u32 v6_bucket_mask;	/* number of v6 buckets - 1 (a power of two - 1) */
	__u32 monitor;		/* XDPG_MONITOR_ON: drop nothing, count "would drop"
				 * (read by the guard stage too) */
	__u32 events_lease;	/* a drop-event reader's deadline, 0 = no reader
				 * (filter_events.h): beside `monitor`, in the line
				 * every drop reads */
};

/* v4 level 1, one line per /18: 32 bytes, half a cache line, so a packet's
 * lookup is one memory access whether or not its /24 has listed hosts, and
 * the array (8 MiB) stays within the TLB's reach where a 64-byte line did not.
 * cells: the /18's 64 cells, 2 bits each (XDPG_VERDICT_*), cell c in bits
 *   2*(c%32) of word c/32: the /24's verdict, or the default of its hosts.
 * slots: eight 16-bit slots, slot s in bits 16*(s%4) of word s/4. Slots
 *   0-6 hold listed hosts whose verdict differs from their /24's cell: bits
 *   10-15 the /24 within the /18, bits 2-9 the host's last octet, bits 0-1
 *   its code as in the host buckets (0 = empty, or retired: a retired slot
 *   keeps its host and is reused only by it). Slot 7 is 0, or
 *   XDPG_V4_LINE_OVERFLOW when a listed host of this /18 did not fit: then a
 *   host missing here is looked up in the host buckets, which always hold
 *   every listed host. */
struct xdpg_v4_line {
	__u64 cells[XDPG_V4_LINE_CELL_WORDS];
	__u64 slots[XDPG_V4_LINE_SLOT_WORDS];
};

/* A v4 host bucket: fifteen addresses (host byte order) and their 2-bit
 * codes (0 empty, then XDPG_VERDICT_BLOCK, XDPG_VERDICT_ALLOW, XDPG_HOST_PASS)
 * packed in meta bits 0-29; bit 31 says a later bucket holds overflow. */
struct xdpg_v4_bucket {
	__u32 addrs[XDPG_V4_BUCKET_SLOTS];
	__u32 meta;
};

/* One v6 entry: the prefix with its host bits cleared (network byte order),
 * its length + 1 (so 0 marks a slot never used), its code (0 = none:
 * empty or a tombstone; else XDPG_VERDICT_BLOCK or XDPG_VERDICT_ALLOW) and
 * its kind (XDPG_V6_KIND_*: which hash placed it, or a dense /48's mark).
 * len_code holds all three, so one 32-bit store publishes or retires an
 * entry. */
struct xdpg_v6_entry {
	__u32 addr[4];
	__u32 len_code; /* bits 0-7: prefix length + 1; 8-15: code; 16-17: kind */
};

/* A v6 bucket: three entries in one cache line; meta bit 31 says a later
 * bucket holds overflow. */
struct xdpg_v6_bucket {
	struct xdpg_v6_entry e[XDPG_V6_BUCKET_SLOTS];
	__u32 meta;
};

/* Which v6 table to read, and the prefix lengths in use there, longest
 * first; lens[short_from] is the first one shorter than XDPG_V6_ANCHOR_LEN
 * (short_from is 0 when no entry is anchored, count when all are);
 * anchor_hash: how that table hashes the /48s' chains (XDPG_V6_ANCHOR_*,
 * 0 in the views of layouts 5-7). */
struct xdpg_v6_view {
	__u32 table; /* 0 or 1 */
	__u32 count;
	__u8 lens[XDPG_V6_MAX_LENS];
	__u8 short_from;
	__u8 anchor_hash;
	__u8 pad[5];
};

/* A stored list entry, the source of truth the data plane is derived from.
 * The v4 address is in host byte order, the v6 one in network byte order. */
struct xdpg_v4_rule {
	__u32 addr;
	__u8 prefixlen;
	__u8 lists; /* XDPG_LIST_* bits */
	__u16 pad;
};

struct xdpg_v6_rule {
	__u32 addr[4];
	__u8 prefixlen;
	__u8 lists;
	__u8 pad[6]; /* array elements are 8-byte strided; keep mmap offsets obvious */
};

_Static_assert(sizeof(struct xdpg_filter_config) == 64, "xdpg_filter_config layout");
_Static_assert(__builtin_offsetof(struct xdpg_filter_config, tables) == 24, "tables offset");
_Static_assert(__builtin_offsetof(struct xdpg_filter_config, events_lease) == 60, "events_lease offset");
_Static_assert(sizeof(struct xdpg_v4_line) == 32, "a v4 line is half a cache line");
_Static_assert(sizeof(struct xdpg_v4_bucket) == 64, "a v4 bucket is one cache line");
_Static_assert(sizeof(struct xdpg_v6_entry) == 20, "xdpg_v6_entry layout");
_Static_assert(sizeof(struct xdpg_v6_bucket) == 64, "a v6 bucket is one cache line");
_Static_assert(sizeof(struct xdpg_v6_view) == 144, "xdpg_v6_view layout");
_Static_assert(__builtin_offsetof(struct xdpg_v6_view, short_from) == 137, "short_from offset");
_Static_assert(__builtin_offsetof(struct xdpg_v6_view, anchor_hash) == 138, "anchor_hash offset");
_Static_assert(sizeof(struct xdpg_v4_rule) == 8, "xdpg_v4_rule layout");
_Static_assert(sizeof(struct xdpg_v6_rule) == 24, "xdpg_v6_rule layout");

#endif
