/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The decapsulator's maps. Names are stable and fit the kernel's 15
 * characters (bpftool map dump name ...). */
#ifndef XDPG_DECAP_MAPS_H
#define XDPG_DECAP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "common.h"
#include "decap_consts.h"
#include "decap_structs.h"

/* Config, one entry, mmapped by user space: the common header only (the
 * data plane reads nothing here). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_decap_config);
} xdpg_decap_cfg SEC(".maps");

/* Local tunnel endpoints: outer destinations we decapsulate for. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct xdpg_decap_key);
	__type(value, __u32);
} xdpg_decap_addr SEC(".maps");

/* Decapsulated and passed packets, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPG_LB_DECAP_COUNT);
	__type(key, __u32);
	__type(value, struct xdpg_counter);
} xdpg_decap_cnt SEC(".maps");

#endif
