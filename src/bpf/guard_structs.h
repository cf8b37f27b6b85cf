/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every struct the guard stage shares with user space, defined once;
 * src/filter/guard/layout.rs asserts the same sizes and offsets in Rust. */
#ifndef XDPG_GUARD_STRUCTS_H
#define XDPG_GUARD_STRUCTS_H

#include <linux/types.h>
#include "common.h"
#include "guard_consts.h"

/* The guard's config entry, mmapped by user space: the rule engine's
 * fields and the clock every stage shares. A later stage (rate limits, the
 * SYN guard) keeps its config in a one-entry map of its own, and any
 * change of these bumps XDPG_GUARD_LAYOUT_VERSION. */
struct xdpg_guard_config {
	struct xdpg_header hdr; /* XDPG_GUARD_MAGIC, XDPG_GUARD_LAYOUT_VERSION */
	__u32 rules;		/* XDPG_RULES_HALF: the live half of the rule tables */
	__u32 text_len[2];	/* bytes of rule text in each half of xdpg_g_text */
	__u32 groups_per_half;	/* half 1's groups start here in xdpg_g_grp */
	__s64 clock_offset_ns;	/* added to the kernel's clock by guard_now()
				 * (guard_clock.h): 0, except in tests that move
				 * the guard's time (Filter::advance_clock) */
};

/* A group: the rules a key's packets are checked against, in priority
 * order, as entries first .. first + count - 1 of xdpg_g_ref (the half's
 * base included), each naming a record. */
struct xdpg_rule_group {
	__u32 first;
	__u32 count;
};

/* One compiled rule (or one source-port range of a rule): one cache line.
 * Addresses are in network byte order with host bits cleared, IPv4 in word
 * 0. The protocol and the destination port or ICMP type are not here: the
 * index already chose the group by them. */
struct xdpg_rule_rec {
	__u32 src[4];
	__u32 dst[4];
	__u32 rule;	/* the rule's id: its counter slot in xdpg_g_cnt */
	__u16 sport_lo; /* XDPG_RM_SPORT: the range, inclusive */
	__u16 sport_hi;
	__u8 src_len; /* prefix lengths */
	__u8 dst_len;
	__u8 family;	 /* 0: either, 4 or 6 */
	__u8 conds;	 /* XDPG_RM_*: the conditions checked */
	__u8 flags_mask; /* TCP flags: (flags & mask) == value */
	__u8 flags_value;
	__u8 action; /* XDPG_RULE_* */
	__u8 mode;   /* XDPG_RULE_MONITOR */
	__u32 set;   /* XDPG_RM_SRC_SET: the physical set number */
	__u32 arg;   /* the action's argument (unused: a rate limit's spec is
		      * xdpg_l_spec[rule], guard_limit_maps.h) */
	__u32 reserved[2];
};

/* A named-set trie key: prefixlen counts the tag's bits too. */
struct xdpg_set_key {
	__u32 prefixlen;
	__u32 tag;     /* network byte order: physical set << 1 | is IPv6 */
	__u32 addr[4]; /* network byte order; IPv4 in word 0 */
};

/* A named set's slot: its name (NUL-padded; empty: the slot is free) and
 * which of its two physical sets is live. */
struct xdpg_set_name {
	__u8 name[XDPG_SET_NAME_LEN];
	__u32 phys;
	__u32 used;
};

_Static_assert(sizeof(struct xdpg_guard_config) == 48, "xdpg_guard_config layout");
_Static_assert(__builtin_offsetof(struct xdpg_guard_config, rules) == 24, "rules offset");
_Static_assert(__builtin_offsetof(struct xdpg_guard_config, groups_per_half) == 36, "groups_per_half offset");
_Static_assert(__builtin_offsetof(struct xdpg_guard_config, clock_offset_ns) == 40, "clock_offset_ns offset");
_Static_assert(sizeof(struct xdpg_rule_group) == 8, "xdpg_rule_group layout");
_Static_assert(sizeof(struct xdpg_rule_rec) == 64, "a rule record is one cache line");
_Static_assert(__builtin_offsetof(struct xdpg_rule_rec, rule) == 32, "rule offset");
_Static_assert(__builtin_offsetof(struct xdpg_rule_rec, set) == 48, "set offset");
_Static_assert(sizeof(struct xdpg_set_key) == 24, "xdpg_set_key layout");
_Static_assert(sizeof(struct xdpg_set_name) == 40, "xdpg_set_name layout");

#endif
