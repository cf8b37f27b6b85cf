/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What every stage of the load balancer uses: how the rare paths stay out
 * of the hot one (XDPG_COLD) and how each map call site stays direct
 * (XDPG_DISTINCT), both measured; this CPU's scratch space; counting a
 * packet's fate; address helpers. */
#ifndef XDPG_LB_COMMON_H
#define XDPG_LB_COMMON_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "common.h"
#include "csum.h"
#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_maps.h"

/* Rare paths (ICMP, fragments, NAT replies, FIB refills) are BPF
 * subprograms rather than inlined into every caller: the program shrinks
 * from ~49 KB to ~37 KB of machine code and the hot path stays compact.
 * Their large temporaries live in xdpg_lb_scratch, since a program and the
 * subprograms it calls share 512 bytes of stack. */
#define XDPG_COLD static __noinline

/* Keeps a map call site to one map. clang merges the IPv4 and IPv6 calls
 * of a helper like conn_lookup into one call with the map picked at run
 * time; the verifier then can neither inline the lookup nor call the map's
 * own function, and every call goes through the generic helper's indirect
 * call (a retpoline here: about 20 ns on the hit path, measured). An empty
 * asm after the IPv4 call makes the two sites differ. */
#define XDPG_DISTINCT(x) asm volatile("" : "+r"(x))

#define XDPG_AF_INET 2
#define XDPG_AF_INET6 10
#define XDPG_ETH_HLEN 14

/* This CPU's scratch space for the cold paths' large temporaries. */
static __always_inline struct xdpg_lb_scratch *cpu_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&xdpg_lb_scratch, &zero);
}

static __always_inline void count(__u32 idx, __u64 bytes)
{
	struct xdpg_counter *c = bpf_map_lookup_elem(&xdpg_lb_cnt, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline int pass_counted(__u32 idx, __u64 bytes)
{
	count(idx, bytes);
	return XDP_PASS;
}

static __always_inline int drop_counted(__u32 idx, __u64 bytes)
{
	count(idx, bytes);
	return XDP_DROP;
}

static __always_inline void addr_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

static __always_inline int same_addr(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The Internet checksum of len bytes of buf (a message being built in
 * scratch: too-big messages, DSR probes). */
static __always_inline __u16 csum_of(__u32 *buf, __u32 len)
{
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, len, 0);
	return xdpg_csum_finish(sum < 0 ? 0 : (__u32)sum);
}

#endif
