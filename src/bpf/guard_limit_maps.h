/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The guard's rate-limit and timed-block maps. The spec and counter arrays
 * are sized by user space with the rule counters (by rule id). */
#ifndef XDPG_GUARD_LIMIT_MAPS_H
#define XDPG_GUARD_LIMIT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_limit_structs.h"

/* Config, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_limit_config);
} xdpg_l_cfg SEC(".maps");

/* Each rate-limit rule's limit, by rule id (written before the rule set
 * naming it goes live; a new rule gets a new id). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_limit_spec);
} xdpg_l_spec SEC(".maps");

/* What each rule's limit dropped and blocked, by rule id, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_limit_counter);
} xdpg_l_cnt SEC(".maps");

/* The count-min sketch, per CPU (no atomics, no cache line bouncing
 * between CPUs; RSS keeps a source's packets on one queue, so per-CPU
 * counts are its counts), in chunks (guard_limit_consts.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_RL_CHUNKS);
	__type(key, __u32);
	__type(value, struct xdpg_sketch_chunk);
} xdpg_l_sketch SEC(".maps");

/* Exact buckets of the keys the sketch found heavy. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPG_RL_BUCKETS);
	__type(key, struct xdpg_limit_key);
	__type(value, struct xdpg_limit_bucket);
} xdpg_l_lru SEC(".maps");

/* The limiter's own counters, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_limit_stats);
} xdpg_l_stats SEC(".maps");

/* Timed blocks: prefixes with an expiry, added by user space or by a rate
 * limit's auto-block. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XDPG_TB_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xdpg_tblock_key);
	__type(value, struct xdpg_tblock);
} xdpg_l_tblk SEC(".maps");

#endif
