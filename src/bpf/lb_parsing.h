/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* L4 and ICMP parsing for the load balancer, on top of parsing.h. Every
 * access is bounds-checked against data_end (for the verifier) and against
 * the end of the IP packet (`end`, an offset from data; see parsing.h):
 * bytes after it, such as Ethernet padding, are not part of the packet. */
#ifndef XDPG_LB_PARSING_H
#define XDPG_LB_PARSING_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "parsing.h"
#include "lb_structs.h"

/* Above any L4 offset parsing.h can produce; keeps offsets verifier-bounded. */
#define XDPG_LB_MAX_L4_OFFSET 0x1FFF

/* ICMP and ICMPv6 headers are 8 bytes: type, code, checksum, 4 more. */
#define XDPG_ICMP_HDR_LEN 8
#define XDPG_ICMP_ECHO_REQUEST 8
#define XDPG_ICMP_ECHO_REPLY 0
#define XDPG_ICMP_DEST_UNREACH 3
#define XDPG_ICMPV6_DEST_UNREACH 1
#define XDPG_ICMPV6_PKT_TOOBIG 2
#define XDPG_ICMPV6_ECHO_REQUEST 128
#define XDPG_ICMPV6_ECHO_REPLY 129

/* Reads the ports into flow (network order) and says whether a TCP segment
 * is a bare SYN (SYN without ACK). Fails (-1) when the L4 header is cut
 * (by the frame or by the IP packet's end). */
static __always_inline int xdpg_lb_read_ports(void *data, void *data_end, __u32 l4_off, __u32 end,
					      struct xdpg_lb_flow *flow, int *syn)
{
	if (l4_off == 0 || l4_off > XDPG_LB_MAX_L4_OFFSET)
		return -1;
	if (flow->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;
		if ((void *)(th + 1) > data_end || l4_off + sizeof(*th) > end)
			return -1;
		flow->sport = th->source;
		flow->dport = th->dest;
		*syn = th->syn && !th->ack;
		return 0;
	}
	struct udphdr *uh = data + l4_off;
	if ((void *)(uh + 1) > data_end || l4_off + sizeof(*uh) > end)
		return -1;
	flow->sport = uh->source;
	flow->dport = uh->dest;
	*syn = 0;
	return 0;
}

/* Where an ICMP error's quoted packet lies, and the flow it belongs to,
 * reversed so it reads as the client's flow to the VIP: the quoted packet
 * was sent by the VIP (its source), the client was its destination. */
struct xdpg_lb_quoted {
	__u32 l3_off; /* quoted IP header */
	__u32 l4_off; /* quoted L4 header (8 bytes present) */
	struct xdpg_lb_flow flow;
};

/* An ICMPv4 error (header at l4_off) quoting a TCP or UDP packet, within
 * the error's IP packet (which ends at end). */
static __always_inline int xdpg_lb_quoted_v4(void *data, void *data_end, __u32 l4_off, __u32 end,
					     struct xdpg_lb_quoted *q)
{
	if (l4_off > XDPG_LB_MAX_L4_OFFSET)
		return -1;
	__u32 off = l4_off + XDPG_ICMP_HDR_LEN;
	struct iphdr *in = data + off;
	if ((void *)(in + 1) > data_end || off + sizeof(*in) > end)
		return -1;
	if (in->version != 4 || in->ihl < 5)
		return -1;
	if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP)
		return -1;
	/* A quoted later fragment carries no ports. */
	if (in->frag_off & bpf_htons(XDPG_IP_OFFSET))
		return -1;
	__u32 l4 = off + in->ihl * 4;
	__u16 *ports = data + l4;
	if ((void *)(ports + 4) > data_end || l4 + 8 > end)
		return -1;
	q->l3_off = off;
	q->l4_off = l4;
	q->flow.src[0] = in->daddr;
	q->flow.dst[0] = in->saddr;
	q->flow.sport = ports[1];
	q->flow.dport = ports[0];
	q->flow.proto = in->protocol;
	q->flow.family = XDPG_LB_FAMILY_V4;
	return 0;
}

/* An ICMPv6 error quoting a TCP or UDP packet (no extension headers in
 * the quoted packet), within the error's IP packet (which ends at end). */
static __always_inline int xdpg_lb_quoted_v6(void *data, void *data_end, __u32 l4_off, __u32 end,
					     struct xdpg_lb_quoted *q)
{
	if (l4_off > XDPG_LB_MAX_L4_OFFSET)
		return -1;
	__u32 off = l4_off + XDPG_ICMP_HDR_LEN;
	struct ipv6hdr *in = data + off;
	if ((void *)(in + 1) > data_end)
		return -1;
	if (in->version != 6)
		return -1;
	if (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP)
		return -1;
	__u32 l4 = off + sizeof(*in);
	__u16 *ports = data + l4;
	if ((void *)(ports + 4) > data_end || l4 + 8 > end)
		return -1;
	q->l3_off = off;
	q->l4_off = l4;
	__builtin_memcpy(q->flow.src, &in->daddr, 16);
	__builtin_memcpy(q->flow.dst, &in->saddr, 16);
	q->flow.sport = ports[1];
	q->flow.dport = ports[0];
	q->flow.proto = in->nexthdr;
	q->flow.family = XDPG_LB_FAMILY_V6;
	return 0;
}

#endif
