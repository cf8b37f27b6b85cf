/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NAT: client -> VIP becomes client -> backend (address, and port when
 * the backend has one), with every checksum fixed incrementally and the
 * TTL taken as a router does; each new flow remembers how to translate its
 * replies (xdpg_lb_nat4/6, keyed by the reply's flow), and replies from
 * the backend, or ICMP errors about its flows, go back to the client as
 * from the VIP (nat_reply, nat_to_client). Without a resolved neighbour a
 * rewritten packet goes to the stack with its TTL given back. */
#ifndef XDPG_LB_NAT_H
#define XDPG_LB_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "lb_common.h"
#include "lb_parsing.h"
#include "lb_select.h"
#include "lb_nexthop.h"

/* ---- toward the backend ------------------------------------------------- */

/* Which address and port a NAT rewrite changes. */
#define NAT_DST 0 /* client -> VIP becomes client -> backend */
#define NAT_SRC 1 /* backend -> client becomes VIP -> client */

/* Rewrites one address and port of a TCP/UDP packet, fixing the IPv4 header
 * and L4 checksums incrementally, and decrements the TTL/hop limit. The
 * caller checked the TTL and the L4 header's bounds (l4_off, 8+ bytes). */
static __always_inline int nat_rewrite(struct xdp_md *ctx, __u8 family, __u8 proto, __u32 l4_off, int which,
				       const __u32 *new_addr, __u16 new_port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l4_sum_fix = 0; /* the L4 checksum's change, as a running sum */
	int l4_changed = 0;

	if (l4_off > XDPG_LB_MAX_L4_OFFSET)
		return -1;
	if (family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return -1;
		__u32 *field = which == NAT_DST ? &iph->daddr : &iph->saddr;
		__u32 old = *field;
		__u32 sum = xdpg_csum_start(iph->check);
		sum = xdpg_csum_replace32(sum, old, new_addr[0]);
		__u16 old_ttl_word = *(__u16 *)&iph->ttl;
		iph->ttl--;
		sum = xdpg_csum_replace16(sum, old_ttl_word, *(__u16 *)&iph->ttl);
		iph->check = xdpg_csum_finish(sum);
		*field = new_addr[0];
		l4_sum_fix = xdpg_csum_replace32(0, old, new_addr[0]);
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__u32 *field = which == NAT_DST ? (__u32 *)&ip6h->daddr : (__u32 *)&ip6h->saddr;
		__u32 fix = 0;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			fix = xdpg_csum_replace32(fix, field[i], new_addr[i]);
			field[i] = new_addr[i];
		}
		ip6h->hop_limit--;
		l4_sum_fix = fix;
	}

	__u16 *sum_field;
	__u16 *port_field;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;
		if ((void *)(th + 1) > data_end)
			return -1;
		sum_field = &th->check;
		port_field = which == NAT_DST ? &th->dest : &th->source;
	} else {
		struct udphdr *uh = data + l4_off;
		if ((void *)(uh + 1) > data_end)
			return -1;
		sum_field = &uh->check;
		port_field = which == NAT_DST ? &uh->dest : &uh->source;
		/* IPv4 UDP without a checksum stays without one. */
		if (family == XDPG_LB_FAMILY_V4 && *sum_field == 0)
			l4_changed = -1;
	}
	if (new_port && *port_field != new_port) {
		l4_sum_fix = xdpg_csum_replace16(l4_sum_fix, *port_field, new_port);
		*port_field = new_port;
	}
	if (l4_changed == 0) {
		__u16 check = xdpg_csum_finish(xdpg_csum_start(*sum_field) + l4_sum_fix);
		if (proto == IPPROTO_UDP && check == 0)
			check = 0xFFFF;
		*sum_field = check;
	}
	return 0;
}

/* The TTL (IPv4) or hop limit (IPv6) of the packet. */
static __always_inline int read_ttl(void *data, void *data_end, __u8 family)
{
	if (family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return 0;
		return iph->ttl;
	}
	struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
	if ((void *)(ip6h + 1) > data_end)
		return 0;
	return ip6h->hop_limit;
}

/* Gives back the TTL (hop limit) a NAT rewrite took, before a rewritten
 * packet goes to the stack, which takes it itself when it forwards. */
static __always_inline void undo_ttl(struct xdp_md *ctx, __u8 family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return;
		__u16 old = *(__u16 *)&iph->ttl;
		iph->ttl++;
		iph->check =
			xdpg_csum_finish(xdpg_csum_replace16(xdpg_csum_start(iph->check), old, *(__u16 *)&iph->ttl));
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		if ((void *)(ip6h + 1) > data_end)
			return;
		ip6h->hop_limit++;
	}
}

static __always_inline int fwd_nat(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len,
				   __u64 bytes, const int may_reply)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int verdict = XDP_PASS;

	if (be->family != flow->family)
		return drop_counted(XDPG_LB_DROP_UNSUPPORTED, bytes);
	/* A router hop: the stack sends the time-exceeded message. */
	if (read_ttl(data, data_end, flow->family) <= 1)
		return pass_counted(XDPG_LB_PASS_TTL, bytes);
	__u16 port = be->port;
	struct xdpg_lb_nexthop *nh =
		backend_hop(ctx, be_id, be, flow->src, flow->proto, l3_len, bytes, &verdict, may_reply);
	if (!nh && verdict < XDPG_NEED_NEIGH)
		return verdict;
	if (nat_rewrite(ctx, flow->family, flow->proto, l4_off, NAT_DST, be->addr, port) < 0)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	if (!nh) {
		/* The stack forwards it to the backend (resolving the neighbour). */
		undo_ttl(ctx, flow->family);
		return stack_pass(be_id, bytes, verdict);
	}
	return emit(ctx, nh, bytes);
}

/* ---- reply state -------------------------------------------------------- */

static __always_inline struct xdpg_lb_nat_rev *nat_lookup(const struct xdpg_lb_flow *flow)
{
	if (flow->family == XDPG_LB_FAMILY_V4) {
		union xdpg_lb_flow4_words k;
		flow4_key(&k, flow);
		struct xdpg_lb_nat_rev *rev = bpf_map_lookup_elem(&xdpg_lb_nat4, &k.k);
		XDPG_DISTINCT(rev);
		return rev;
	}
	return bpf_map_lookup_elem(&xdpg_lb_nat6, flow);
}

static __always_inline void nat_update(const struct xdpg_lb_flow *flow, struct xdpg_lb_nat_rev *rev)
{
	if (flow->family == XDPG_LB_FAMILY_V4) {
		union xdpg_lb_flow4_words k;
		flow4_key(&k, flow);
		long rc = bpf_map_update_elem(&xdpg_lb_nat4, &k.k, rev, BPF_ANY);
		XDPG_DISTINCT(rc);
		return;
	}
	bpf_map_update_elem(&xdpg_lb_nat6, flow, rev, BPF_ANY);
}

union xdpg_lb_nat_rev_words {
	struct xdpg_lb_nat_rev r;
	__u64 w[3];
};

/* Remembers how to translate the replies of a new NAT flow. A repeated
 * SYN finds the same entry and leaves it alone (an LRU update would take
 * a new element and free the old one). Keys and values are built from
 * whole words (see the key unions). */
static __always_inline void nat_remember(struct xdpg_lb_flow *flow, struct xdpg_lb_backend *be, __u32 vip_index)
{
	union xdpg_lb_flow_words reply;
	union xdpg_lb_nat_rev_words rev;
	__u16 sport = be->port ? be->port : flow->dport;

	reply.w[0] = be->addr[0] | ((__u64)be->addr[1] << 32);
	reply.w[1] = be->addr[2] | ((__u64)be->addr[3] << 32);
	reply.w[2] = flow->src[0] | ((__u64)flow->src[1] << 32);
	reply.w[3] = flow->src[2] | ((__u64)flow->src[3] << 32);
	reply.w[4] = sport | ((__u64)flow->sport << 16) | ((__u64)flow->proto << 32) | ((__u64)flow->family << 40);
	rev.w[0] = flow->dst[0] | ((__u64)flow->dst[1] << 32);
	rev.w[1] = flow->dst[2] | ((__u64)flow->dst[3] << 32);
	rev.w[2] = flow->dport | ((__u64)vip_index << 32);
	__u64 *old = (__u64 *)nat_lookup(&reply.f);
	if (old && old[0] == rev.w[0] && old[1] == rev.w[1] && old[2] == rev.w[2])
		return;
	nat_update(&reply.f, &rev.r);
}

/* ---- back to the client ------------------------------------------------- */

/* NAT for an ICMP error about a NAT flow, in either direction:
 * - toward the backend (an error quoting a VIP's reply, from the client's
 *   side): the outer destination and the quoted source address and port
 *   become the backend's;
 * - toward the client (an error quoting a packet the backend received):
 *   the quoted destination address and port become the VIP's, and so does
 *   the outer source when the backend itself sent the error (a router on
 *   the backend's side keeps its own address).
 * Every checksum that covers a changed field is fixed (outer IPv4 header,
 * quoted IPv4 header, quoted UDP checksum, ICMP checksum with ICMPv6's
 * pseudo-header). The quoted TCP checksum, usually not quoted at all, is
 * left alone: no receiver checks it. */
#define ICMP_TO_BACKEND 0
#define ICMP_TO_CLIENT 1
static __always_inline int nat_icmp_rewrite(struct xdp_md *ctx, struct xdpg_lb_quoted *q, __u32 icmp_off, int direction,
					    int outer_too, const __u32 *addr, __u16 port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 icmp_fix = 0;

	if (icmp_off > XDPG_LB_MAX_L4_OFFSET || q->l3_off > XDPG_LB_MAX_L4_OFFSET || q->l4_off > XDPG_LB_MAX_L4_OFFSET)
		return -1;
	__u16 *icmp_check = data + icmp_off + 2;
	__u16 *ports = data + q->l4_off;
	if ((void *)(icmp_check + 1) > data_end || (void *)(ports + 4) > data_end)
		return -1;
	/* The quoted port that changes: the reply's source, or the request's
	 * destination. */
	__u16 *qport = direction == ICMP_TO_BACKEND ? &ports[0] : &ports[1];

	if (q->flow.family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		struct iphdr *in = data + q->l3_off;
		if ((void *)(iph + 1) > data_end || (void *)(in + 1) > data_end)
			return -1;
		/* Outer header: the address (if it changes) and the TTL. */
		__u32 *oaddr = direction == ICMP_TO_BACKEND ? &iph->daddr : &iph->saddr;
		__u32 sum = xdpg_csum_start(iph->check);
		if (outer_too) {
			sum = xdpg_csum_replace32(sum, *oaddr, addr[0]);
			*oaddr = addr[0];
		}
		__u16 old_ttl = *(__u16 *)&iph->ttl;
		iph->ttl--;
		sum = xdpg_csum_replace16(sum, old_ttl, *(__u16 *)&iph->ttl);
		iph->check = xdpg_csum_finish(sum);
		/* Quoted header: the address, and its checksum (which ICMP covers). */
		__u32 *qaddr = direction == ICMP_TO_BACKEND ? &in->saddr : &in->daddr;
		__u32 old_q = *qaddr;
		__u16 old_in_check = in->check;
		in->check = xdpg_csum_finish(xdpg_csum_replace32(xdpg_csum_start(old_in_check), old_q, addr[0]));
		*qaddr = addr[0];
		icmp_fix = xdpg_csum_replace32(icmp_fix, old_q, addr[0]);
		icmp_fix = xdpg_csum_replace16(icmp_fix, old_in_check, in->check);
		if (q->flow.proto == IPPROTO_UDP && ports[3] != 0) {
			__u16 old_udp = ports[3];
			__u32 s = xdpg_csum_replace32(xdpg_csum_start(old_udp), old_q, addr[0]);
			if (port)
				s = xdpg_csum_replace16(s, *qport, port);
			__u16 c = xdpg_csum_finish(s);
			ports[3] = c ? c : 0xFFFF;
			icmp_fix = xdpg_csum_replace16(icmp_fix, old_udp, ports[3]);
		}
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		struct ipv6hdr *in = data + q->l3_off;
		if ((void *)(ip6h + 1) > data_end || (void *)(in + 1) > data_end)
			return -1;
		__u32 *oaddr = direction == ICMP_TO_BACKEND ? (__u32 *)&ip6h->daddr : (__u32 *)&ip6h->saddr;
		__u32 *qaddr = direction == ICMP_TO_BACKEND ? (__u32 *)&in->saddr : (__u32 *)&in->daddr;
		__u32 addr_fix = 0;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			/* ICMPv6's pseudo-header covers the outer addresses. */
			if (outer_too) {
				icmp_fix = xdpg_csum_replace32(icmp_fix, oaddr[i], addr[i]);
				oaddr[i] = addr[i];
			}
			addr_fix = xdpg_csum_replace32(addr_fix, qaddr[i], addr[i]);
			qaddr[i] = addr[i];
		}
		ip6h->hop_limit--;
		icmp_fix += addr_fix;
		if (q->flow.proto == IPPROTO_UDP) {
			__u16 old_udp = ports[3];
			__u32 s = xdpg_csum_start(old_udp) + addr_fix;
			if (port)
				s = xdpg_csum_replace16(s, *qport, port);
			__u16 c = xdpg_csum_finish(s);
			ports[3] = c ? c : 0xFFFF;
			icmp_fix = xdpg_csum_replace16(icmp_fix, old_udp, ports[3]);
		}
	}
	if (port && *qport != port) {
		icmp_fix = xdpg_csum_replace16(icmp_fix, *qport, port);
		*qport = port;
	}
	*icmp_check = xdpg_csum_finish(xdpg_csum_start(*icmp_check) + icmp_fix);
	return 0;
}

/* Sends a packet of a NAT flow on to its client, translated back to the
 * VIP: a backend's TCP/UDP reply (q NULL; its source becomes the VIP's),
 * or an ICMP error about a packet the backend got (port unreachable from
 * the backend, too big from a router on its side; q is the quoted packet,
 * which the client knows as sent to the VIP). Either way the reply flow NAT
 * remembered is the key: the packet's own flow, or the quoted one read
 * reversed. */
static __always_inline int nat_to_client(struct xdp_md *ctx, struct xdpg_lb_flow *flow, struct xdpg_lb_quoted *q,
					 __u32 l4_off, __u32 l3_len)
{
	__u64 bytes = ctx->data_end - ctx->data;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xdpg_lb_scratch *scratch = cpu_scratch();
	if (!scratch)
		return XDP_PASS;
	struct bpf_fib_lookup *fib = &scratch->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	__u32 vip_addr[4];

	/* An ICMP error must be addressed to the client of the quoted flow. */
	if (q && !same_addr(flow->dst, q->flow.dst))
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	struct xdpg_lb_nat_rev *rev = nat_lookup(q ? &q->flow : flow);
	if (!rev)
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	addr_copy(vip_addr, rev->vip_addr);
	__u16 vip_port = rev->vip_port;
	/* A router's error keeps the router's address as its source. */
	int from_backend = !q || same_addr(flow->src, q->flow.src);
	if (read_ttl(data, data_end, flow->family) <= 1)
		return pass_counted(XDPG_LB_PASS_TTL, bytes);
	int rc = fib_next_hop(ctx, fib, flow->family, from_backend ? vip_addr : flow->src, flow->dst, flow->proto,
			      l3_len, bytes);
	/* No neighbour for the client's next hop: translated all the same, and
	 * the stack forwards it (an untranslated reply would reach the client
	 * from the backend's address, which it would answer with a reset).
	 * Marked by egress 0 in the FIB answer (which lives in scratch): a
	 * flag kept on the stack pushed lb_icmp past its share of it. */
	if (rc == XDPG_NEED_NEIGH)
		fib->ifindex = 0;
	else if (rc >= 0)
		return rc;
	if (rc < -1)
		/* No ICMP about an ICMP error. */
		return q ? drop_counted(XDPG_LB_DROP_MTU, bytes) : send_too_big(ctx, TOO_BIG_MTU(rc), l3_len);
	rc = q ? nat_icmp_rewrite(ctx, q, l4_off, ICMP_TO_CLIENT, from_backend, vip_addr, vip_port)
	       : nat_rewrite(ctx, flow->family, flow->proto, l4_off, NAT_SRC, vip_addr, vip_port);
	if (rc < 0)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	count(XDPG_LB_EV_NAT_REPLY, bytes);
	/* Unresolved, or an egress outside the devmap: the stack forwards it,
	 * with the MACs it came with. */
	if (!fib->ifindex || devmap_miss(ctx, fib->ifindex)) {
		undo_ttl(ctx, flow->family);
		return pass_counted(fib->ifindex ? XDPG_LB_PASS_NO_DEVMAP : XDPG_LB_PASS_NO_NEIGH, bytes);
	}
	return emit_to(ctx, fib->dmac, fib->smac, fib->ifindex, bytes);
}

/* A reply from a NAT backend (cold: kept out of the entry function). */
XDPG_COLD int nat_reply(struct xdp_md *ctx, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len)
{
	return nat_to_client(ctx, flow, NULL, l4_off, l3_len);
}

#endif
