// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdpg_decap: the backend side of the LB's IPIP mode, for hosts without
 * ipip/ip6_tunnel modules. IPv4-in-IPv4, IPv6-in-IPv6 and IPv4-in-IPv6
 * packets whose outer destination is one of the local addresses in
 * xdpg_decap_addr, and whose outer packet holds a whole inner one
 * (inner_fits), lose their outer header and go to the stack as the inner
 * packet. Everything else passes untouched. Its constants, structs and
 * maps are decap_consts.h, decap_structs.h and decap_maps.h. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "lb_consts.h"
#include "decap_consts.h"
#include "decap_structs.h"
#include "decap_maps.h"
#include "csum.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int counted(__u32 idx, __u64 bytes)
{
	struct xdpg_counter *c = bpf_map_lookup_elem(&xdpg_decap_cnt, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return XDP_PASS;
}

/* Whether the outer packet holds a whole inner one: the inner header
 * (l3_off from data, of the family the outer header names) within the
 * outer payload (payload bytes), and the inner packet's own length (IPv4
 * total length, IPv6 40 + payload length) too. The outer length must lie
 * within the frame (checked by the caller). Otherwise bytes the outer
 * packet does not carry, such as Ethernet padding or whatever a sender put
 * after it, would be delivered as part of the inner packet: such a packet
 * passes untouched, and the stack judges it as it would any tunnel packet.
 * An inner packet shorter than the outer payload is whole: the stack trims
 * the rest, as its tunnel drivers do. */
static __always_inline int inner_fits(void *data, void *data_end, __u32 l3_off, __u32 payload, __u16 inner_proto)
{
	/* At most 14 + 60 (an IPv4 header with options); a bound for the verifier. */
	if (l3_off > 128)
		return 0;
	if (inner_proto == ETH_P_IP) {
		struct iphdr *in = data + l3_off;
		if ((void *)(in + 1) > data_end || payload < sizeof(*in))
			return 0;
		if (in->version != 4 || in->ihl < 5)
			return 0;
		__u32 len = bpf_ntohs(in->tot_len);
		return len >= in->ihl * 4 && len <= payload;
	}
	struct ipv6hdr *in6 = data + l3_off;
	if ((void *)(in6 + 1) > data_end || payload < sizeof(*in6))
		return 0;
	if (in6->version != 6)
		return 0;
	return sizeof(*in6) + bpf_ntohs(in6->payload_len) <= payload;
}

/* RFC 6040 (normal mode) at decapsulation: an outer CE mark, set by a
 * congested router on the tunnel's path, reaches the transport only if it
 * is copied into the inner header, so an ECT(0) or ECT(1) inner packet
 * becomes CE (the inner IPv4 checksum updated incrementally; IPv6 has
 * none). An inner Not-ECT packet under an outer CE cannot carry the mark:
 * RFC 6040 says drop it, and the kernel's ipip and ip6_tunnel drivers do;
 * here it is left untouched (returns -1, counted as passed), so the stack
 * decides as for any tunnel packet: its tunnel driver drops it, and a host
 * without one drops a protocol it does not handle. (A drop counter of our
 * own would change the counters' layout for a packet the LB's own
 * encapsulation never makes: the LB copies the inner ECN outwards, so an
 * outer CE on a Not-ECT inner comes only from a router that marks
 * Not-ECT packets, against RFC 3168.) Other outer codepoints change
 * nothing: the inner one is as informative (RFC 6040 4.2). outer_ecn is
 * the outer header's two ECN bits. */
static __always_inline int ecn_decap(void *data, void *data_end, __u32 l3_off, __u16 inner_proto, __u32 outer_ecn)
{
	if (outer_ecn != 3)
		return 0;
	/* A bound for the verifier, as in inner_fits (which has passed). */
	if (l3_off > 128)
		return 0;
	if (inner_proto == ETH_P_IP) {
		struct iphdr *in = data + l3_off;
		if ((void *)(in + 1) > data_end)
			return 0;
		__u32 ecn = in->tos & 3;
		if (ecn == 0)
			return -1;
		if (ecn == 3)
			return 0;
		/* Version/IHL and TOS as one 16-bit word, as they sit. */
		__u16 *w = (__u16 *)in;
		__u16 from = *w;
		__u16 to = from | bpf_htons(3);
		*w = to;
		in->check = xdpg_csum_finish(xdpg_csum_replace16(xdpg_csum_start(in->check), from, to));
		return 0;
	}
	struct ipv6hdr *in6 = data + l3_off;
	if ((void *)(in6 + 1) > data_end)
		return 0;
	/* The traffic class's ECN bits: bits 5 and 4 of byte 1. */
	__u8 *b = (__u8 *)in6;
	__u32 ecn = (b[1] >> 4) & 3;
	if (ecn == 0)
		return -1;
	b[1] |= 0x30;
	return 0;
}

/* Drops the outer_len bytes after the Ethernet header. */
static __always_inline int strip(struct xdp_md *ctx, __u32 outer_len, __u16 inner_proto, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth;
	struct ethhdr *old = data;
	if ((void *)(old + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(&eth, old, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, (int)outer_len))
		return counted(XDPG_LB_DECAP_PASSED, bytes);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neweth = data;
	if ((void *)(neweth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(neweth->h_dest, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(neweth->h_source, eth.h_source, ETH_ALEN);
	neweth->h_proto = bpf_htons(inner_proto);
	return counted(XDPG_LB_DECAP_DONE, bytes);
}

SEC("xdp")
int xdpg_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct xdpg_decap_key key = {};

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return XDP_PASS;
		if (iph->version != 4 || iph->ihl < 5 || iph->protocol != IPPROTO_IPIP)
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		/* A fragmented tunnel packet is left to the stack. */
		if (iph->frag_off & bpf_htons(0x3FFF))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		__u32 hdr = iph->ihl * 4;
		__u32 tot = bpf_ntohs(iph->tot_len);
		if (tot < hdr || (void *)iph + tot > data_end ||
		    !inner_fits(data, data_end, sizeof(*eth) + hdr, tot - hdr, ETH_P_IP))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		key.addr[0] = iph->daddr;
		key.family = XDPG_LB_FAMILY_V4;
		if (!bpf_map_lookup_elem(&xdpg_decap_addr, &key))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		if (ecn_decap(data, data_end, sizeof(*eth) + hdr, ETH_P_IP, iph->tos & 3) < 0)
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		return strip(ctx, hdr, ETH_P_IP, bytes);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return XDP_PASS;
		if (ip6h->version != 6 || (ip6h->nexthdr != IPPROTO_IPIP && ip6h->nexthdr != IPPROTO_IPV6))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		__u16 inner_proto = ip6h->nexthdr == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6;
		/* Payload length 0 (a jumbogram's, or none) holds no inner packet. */
		__u32 payload = bpf_ntohs(ip6h->payload_len);
		if ((void *)(ip6h + 1) + payload > data_end ||
		    !inner_fits(data, data_end, sizeof(*eth) + sizeof(*ip6h), payload, inner_proto))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		__builtin_memcpy(key.addr, &ip6h->daddr, 16);
		key.family = XDPG_LB_FAMILY_V6;
		if (!bpf_map_lookup_elem(&xdpg_decap_addr, &key))
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		__u32 outer_ecn = (((__u8 *)ip6h)[1] >> 4) & 3;
		if (ecn_decap(data, data_end, sizeof(*eth) + sizeof(*ip6h), inner_proto, outer_ecn) < 0)
			return counted(XDPG_LB_DECAP_PASSED, bytes);
		return strip(ctx, sizeof(*ip6h), inner_proto, bytes);
	}
	return XDP_PASS;
}
