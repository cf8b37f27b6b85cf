/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP: too big messages the LB sends (fragmentation needed, packet too
 * big) back to a sender whose packet does not fit its backend's route, and
 * the ICMP it receives (lb_icmp, last in this file): echo to a VIP address
 * (answered in place, passed or dropped by the echo policy), and errors
 * quoting a VIP's flow, sent to that flow's backend (translated for NAT)
 * or, about a packet a NAT backend got, back to its client (nat_to_client
 * in lb_nat.h). The DSR probe, an echo reply towards a backend, is
 * lb_nexthop.h's. */
#ifndef XDPG_LB_ICMP_H
#define XDPG_LB_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "lb_common.h"
#include "lb_parsing.h"
#include "lb_hash.h"
#include "lb_select.h"
#include "lb_nexthop.h"
#include "lb_nat.h"

/* ---- too big ------------------------------------------------------------ */

#define XDPG_IP_DF 0x4000
#define XDPG_ICMP_FRAG_NEEDED 4
#define XDPG_IPV6_MIN_MTU 1280

/* Whether either MAC of the frame is a group (multicast or broadcast)
 * address: its I/G bit, the first octet's lowest. An answer goes back to the
 * frame's source MAC from its destination MAC, so neither may be one: a
 * group source is invalid (IEEE 802), and answering it, or answering from a
 * group address, would put the answer on every port of the segment. */
static __always_inline int group_macs(const struct ethhdr *eth)
{
	return (eth->h_dest[0] | eth->h_source[0]) & 1;
}

/* Writes the reply's Ethernet header: back to the frame's sender. */
static __always_inline void reply_eth(struct ethhdr *eth, const __u8 *to, const __u8 *from, __u16 proto)
{
	__builtin_memcpy(eth->h_dest, to, ETH_ALEN);
	__builtin_memcpy(eth->h_source, from, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
}

static __always_inline int too_big_v4(struct xdp_md *ctx, struct xdpg_lb_scratch *sc, __u32 mtu, __u32 tot_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + XDPG_ETH_HLEN;
	__u8 to[ETH_ALEN], from[ETH_ALEN];

	if ((void *)(iph + 1) > data_end)
		return XDP_DROP;
	/* Without DF the sender expects us to fragment, which XDP cannot; and
	 * ICMP is never answered with ICMP errors. */
	if (!(iph->frag_off & bpf_htons(XDPG_IP_DF)) || iph->protocol == IPPROTO_ICMP)
		return XDP_DROP;
	__u32 hdr = iph->ihl * 4;
	if (hdr < 20 || hdr > 60)
		return XDP_DROP;
	__u32 len = bpf_ntohs(iph->tot_len);
	__u32 overhead = tot_len > len ? tot_len - len : 0;
	__u32 report = mtu > overhead + 68 ? mtu - overhead : 68;
	__u32 qlen = hdr + 8; /* the header and 8 bytes: what RFC 792 asks for */
	if (qlen > len)
		qlen = len; /* never past the packet (only a tiny fragment is shorter) */
	__u32 saddr = iph->saddr;
	__u32 daddr = iph->daddr;
	__u8 tos = iph->tos;
	__builtin_memcpy(to, eth->h_source, ETH_ALEN);
	__builtin_memcpy(from, eth->h_dest, ETH_ALEN);

	/* The ICMP message in scratch: type, code, checksum, unused, MTU, quote. */
	__u32 *w = sc->icmp;
	w[0] = bpf_htonl((XDPG_ICMP_DEST_UNREACH << 24) | (XDPG_ICMP_FRAG_NEEDED << 16));
	w[1] = bpf_htonl(report & 0xFFFF);
	for (int i = 0; i < 17; i++) {
		if (i * 4 >= qlen)
			break;
		__u32 *p = data + XDPG_ETH_HLEN + i * 4;
		if ((void *)(p + 1) > data_end)
			return XDP_DROP;
		w[2 + i] = *p;
	}
	__u32 icmp_len = 8 + (qlen & 0x7C);
	if (icmp_len > 76)
		return XDP_DROP;
	((__u16 *)w)[1] = csum_of(w, icmp_len);

	int delta = (int)(XDPG_ETH_HLEN + 20 + icmp_len) - (int)(data_end - data);
	if (delta > 0 || bpf_xdp_adjust_tail(ctx, delta))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *out = data + XDPG_ETH_HLEN;
	if ((void *)(out + 1) > data_end)
		return XDP_DROP;
	reply_eth(eth, to, from, ETH_P_IP);
	/* From the address the packet was sent to (the VIP): the sender's
	 * stack matches the message to its connection by the quote. */
	xdpg_ipv4_hdr_write(out, tos, 20 + icmp_len, 0, XDPG_LB_OUTER_TTL, IPPROTO_ICMP, daddr, saddr);
	for (int i = 0; i < 19; i++) {
		if (i * 4 >= icmp_len)
			break;
		__u32 *p = data + XDPG_ETH_HLEN + 20 + i * 4;
		if ((void *)(p + 1) > data_end)
			return XDP_DROP;
		*p = w[i];
	}
	return XDP_TX;
}

static __always_inline int too_big_v6(struct xdp_md *ctx, struct xdpg_lb_scratch *sc, __u32 mtu, __u32 tot_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
	__u8 to[ETH_ALEN], from[ETH_ALEN];
	/* Quote the header and 8 bytes (enough to find the connection). */
	const __u32 qlen = 48;

	if ((void *)ip6h + qlen > data_end)
		return XDP_DROP;
	if (ip6h->nexthdr == IPPROTO_ICMPV6)
		return XDP_DROP;
	__u32 len = sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len);
	/* Never quotes past the packet (every packet forwarded holds 8 bytes
	 * after its header: TCP, UDP or a fragment header). */
	if (len < qlen)
		return XDP_DROP;
	__u32 overhead = tot_len > len ? tot_len - len : 0;
	__u32 report = mtu > overhead + XDPG_IPV6_MIN_MTU ? mtu - overhead : XDPG_IPV6_MIN_MTU;
	__builtin_memcpy(to, eth->h_source, ETH_ALEN);
	__builtin_memcpy(from, eth->h_dest, ETH_ALEN);

	/* Pseudo-header (source, destination, length, next header), then the
	 * ICMPv6 message: the checksum covers both. */
	__u32 *w = sc->icmp;
	__builtin_memcpy(&w[0], &ip6h->daddr, 16);
	__builtin_memcpy(&w[4], &ip6h->saddr, 16);
	w[8] = bpf_htonl(8 + qlen);
	w[9] = bpf_htonl(IPPROTO_ICMPV6);
	w[10] = bpf_htonl(XDPG_ICMPV6_PKT_TOOBIG << 24);
	w[11] = bpf_htonl(report);
	__builtin_memcpy(&w[12], ip6h, qlen);
	((__u16 *)w)[21] = csum_of(w, 40 + 8 + qlen);

	int delta = (int)(XDPG_ETH_HLEN + 40 + 8 + qlen) - (int)(data_end - data);
	if (delta > 0 || bpf_xdp_adjust_tail(ctx, delta))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct ipv6hdr *out = data + XDPG_ETH_HLEN;
	if ((void *)out + 40 + 8 + qlen > data_end)
		return XDP_DROP;
	reply_eth(eth, to, from, ETH_P_IPV6);
	*(__u32 *)out = bpf_htonl(6u << 28);
	out->payload_len = bpf_htons(8 + qlen);
	out->nexthdr = IPPROTO_ICMPV6;
	out->hop_limit = XDPG_LB_OUTER_TTL;
	__builtin_memcpy(&out->saddr, &w[0], 16);
	__builtin_memcpy(&out->daddr, &w[4], 16);
	__builtin_memcpy((void *)(out + 1), &w[10], 8 + qlen);
	return XDP_TX;
}

/* A packet too big for the next hop (mtu; tot_len is its size there, so
 * tot_len minus its own size is our encapsulation) becomes an ICMP
 * "fragmentation needed" (IPv4 with DF) or "packet too big" (IPv6) back to
 * its sender, quoting its start, so the sender's stack lowers its path MTU.
 * The packet itself is dropped (and counted) either way. Returns XDP_TX,
 * or XDP_DROP when no message is due (IPv4 without DF, ICMP, a frame from
 * or to a group MAC). */
XDPG_COLD int send_too_big(struct xdp_md *ctx, __u32 mtu, __u32 tot_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	int rc = XDP_DROP;

	count(XDPG_LB_DROP_MTU, bytes);
	struct xdpg_lb_scratch *sc = cpu_scratch();
	struct ethhdr *eth = data;
	if (!sc || (void *)(eth + 1) > data_end)
		return XDP_DROP;
	/* Answers go to unicast senders only (the drop stays counted). */
	if (group_macs(eth))
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		rc = too_big_v4(ctx, sc, mtu, tot_len);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		rc = too_big_v6(ctx, sc, mtu, tot_len);
	if (rc == XDP_TX)
		count(XDPG_LB_EV_TOO_BIG_SENT, bytes);
	return rc;
}

/* ---- received ----------------------------------------------------------- */

/* Echo to a VIP address: answered in place, passed or dropped. */
static __always_inline int lb_echo(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *flow,
				   __u32 l4_off, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (!is_vip_addr(flow))
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	if (cfg->echo_policy == XDPG_LB_ECHO_PASS)
		return pass_counted(XDPG_LB_PASS_ECHO, bytes);
	if (cfg->echo_policy != XDPG_LB_ECHO_ANSWER)
		return drop_counted(XDPG_LB_DROP_ECHO, bytes);
	if (l4_off > XDPG_LB_MAX_L4_OFFSET)
		return XDP_PASS;
	struct ethhdr *eth = data;
	__u8 *icmp = data + l4_off;
	if ((void *)(icmp + 4) > data_end || (void *)(eth + 1) > data_end)
		return XDP_PASS;
	/* Answered to unicast senders only; a frame from or to a group MAC
	 * is dropped as the echo policy's drops are. */
	if (group_macs(eth))
		return drop_counted(XDPG_LB_DROP_ECHO, bytes);
	/* Swapping source and destination leaves every checksum as it is;
	 * only the type changes. */
	__u16 old_word = *(__u16 *)icmp;
	icmp[0] = flow->family == XDPG_LB_FAMILY_V4 ? XDPG_ICMP_ECHO_REPLY : XDPG_ICMPV6_ECHO_REPLY;
	__u16 *check = (__u16 *)(icmp + 2);
	*check = xdpg_csum_finish(xdpg_csum_replace16(xdpg_csum_start(*check), old_word, *(__u16 *)icmp));
	if (flow->family == XDPG_LB_FAMILY_V4) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return XDP_PASS;
		__u32 tmp = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = tmp;
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		if ((void *)(ip6h + 1) > data_end)
			return XDP_PASS;
		struct in6_addr tmp = ip6h->saddr;
		ip6h->saddr = ip6h->daddr;
		ip6h->daddr = tmp;
	}
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	count(XDPG_LB_EV_ECHO_ANSWERED, bytes);
	return XDP_TX;
}

/* The TCP/UDP path's last stage (lb.bpf.c), which an ICMP error to a
 * DSR or IPIP backend takes too. */
static __always_inline int deliver(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len,
				   __u32 hash, __u64 bytes, const int may_reply);

/* An ICMP error quoting a packet the VIP sent: deliver it to the backend
 * that serves the quoted flow, so its stack learns the path MTU (or that
 * the client is unreachable). */
static __always_inline int lb_icmp_error(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *outer,
					 struct xdpg_lb_quoted *q, __u32 icmp_off, __u32 l3_len, __u64 bytes)
{
	/* Addressed to the VIP that sent the quoted packet; otherwise maybe
	 * about a packet a NAT backend got, on its way to the client. */
	struct xdpg_lb_vip *vip = same_addr(outer->dst, q->flow.dst) ? vip_for(cfg, &q->flow) : NULL;
	if (!vip) {
		if (cfg->nat_vips)
			return nat_to_client(ctx, outer, q, icmp_off, l3_len);
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	}

	__u32 vip_index = vip->index;
	struct xdpg_lb_vip_stats *vs = bpf_map_lookup_elem(&xdpg_lb_vipcnt, &vip_index);
	if (vs) {
		vs->packets++;
		vs->bytes += bytes;
	}
	/* The backend the flow uses now: tracked, else Maglev's choice. */
	struct xdpg_lb_backend *be = NULL;
	__u32 be_id = XDPG_LB_NO_BACKEND;
	if (!(vip->flags & XDPG_LB_VIP_NO_CONNTRACK)) {
		struct xdpg_lb_conn *conn = conn_lookup(cfg, &q->flow);
		if (conn) {
			be_id = conn->backend;
			be = backend_at(be_id);
			if (be && be->gen != conn->gen)
				be = NULL;
		}
	}
	__u32 hash = xdpg_lb_flow_hash(&q->flow, cfg->hash_seed, vip->flags & XDPG_LB_VIP_HASH_SRC_ONLY);
	if (!be) {
		be_id = maglev_pick(vip, hash);
		be = backend_at(be_id);
	}
	if (!be)
		return drop_counted(XDPG_LB_DROP_ICMP, bytes);
	count(XDPG_LB_EV_ICMP_FORWARDED, bytes);

	if (vip->mode != XDPG_LB_MODE_NAT)
		return deliver(ctx, cfg, vip, be_id, be, outer, 0, l3_len, hash, bytes, 0);

	/* NAT: the backend knows the flow by its own address and port. */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int verdict = XDP_PASS;
	if (be->family != outer->family)
		return drop_counted(XDPG_LB_DROP_UNSUPPORTED, bytes);
	if (read_ttl(data, data_end, outer->family) <= 1)
		return pass_counted(XDPG_LB_PASS_TTL, bytes);
	__u16 port = be->port;
	struct xdpg_counter *bs = bpf_map_lookup_elem(&xdpg_lb_becnt, &be_id);
	if (bs) {
		bs->packets++;
		bs->bytes += bytes;
	}
	struct xdpg_lb_nexthop *nh = backend_hop(ctx, be_id, be, outer->src, outer->proto, l3_len, bytes, &verdict, 0);
	if (!nh && verdict < XDPG_NEED_NEIGH)
		return verdict;
	if (nat_icmp_rewrite(ctx, q, icmp_off, ICMP_TO_BACKEND, 1, be->addr, port) < 0)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	if (!nh) {
		undo_ttl(ctx, outer->family);
		return stack_pass(be_id, bytes, verdict);
	}
	return emit(ctx, nh, bytes);
}

/* ICMP and ICMPv6 to the LB: echo requests and the errors it handles;
 * anything else passes. */
XDPG_COLD int lb_icmp(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *flow, __u32 l4_off,
		      __u32 l3_len)
{
	__u64 bytes = ctx->data_end - ctx->data;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xdpg_lb_scratch *scratch = cpu_scratch();
	if (!scratch)
		return XDP_PASS;
	struct xdpg_lb_quoted *q = &scratch->quoted;
	__builtin_memset(q, 0, sizeof(*q));

	/* Where the IP packet ends: untagged, so its header is at 14. */
	__u32 end = XDPG_ETH_HLEN + l3_len;
	if (l4_off == 0 || l4_off > XDPG_LB_MAX_L4_OFFSET)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	__u8 *icmp = data + l4_off;
	if ((void *)(icmp + 8) > data_end || l4_off + 8 > end)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	__u8 type = icmp[0];
	if (flow->family == XDPG_LB_FAMILY_V4) {
		if (type == XDPG_ICMP_ECHO_REQUEST)
			return lb_echo(ctx, cfg, flow, l4_off, bytes);
		if (type != XDPG_ICMP_DEST_UNREACH)
			return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
		if (xdpg_lb_quoted_v4(data, data_end, l4_off, end, q) < 0)
			return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	} else {
		if (type == XDPG_ICMPV6_ECHO_REQUEST)
			return lb_echo(ctx, cfg, flow, l4_off, bytes);
		if (type != XDPG_ICMPV6_DEST_UNREACH && type != XDPG_ICMPV6_PKT_TOOBIG)
			return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
		if (xdpg_lb_quoted_v6(data, data_end, l4_off, end, q) < 0)
			return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	}
	return lb_icmp_error(ctx, cfg, flow, q, l4_off, l3_len, bytes);
}

#endif
