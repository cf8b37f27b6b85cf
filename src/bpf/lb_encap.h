/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPIP: the client's packet, untouched, inside an outer IPv4 or IPv6
 * header to the backend (4in4, 6in6, 4in6). The outer source is an
 * address of the configured prefix picked by the flow hash (and IPv6's
 * flow label is the hash), so ECMP and RSS on the way spread flows and a
 * flow's packets stay together; LoadBalancer::ipip_source_for predicts it.
 * The backend decapsulates with its ipip/ip6_tunnel device or with
 * xdpg_decap (decap.bpf.c). */
#ifndef XDPG_LB_ENCAP_H
#define XDPG_LB_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "hash.h"
#include "csum.h"
#include "lb_common.h"
#include "lb_nexthop.h"

/* The received frame's MACs, moved to the frame's new start after
 * bpf_xdp_adjust_head(-moved): a packet for the stack must stay addressed
 * to this host, or it is dropped as someone else's. */
static __always_inline void keep_macs(struct xdp_md *ctx, __u32 moved)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + moved + 12 > data_end)
		return;
	__builtin_memcpy(data, data + moved, 12);
}

/* The outer IPv4 identification (as it sits in the packet). The outer
 * header has DF clear, so routers past a narrower link fragment tunnel
 * packets (the decapsulator hands fragments to the stack, which
 * reassembles them), and reassembly keys on the ID: one ID for every
 * packet, as before, lets fragments of different packets mix under loss or
 * reordering (RFC 6864). So the ID varies per packet, without a helper
 * call: the inner ID, which senders that number their packets (Linux and
 * Windows, DF or not) change per packet. A sender may leave an atomic
 * datagram's ID at 0 (RFC 6864 4.1; FreeBSD does): then the 16-bit halves
 * of the transport header's bytes 4-7 XORed (TCP: the sequence number,
 * new per segment; UDP: length and checksum, new per payload), or the
 * inner header checksum for a packet shorter than that, never 0. Only
 * 4in4 exists (IPv6 in IPv4 is refused), so the inner header is IPv4.
 * tests/lb_fuzz.rs and tests/common/lb.rs predict the same. */
static __always_inline __u32 outer_id(struct iphdr *inner, void *data_end)
{
	__u32 id = inner->id;
	if (id)
		return id;
	__u32 *w = (void *)inner + ((inner->ihl * 4) & 0x3C) + 4;
	if ((void *)(w + 1) > data_end)
		id = inner->check;
	else
		id = (*w ^ (*w >> 16)) & 0xFFFF;
	return id ? id : 1;
}

static __always_inline int encap_v4(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				    struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u32 hash,
				    __u64 bytes, const int may_reply)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int verdict = XDP_PASS;
	__u32 src[4] = {};

	if (flow->family != XDPG_LB_FAMILY_V4)
		return drop_counted(XDPG_LB_DROP_UNSUPPORTED, bytes);
	struct iphdr *inner = data + XDPG_ETH_HLEN;
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;
	__u32 tos = inner->tos;
	__u32 id = outer_id(inner, data_end);
	__u32 saddr = cfg->ipip_v4_src | (bpf_htonl(hash) & cfg->ipip_v4_mask);
	__u32 daddr = be->addr[0];
	src[0] = saddr;
	__u32 outer_len = l3_len + sizeof(struct iphdr);
	struct xdpg_lb_nexthop *nh =
		backend_hop(ctx, be_id, be, src, IPPROTO_IPIP, outer_len, bytes, &verdict, may_reply);
	if (!nh && verdict < XDPG_NEED_NEIGH)
		return verdict;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return drop_counted(XDPG_LB_DROP_HEADROOM, bytes);
	if (!nh)
		keep_macs(ctx, sizeof(struct iphdr));
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = data + XDPG_ETH_HLEN;
	if ((void *)(outer + 1) > data_end)
		return XDP_DROP;
	/* The outer header as five 32-bit words, in the order they sit in
	 * memory (network byte order, loaded natively): version/IHL, TOS and
	 * total length; ID and fragment offset (0, DF clear); TTL, protocol and the
	 * checksum; source; destination. The checksum is summed from the same
	 * register values (one's-complement sums do not care about byte
	 * order). */
	__u32 w0 = 0x45 | (tos << 8) | ((__u32)bpf_htons(outer_len) << 16);
	__u32 w2 = XDPG_LB_OUTER_TTL | (IPPROTO_IPIP << 8);
	__u16 check = ~xdpg_csum_fold_words((__u64)w0 + id + w2 + saddr + daddr);
	w2 |= (__u32)check << 16;
	__u32 *o = (__u32 *)outer;
	o[0] = w0;
	o[1] = id;
	o[2] = w2;
	o[3] = saddr;
	o[4] = daddr;
	eth->h_proto = bpf_htons(ETH_P_IP);
	/* No neighbour, or an egress outside the devmap: the stack routes the
	 * tunnel packet (and resolves the neighbour). */
	if (!nh)
		return stack_pass(be_id, bytes, verdict);
	return emit(ctx, nh, bytes + sizeof(struct iphdr));
}

static __always_inline int encap_v6(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				    struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u32 hash,
				    __u64 bytes, const int may_reply)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int verdict = XDP_PASS;
	__u32 src[4];

	/* The inner DSCP and ECN, for the outer traffic class (RFC 6040's
	 * normal mode copies ECN; RFC 2983's uniform model DSCP): an IPv4
	 * inner header's TOS byte, an IPv6 one's traffic class, which spans
	 * bytes 0 and 1. Routers on the way queue and mark by the outer. */
	__u8 *v = data + XDPG_ETH_HLEN;
	if ((void *)(v + 2) > data_end)
		return XDP_DROP;
	__u32 tc = flow->family == XDPG_LB_FAMILY_V4 ? v[1] : (((v[0] << 8) | v[1]) >> 4) & 0xFF;
	src[0] = cfg->ipip_v6_src[0];
	src[1] = cfg->ipip_v6_src[1];
	src[2] = cfg->ipip_v6_src[2] | (bpf_htonl(xdpg_mix32(hash)) & cfg->ipip_v6_mask[0]);
	src[3] = cfg->ipip_v6_src[3] | (bpf_htonl(hash) & cfg->ipip_v6_mask[1]);
	__u8 next = flow->family == XDPG_LB_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	struct xdpg_lb_nexthop *nh =
		backend_hop(ctx, be_id, be, src, next, l3_len + sizeof(struct ipv6hdr), bytes, &verdict, may_reply);
	if (!nh && verdict < XDPG_NEED_NEIGH)
		return verdict;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
		return drop_counted(XDPG_LB_DROP_HEADROOM, bytes);
	if (!nh)
		keep_macs(ctx, sizeof(struct ipv6hdr));
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *outer = data + XDPG_ETH_HLEN;
	if ((void *)(outer + 1) > data_end)
		return XDP_DROP;
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	/* Version 6, the inner traffic class, and a flow label from the flow
	 * hash, so ECMP and RSS on the way spread flows. */
	*(__u32 *)outer = bpf_htonl((6u << 28) | (tc << 20) | (hash & 0xFFFFF));
	outer->payload_len = bpf_htons(l3_len);
	outer->nexthdr = next;
	outer->hop_limit = XDPG_LB_OUTER_TTL;
	__builtin_memcpy(&outer->saddr, src, 16);
	__builtin_memcpy(&outer->daddr, be->addr, 16);
	if (!nh)
		return stack_pass(be_id, bytes, verdict);
	return emit(ctx, nh, bytes + sizeof(struct ipv6hdr));
}

static __always_inline int fwd_ipip(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				    struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u32 hash,
				    __u64 bytes, const int may_reply)
{
	if (be->family == XDPG_LB_FAMILY_V4)
		return encap_v4(ctx, cfg, be_id, be, flow, l3_len, hash, bytes, may_reply);
	return encap_v6(ctx, cfg, be_id, be, flow, l3_len, hash, bytes, may_reply);
}

#endif
