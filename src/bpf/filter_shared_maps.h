/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The filter's maps that its guard stage (guard.bpf.c) uses too: the guard
 * is loaded with these maps' fds (libbpf reuses them), so it reads the
 * filter's monitor switch, counts in the filter's reason counters, hands
 * packets on to the same next program and sends its drop events into the
 * same ring (filter_events.h, included at the end). Also the two helpers
 * both programs use on these maps: count() and pass_on(). */
#ifndef XDPG_FILTER_SHARED_MAPS_H
#define XDPG_FILTER_SHARED_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "filter_structs.h"

/* Config and bookkeeping, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_filter_config);
} xdpg_filter_cfg SEC(".maps");

/* Packets and bytes per verdict reason, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_REASON_COUNT);
	__type(key, __u32);
	__type(value, struct xdpg_counter);
} xdpg_filter_cnt SEC(".maps");

/* Slot 0: the program that gets what the filter passes (the LB, or yours). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xdpg_next SEC(".maps");

/* Counts a packet under its verdict reason. */
static __always_inline void count(__u32 reason, __u64 bytes)
{
	struct xdpg_counter *c = bpf_map_lookup_elem(&xdpg_filter_cnt, &reason);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* Passed packets go on to the next program (xdpg_next[0]: the LB), if any. */
static __always_inline int pass_on(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &xdpg_next, 0);
	return XDP_PASS;
}

#include "filter_events.h"

#endif
