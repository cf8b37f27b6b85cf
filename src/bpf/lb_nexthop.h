/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The next hop towards a backend, and out of the program: the FIB's
 * answer (bpf_fib_lookup), cached per CPU; the route MTU (too big: an ICMP
 * message back, send_too_big in lb_icmp.h); what happens without a
 * resolved neighbour (the stack resolves it: stack_pass, dsr_probe); the
 * egress chosen in the devmap, or the stack when it is not there; the MACs
 * written and XDP_TX or XDP_REDIRECT. L2 DSR needs nothing else,
 * so its delivery (fwd_dsr) ends this file.
 *
 * Each CPU reuses a backend's FIB answer (egress, MACs, route MTU) for
 * nexthop_ttl jiffies, since a FIB lookup costs more than the rest of the
 * hot path. Times are jiffies: reading them is free, a precise clock read
 * costs ~30 ns in a VM. */
#ifndef XDPG_LB_NEXTHOP_H
#define XDPG_LB_NEXTHOP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_common.h"
#include "lb_parsing.h"

/* "Too big for an MTU of m", as a return value below -1 (-1 means go on,
 * >= 0 is a verdict). */
#define TOO_BIG(m) (-2 - (int)(m))
#define TOO_BIG_MTU(rc) ((__u32)(-2 - (rc)))

/* fib_next_hop's and backend_hop's answer when the route is known but its
 * neighbour is not resolved: above every XDP verdict, so `rc >= 0` still
 * means "stop here" to callers that do not handle it themselves. */
#define XDPG_NEED_NEIGH 0x100

/* backend_hop's answer when the next hop's egress is not in the devmap (an
 * interface never added, removed with set --no-redirect, or deleted and
 * made again): XDP may not send the frame there, so the caller passes the
 * packet to the stack as for XDPG_NEED_NEIGH, rewritten but with the MACs
 * it was received with, and the stack forwards it (counted as
 * passed_no_devmap by stack_pass). Writing the next hop's MACs first made
 * the stack drop every such frame as another host's (PACKET_OTHERHOST). */
#define XDPG_NO_DEVMAP 0x101

/* Answers a packet too big for its next hop with an ICMP message
 * (lb_icmp.h, with the other messages the LB sends). */
XDPG_COLD int send_too_big(struct xdp_md *ctx, __u32 mtu, __u32 tot_len);

/* Asks the FIB for the next hop towards dst. Returns -1 to go on (fib is
 * filled), TOO_BIG(mtu) when the packet does not fit the route's MTU,
 * XDPG_NEED_NEIGH (uncounted) when the next hop's neighbour is not
 * resolved, else the verdict for the untouched packet. */
static __always_inline int fib_next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u8 family, const __u32 *src,
					const __u32 *dst, __u8 l4_proto, __u32 tot_len, __u64 bytes)
{
	fib->l4_protocol = l4_proto;
	fib->tot_len = tot_len;
	fib->ifindex = ctx->ingress_ifindex;
	if (family == XDPG_LB_FAMILY_V4) {
		fib->family = XDPG_AF_INET;
		fib->ipv4_src = src[0];
		fib->ipv4_dst = dst[0];
	} else {
		fib->family = XDPG_AF_INET6;
		addr_copy(fib->ipv6_src, src);
		addr_copy(fib->ipv6_dst, dst);
	}
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		return -1;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		/* The caller makes the stack resolve it (the MACs are not filled). */
		return XDPG_NEED_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return TOO_BIG(fib->mtu_result);
	default:
		return pass_counted(XDPG_LB_PASS_NO_ROUTE, bytes);
	}
}

/* A packet whose backend's next hop has no resolved neighbour, on its way
 * to the stack. Counted when the packet is on its way, not when the FIB
 * answers: a packet dropped after all (no room to encapsulate) is counted
 * as that drop only. */
static __always_inline void count_no_neigh(__u32 be_id, __u64 bytes)
{
	count(XDPG_LB_PASS_NO_NEIGH, bytes);
	struct xdpg_lb_backend_stats *bs = bpf_map_lookup_elem(&xdpg_lb_becnt, &be_id);
	if (bs) {
		bs->no_neigh_packets++;
		bs->no_neigh_bytes += bytes;
	}
}

/* Counts a packet rewritten for backend be_id that the stack forwards
 * (why: XDPG_NEED_NEIGH, its next hop is unresolved; XDPG_NO_DEVMAP, its
 * egress is not in the devmap) and passes it. A subprogram, so its map
 * lookups cost the callers' frames nothing (lb_icmp's is near the shared
 * limit). */
XDPG_COLD int stack_pass(__u32 be_id, __u64 bytes, int why)
{
	if (why == XDPG_NO_DEVMAP)
		return pass_counted(XDPG_LB_PASS_NO_DEVMAP, bytes);
	count_no_neigh(be_id, bytes);
	return XDP_PASS;
}

/* Chooses the egress ifindex for XDP_REDIRECT, before the frame is
 * rewritten. Returns nonzero when the devmap does not hold it: the frame
 * must then keep its MACs for the stack. bpf_redirect_map only records the
 * target for the XDP_REDIRECT the program returns later; a packet that
 * gets another verdict after all leaves it unused, and the next packet's
 * call replaces it. Out of the ingress (XDP_TX) needs no devmap. The hot
 * path's cost is unchanged by reasoning, not measured: the same one helper
 * call per packet that emit_to made before, only earlier. */
static __always_inline int devmap_miss(struct xdp_md *ctx, __u32 ifindex)
{
	return ifindex != ctx->ingress_ifindex && bpf_redirect_map(&xdpg_lb_devmap, ifindex, XDP_PASS) != XDP_REDIRECT;
}

/* Asks the FIB for the next hop towards backend be_id and writes the answer
 * (with the route MTU) into this CPU's cache entry for it, valid for the
 * configured time (none: it is only this packet's answer). The question's
 * length and L4 protocol come packed as tot_len | l4_proto << 16 (a
 * subprogram takes five arguments). Returns -1 to go on, TOO_BIG(mtu),
 * XDPG_NEED_NEIGH (not counted: the caller counts what it makes of the
 * packet, with stack_pass or dsr_probe), or the verdict. Only a
 * successful lookup is cached: any other answer leaves the entry as it was
 * (a "fragmentation needed" answer fills neither the MACs nor the egress,
 * and caching it sent every packet to that backend out of the ingress with
 * zero MACs until it expired). */
XDPG_COLD int refill_hop(struct xdp_md *ctx, __u32 be_id, struct xdpg_lb_backend *be, const __u32 *src, __u32 packed)
{
	struct xdpg_lb_scratch *scratch = cpu_scratch();
	/* Looked up again here rather than passed: keeps the callers' frames
	 * (lb_icmp's above all) within the shared 512 bytes. */
	struct xdpg_lb_nexthop *nh = bpf_map_lookup_elem(&xdpg_lb_nexthop, &be_id);
	if (!scratch || !nh)
		return XDP_PASS;
	struct bpf_fib_lookup *fib = &scratch->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	__u64 bytes = ctx->data_end - ctx->data;
	__u32 zero = 0;
	__u32 tot_len = packed & 0xFFFF;
	__u8 l4_proto = packed >> 16;
	const __u32 *dst = be->addr;
	__u8 family = be->family;
	__u32 gen = be->gen;
	int rc = fib_next_hop(ctx, fib, family, src, dst, l4_proto, tot_len, bytes);
	if (rc != -1)
		return rc;
	struct xdpg_lb_config *cfg = bpf_map_lookup_elem(&xdpg_lb_cfg, &zero);
	__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
	nh->ifindex = fib->ifindex;
	nh->ingress = ctx->ingress_ifindex;
	nh->gen = gen;
	nh->expires = cfg && cfg->nexthop_ttl ? bpf_jiffies64() + cfg->nexthop_ttl : 0;
	/* The route MTU: the FIB reports it for a length nothing fits. */
	__u16 mtu = 0xFFFF;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = family == XDPG_LB_FAMILY_V4 ? XDPG_AF_INET : XDPG_AF_INET6;
	fib->l4_protocol = l4_proto;
	fib->tot_len = 0xFFFF;
	fib->ifindex = ctx->ingress_ifindex;
	if (family == XDPG_LB_FAMILY_V4) {
		fib->ipv4_src = src[0];
		fib->ipv4_dst = dst[0];
	} else {
		addr_copy(fib->ipv6_src, src);
		addr_copy(fib->ipv6_dst, dst);
	}
	if (bpf_fib_lookup(ctx, fib, sizeof(*fib), 0) == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		mtu = fib->mtu_result;
	nh->mtu = mtu;
	return -1;
}

/* No resolved neighbour for an L2 DSR backend's next hop. The packet is
 * addressed to the VIP, which the LB host's stack cannot route, so it
 * becomes a probe the stack can route: an ICMP echo reply (8 bytes, id and
 * sequence 0) from the client to the backend address, with the client's
 * TTL. The stack forwards it and resolves the backend's next hop on the way;
 * the backend's stack drops an unsolicited echo reply without answering.
 * Rejected: passing the packet as it is (the stack answers the client
 * "network unreachable", which aborts a TCP connect) and sending ARP or
 * neighbour solicitations from XDP (the kernel creates no entry for an
 * answer it did not ask for). The cost: the client's packet itself is
 * lost; a TCP SYN is retransmitted after its 1 s timeout, later segments
 * after their RTO. The frame is cut (or grown: an IPv4 fragment of under 8
 * bytes, on a link that does not pad frames to 60 bytes, is shorter than
 * the probe) to the probe's length. Returns XDP_PASS, counted as
 * passed_no_neighbour (for backend be_id too), or XDP_DROP when the driver
 * has no room to grow the frame (counted as drop_headroom). */
XDPG_COLD int dsr_probe(struct xdp_md *ctx, __u32 be_id, struct xdpg_lb_backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct xdpg_lb_scratch *sc = cpu_scratch();
	if (!sc)
		return XDP_DROP;
	if (be->family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		__u32 saddr = iph->saddr;
		__u32 daddr = be->addr[0];
		__u8 ttl = iph->ttl;
		__u8 tos = iph->tos;
		int delta = (int)(XDPG_ETH_HLEN + 20 + 8) - (int)bytes;
		if (bpf_xdp_adjust_tail(ctx, delta))
			return drop_counted(XDPG_LB_DROP_HEADROOM, bytes);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		struct iphdr *out = data + XDPG_ETH_HLEN;
		__u32 *icmp = data + XDPG_ETH_HLEN + 20;
		if ((void *)(icmp + 2) > data_end)
			return XDP_DROP;
		xdpg_ipv4_hdr_write(out, tos, 28, 0, ttl, IPPROTO_ICMP, saddr, daddr);
		/* Type 0 (echo reply), code 0, checksum 0xFFFF, id 0, seq 0. */
		icmp[0] = bpf_htonl(0xFFFF);
		icmp[1] = 0;
		count_no_neigh(be_id, bytes);
		return XDP_PASS;
	}
	struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
	if ((void *)(ip6h + 1) > data_end)
		return XDP_DROP;
	/* The ICMPv6 checksum covers a pseudo-header: built in scratch. */
	__u32 *w = sc->icmp;
	__builtin_memcpy(&w[0], &ip6h->saddr, 16);
	addr_copy(&w[4], be->addr);
	w[8] = bpf_htonl(8);
	w[9] = bpf_htonl(IPPROTO_ICMPV6);
	w[10] = bpf_htonl(XDPG_ICMPV6_ECHO_REPLY << 24);
	w[11] = 0;
	((__u16 *)w)[21] = csum_of(w, 48);
	__u8 hops = ip6h->hop_limit;
	int delta = (int)(XDPG_ETH_HLEN + 40 + 8) - (int)bytes;
	if (bpf_xdp_adjust_tail(ctx, delta))
		return drop_counted(XDPG_LB_DROP_HEADROOM, bytes);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *out = data + XDPG_ETH_HLEN;
	if ((void *)out + 48 > data_end)
		return XDP_DROP;
	*(__u32 *)out = bpf_htonl(6u << 28);
	out->payload_len = bpf_htons(8);
	out->nexthdr = IPPROTO_ICMPV6;
	out->hop_limit = hops;
	__builtin_memcpy(&out->saddr, &w[0], 16);
	__builtin_memcpy(&out->daddr, &w[4], 16);
	__builtin_memcpy((void *)(out + 1), &w[10], 8);
	count_no_neigh(be_id, bytes);
	return XDP_PASS;
}

/* The next hop towards a backend: this CPU's cached FIB answer while it is
 * fresh (and for the same backend slot generation and ingress), else a
 * FIB lookup; its egress chosen for XDP_REDIRECT (devmap_miss). Returns the
 * cache entry holding the hop, or NULL with *verdict set for the untouched
 * packet, or to XDPG_NEED_NEIGH or XDPG_NO_DEVMAP (both >= XDPG_NEED_NEIGH):
 * the caller then hands the stack the packet rewritten but with the MACs it
 * came with (for XDPG_NEED_NEIGH one that makes the stack resolve the
 * neighbour: dsr_probe for L2 DSR), and counts it (stack_pass, dsr_probe). */
static __always_inline struct xdpg_lb_nexthop *backend_hop(struct xdp_md *ctx, __u32 be_id, struct xdpg_lb_backend *be,
							   const __u32 *src, __u8 l4_proto, __u32 tot_len, __u64 bytes,
							   int *verdict, const int may_reply)
{
	struct xdpg_lb_nexthop *nh = bpf_map_lookup_elem(&xdpg_lb_nexthop, &be_id);
	if (!nh) {
		*verdict = pass_counted(XDPG_LB_PASS_NO_ROUTE, bytes);
		return NULL;
	}
	if (!(nh->expires > bpf_jiffies64() && nh->gen == be->gen && nh->ingress == ctx->ingress_ifindex)) {
		int rc = refill_hop(ctx, be_id, be, src, (tot_len & 0xFFFF) | ((__u32)l4_proto << 16));
		if (rc >= 0) {
			*verdict = rc;
			return NULL;
		}
		if (rc < -1) {
			*verdict = may_reply ? send_too_big(ctx, TOO_BIG_MTU(rc), tot_len)
					     : drop_counted(XDPG_LB_DROP_MTU, bytes);
			return NULL;
		}
	}
	if (tot_len > nh->mtu) {
		*verdict = may_reply ? send_too_big(ctx, nh->mtu, tot_len) : drop_counted(XDPG_LB_DROP_MTU, bytes);
		return NULL;
	}
	if (devmap_miss(ctx, nh->ifindex)) {
		*verdict = XDPG_NO_DEVMAP;
		return NULL;
	}
	return nh;
}

/* Writes the next hop's MACs and sends the frame on its way: out of the
 * ingress, or to the egress devmap_miss chose (the caller asked it). */
static __always_inline int emit_to(struct xdp_md *ctx, const __u8 *dmac, const __u8 *smac, __u32 ifindex, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	if (ifindex == ctx->ingress_ifindex) {
		count(XDPG_LB_EV_TX, bytes);
		return XDP_TX;
	}
	count(XDPG_LB_EV_REDIRECT, bytes);
	return XDP_REDIRECT;
}

static __always_inline int emit(struct xdp_md *ctx, struct xdpg_lb_nexthop *nh, __u64 bytes)
{
	return emit_to(ctx, nh->dmac, nh->smac, nh->ifindex, bytes);
}

/* ---- L2 DSR ------------------------------------------------------------- */

/* L2 DSR: the packet goes to the backend as it is, only the Ethernet
 * header changes (to the next hop's MACs); the backend answers the client
 * from the VIP, which it holds on a loopback. Only XDP can do that: with
 * the egress not in the devmap the packet goes to the stack untouched,
 * which routes it by its destination, the VIP (a node's blackhole route
 * for it drops it, docs/deployment.md). */
static __always_inline int fwd_dsr(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u64 bytes,
				   const int may_reply)
{
	int verdict = XDP_PASS;
	if (be->family != flow->family)
		return drop_counted(XDPG_LB_DROP_UNSUPPORTED, bytes);
	struct xdpg_lb_nexthop *nh =
		backend_hop(ctx, be_id, be, flow->src, flow->proto, l3_len, bytes, &verdict, may_reply);
	if (!nh) {
		if (verdict == XDPG_NEED_NEIGH)
			return dsr_probe(ctx, be_id, be);
		return verdict == XDPG_NO_DEVMAP ? stack_pass(be_id, bytes, verdict) : verdict;
	}
	return emit(ctx, nh, bytes);
}

#endif
