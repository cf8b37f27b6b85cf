/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The guard stage's own maps (the ones it shares with the filter are in
 * filter_shared_maps.h). Rule tables hold two halves each: a rule set is
 * compiled into the idle half and made live with one store of the config's
 * `rules`. User space sizes the capacity-dependent maps before loading. */
#ifndef XDPG_GUARD_MAPS_H
#define XDPG_GUARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_structs.h"

/* Config and bookkeeping, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_guard_config);
} xdpg_guard_cfg SEC(".maps");

/* The rule index, both halves (half 1 from word XDPG_GK_WORDS on): a
 * packet's key -> its group (16 bits, 4 a word). One map per table, not one
 * per half: a lookup site that picks between two maps keeps the verifier
 * from inlining the array lookup, and the helper call it falls back to
 * (an indirect call, through a retpoline here) cost ~20 ns a lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * XDPG_GK_WORDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_g_idx SEC(".maps");

/* Groups, both halves (half 1 from config groups_per_half on): each a run of
 * entries of xdpg_g_ref. Group 0 of a half is empty. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_rule_group);
} xdpg_g_grp SEC(".maps");

/* The groups' entries, both halves, two per word (entry 2k in bits 0-31,
 * 2k + 1 in bits 32-63: an array's values are 8-byte strided): each a
 * record's index in xdpg_g_rec (the half's base included). A group is a run of these, so a rule's records are
 * stored once however many groups hold it (a rule without a destination
 * port is in every group of its protocol): 4 bytes per group entry rather
 * than a 64-byte record, and the records of such rules stay the same few
 * cache lines for every port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_g_ref SEC(".maps");

/* Compiled rules, both halves (half 1 from the capacity's midpoint): one
 * record per rule, or per source-port range of a rule, in priority order. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_rule_rec);
} xdpg_g_rec SEC(".maps");

/* Packets and bytes each rule matched, per CPU, by rule id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_counter);
} xdpg_g_cnt SEC(".maps");

/* The rule sets as text ("ID RULE" lines), both halves: the source of truth
 * a reopening process reads back. Never read by the data plane. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_g_text SEC(".maps");

/* Named sets' prefixes, all sets in one trie, keyed by physical set. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xdpg_set_key);
	__type(value, __u32);
} xdpg_g_sets SEC(".maps");

/* Named sets' names and live physical sets, by slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_MAX_SETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_set_name);
} xdpg_g_setnm SEC(".maps");

#endif
