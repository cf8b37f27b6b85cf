/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The load balancer's flow hash, mirrored bit for bit in src/lb/hash.rs so
 * LoadBalancer::backend_for predicts the kernel's choice. The verdict tests
 * prove the two agree.
 *
 * Words are taken as they sit in the packet (network order, loaded
 * natively). Pairs of 32-bit words form 64-bit lanes; each lane is
 * multiplied by its own odd constant and the products summed, so the
 * multiplies run in parallel (a murmur-style chain of ten serial rounds
 * cost ~25 ns here, this ~5 ns). Folding the 64-bit sum and a murmur3
 * finaliser give every input bit a say in every output bit. */
#ifndef XDPG_LB_HASH_H
#define XDPG_LB_HASH_H

#include <linux/types.h>
#include "hash.h"
#include "lb_structs.h"

#define XDPG_LB_K1 0x9E3779B97F4A7C15ull
#define XDPG_LB_K2 0xC2B2AE3D27D4EB4Full
#define XDPG_LB_K3 0x165667B19E3779F9ull
#define XDPG_LB_K4 0xD6E8FEB86659FD93ull
#define XDPG_LB_K5 0xFF51AFD7ED558CCDull

static __always_inline __u64 xdpg_lb_lane(__u32 lo, __u32 hi)
{
	return (__u64)lo | ((__u64)hi << 32);
}

/* Hash of a flow. With src_only, only the source address counts (clients
 * stick to one backend whatever their ports or the VIP's port). */
static __always_inline __u32 xdpg_lb_flow_hash(const struct xdpg_lb_flow *f, __u32 seed, int src_only)
{
	__u64 h = (xdpg_lb_lane(f->src[0], f->src[1]) ^ seed) * XDPG_LB_K1 +
		  xdpg_lb_lane(f->src[2], f->src[3]) * XDPG_LB_K2;
	if (!src_only) {
		__u32 ports = (__u32)f->sport | ((__u32)f->dport << 16);
		__u32 kind = (__u32)f->proto | ((__u32)f->family << 8);
		h += xdpg_lb_lane(f->dst[0], f->dst[1]) * XDPG_LB_K3 + xdpg_lb_lane(f->dst[2], f->dst[3]) * XDPG_LB_K4 +
		     xdpg_lb_lane(ports, kind) * XDPG_LB_K5;
	}
	return xdpg_mix32((__u32)(h >> 32) ^ (__u32)h);
}

#endif
