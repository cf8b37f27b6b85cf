/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The SYN guard's maps (guard_syn.h), in the guard stage's object. */
#ifndef XDPG_GUARD_SYN_MAPS_H
#define XDPG_GUARD_SYN_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_syn_structs.h"

/* Config, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_syn_config);
} xdpg_syn_cfg SEC(".maps");

/* Destination port -> its slot + 1 (0: not protected). An array (one
 * inlined lookup, ~2 ns) rather than a hash of the few protected ports
 * (~20 ns a lookup): every TCP packet the guard sees reads it. 8-byte
 * values: the kernel's stride for an array element. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_SYN_IDX_ENTRIES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} xdpg_syn_idx SEC(".maps");

/* Protected ports' policies and SYN rates, by slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPG_SYN_MAX_PORTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_syn_port);
} xdpg_syn_slots SEC(".maps");

/* Protected ports' counters, by slot, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_SYN_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct xdpg_syn_counters);
} xdpg_syn_cnt SEC(".maps");

/* Sources that completed a handshake -> when last seen (guard_now()).
 * Bounded; the least recently used goes first when it is full. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPG_SYN_KNOWN_MAX);
	__type(key, struct xdpg_syn_key);
	__type(value, __u64);
} xdpg_syn_known SEC(".maps");

/* Per CPU, the SYN's TCP header copied for the cookie helpers: 60 bytes
 * here rather than on the stack, where the guard's deepest call chain (the
 * program, the rule walk's bpf_loop callback, limit_over) would pass the
 * 512-byte BPF stack limit (the verifier refused it at 528). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_syn_scratch);
} xdpg_syn_tmp SEC(".maps");

#endif
