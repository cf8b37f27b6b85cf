/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the guard stage (guard.bpf.c): the rule engine, and later the
 * rate limits and the SYN guard. Shared with the Rust side through build.rs
 * (consts.rs) and checked in src/filter/guard/layout.rs. */
#ifndef XDPG_GUARD_CONSTS_H
#define XDPG_GUARD_CONSTS_H

/* The guard's config header: its magic ("XDGD") and layout version, bumped
 * whenever a guard layout changes (a later stage adding config fields or
 * maps bumps it too). */
#define XDPG_GUARD_MAGIC 0x58444744u
/* 4: a rule record's spare conds bits became the fragment condition
 * (XDPG_RM_FRAG, XDPG_RM_FRAG_NOT), which a layout 3 program ignores: it
 * would run `drop udp fragment` as `drop udp`. The bump makes a new CLI
 * refuse an old pin until `xdpguard upgrade` (no map changes). */
#define XDPG_GUARD_LAYOUT_VERSION 4

/* Slot of the guard in the filter's xdpg_stages program array. The filter
 * tail-calls it for the packets its lists did not decide, only while user
 * space has put it there (while a rule set is not empty). */
#define XDPG_STAGE_GUARD 0
#define XDPG_STAGES 1

/* The rule index: one 16-bit group number per key, four keys per 64-bit
 * word. A packet's key is its table's base plus its destination port (TCP,
 * UDP), its ICMP type, or its IP protocol (others); packets whose transport
 * header cannot be read (later fragments, a header cut short) use their
 * protocol's "no key" slot. */
#define XDPG_GK_TCP 0
#define XDPG_GK_UDP 65536
#define XDPG_GK_ICMP 131072
#define XDPG_GK_ICMP6 131328
#define XDPG_GK_OTHER 131584
#define XDPG_GK_NOKEY_TCP 131840
#define XDPG_GK_NOKEY_UDP 131841
#define XDPG_GK_NOKEY_ICMP 131842
#define XDPG_GK_NOKEY_ICMP6 131843
#define XDPG_GK_KEYS 131844
#define XDPG_GK_PER_WORD 4
#define XDPG_GK_WORDS 32961 /* XDPG_GK_KEYS / 4, rounded up */
/* The guard's gate (filter_maps.h, xdpg_gate): a bit per key
 * (XDPG_GK_KEYS / 64, rounded up). */
#define XDPG_GATE_WORDS 2061
/* Group numbers are 16 bits; group 0 is the empty group. */
#define XDPG_MAX_GROUPS 65536

/* Bytes of the transport header that must lie within the IP packet for its
 * fields to be read: TCP and UDP headers and the ICMP header (type, code,
 * checksum, rest of header) at their minimum; ICMPv6's fixed part. */
#define XDPG_TCP_MIN 20
#define XDPG_UDP_MIN 8
#define XDPG_ICMP_MIN 8
#define XDPG_ICMP6_MIN 4

/* A rule's action (xdpg_rule_rec.action). */
#define XDPG_RULE_DROP 1
#define XDPG_RULE_PASS 2
#define XDPG_RULE_COUNT 3
/* Rate limit (guard_limit.h): within the limit the walk goes on, over it
 * the packet is dropped; the limit is xdpg_l_spec[rule id]. */
#define XDPG_RULE_RATE_LIMIT 4

/* What a record checks (xdpg_rule_rec.conds bits). */
#define XDPG_RM_SRC 0x01     /* the source: src/src_len, or the set `set` */
#define XDPG_RM_SRC_NOT 0x02 /* ... negated */
#define XDPG_RM_SRC_SET 0x04 /* ... is a named set */
#define XDPG_RM_DST 0x08     /* the destination: dst/dst_len */
#define XDPG_RM_DST_NOT 0x10 /* ... negated */
#define XDPG_RM_SPORT 0x20   /* the source port: sport_lo..sport_hi */
/* Whether the packet is an IP fragment, first or later (xdpg_pkt.fragment:
 * an IPv6 atomic fragment is whole). Spare bits until now, so a record
 * written by an older build reads as "no fragment condition"; an older
 * program ignores them, hence layout 4 (above). */
#define XDPG_RM_FRAG 0x40     /* only fragments */
#define XDPG_RM_FRAG_NOT 0x80 /* ... negated: only whole packets */

/* xdpg_rule_rec.mode bits: a monitored rule counts its hits and decides nothing. */
#define XDPG_RULE_MONITOR 0x01

/* guard config `rules`: bit 0 picks the live half (index, groups, records
 * and rule text), so a whole rule set switches with one store. */
#define XDPG_RULES_HALF 0x1

/* Named sets: a slot per set, two physical set numbers per slot (2 * slot
 * and 2 * slot + 1) so a whole set is replaced beside the live one. */
#define XDPG_MAX_SETS 64
#define XDPG_SET_NAME_LEN 32
/* Set trie keys: 32 bits of tag (physical set number << 1 | is IPv6), then
 * the address; a prefix /n of a set is stored with prefixlen 32 + n. */
#define XDPG_SET_TAG_BITS 32

#endif
