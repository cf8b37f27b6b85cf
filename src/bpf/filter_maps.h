/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The filter's maps. Names are stable (bpftool map dump name ...); user space
 * sets every max_entries that depends on capacity before loading. */
#ifndef XDPG_FILTER_MAPS_H
#define XDPG_FILTER_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "filter_structs.h"
#include "filter_shared_maps.h"
#include "guard_consts.h"

/* v4 level 1, table pair 0: a 32-byte line per /18, its 64 cells and up to
 * seven listed hosts inline (8 MiB). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_V4_LINES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v4_line);
} xdpg_v4_l1_a SEC(".maps");

/* v4 level 1, table pair 1 (the other half of an atomic replace). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_V4_LINES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v4_line);
} xdpg_v4_l1_b SEC(".maps");

/* v4 host buckets, table pair 0: every listed host whose verdict differs
 * from its /24's cell, read only for a /18 whose line overflowed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v4_bucket);
} xdpg_v4_hosts_a SEC(".maps");

/* v4 host buckets, table pair 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v4_bucket);
} xdpg_v4_hosts_b SEC(".maps");

/* The v4 entries as the user gave them; never read by the data plane. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v4_rule);
} xdpg_v4_rules SEC(".maps");

/* v6 entries (effective verdicts) in cache-line buckets, table 0: those of
 * /48 and longer in their /48's chain (one walk finds them), the others in
 * the chains of their own (length, prefix) hashes. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v6_bucket);
} xdpg_v6_tab_a SEC(".maps");

/* v6 entries, table 1 (the spare a bulk edit fills, then switches to). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v6_bucket);
} xdpg_v6_tab_b SEC(".maps");

/* Which v6 table is live and its prefix lengths; config->tables picks one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_V6_VIEWS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v6_view);
} xdpg_v6_views SEC(".maps");

/* Bloom filter over the v6 entries in their own chains (one bit each),
 * sized to stay in L2: lets lookups skip the lengths an address cannot
 * match. Anchored entries need none: their /48's chain is read anyway. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 15);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_v6_bloom SEC(".maps");

/* The v6 entries as the user gave them; never read by the data plane. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_v6_rule);
} xdpg_v6_rules SEC(".maps");

/* The guard stage (guard.bpf.c) in slot XDPG_STAGE_GUARD while it has
 * work (a rule set is not empty): tail-called for packets neither list
 * decided. An empty slot costs the filter nothing measurable. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, XDPG_STAGES);
	__type(key, __u32);
	__type(value, __u32);
} xdpg_stages SEC(".maps");

/* The guard stage's gate, written by user space only (src/filter/guard/
 * gate.rs): bit k of word k / 64 set when the guard has nothing to do for
 * packets of index key k (guard_key.h): no rule group in the live rule set,
 * not a SYN-guarded port, no timed block possible. Read only while the
 * config's `tables` says the gate is open (XDPG_TABLES_GATE_OPEN). While it
 * is open the filter passes such packets itself, without the tail call into
 * the guard (the tail call, the guard's second parse, its config reads and
 * its index read: +34-49 ns per cache-cold packet, BENCHMARKS.md, "Issue 13,
 * seventh session"). Closed (the bit clear, as pins of older layouts have
 * it) every packet goes to the guard, as before the gate: user space closes
 * it while it edits the guard and opens it with the new bits after, so a
 * rule set and bits from another never meet. 16 KiB: stays in cache under
 * random ports. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_GATE_WORDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_gate SEC(".maps");

#endif
