/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A packet's key in the guard's rule index (guard_consts.h: its protocol's
 * base plus its destination port, ICMP type or IP protocol), defined once
 * for the two programs that compute it: the guard, which looks its rule
 * group up by it, and the filter, which reads the guard's gate
 * (filter_maps.h, xdpg_gate) by it to leave the tail call out for packets
 * the guard has nothing to do with. Both must agree on every packet: a key
 * the filter computed otherwise could skip a rule. */
#ifndef XDPG_GUARD_KEY_H
#define XDPG_GUARD_KEY_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include "parsing.h"
#include "guard_consts.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#ifndef IPPROTO_HOPOPTS
#define IPPROTO_HOPOPTS 0
#endif
/* Transport headers start at most this far into the frame (the parser's
 * bound on the IP header's offset, plus the longest IPv4 header or IPv6
 * extension chain it walks). */
#define XDPG_GUARD_MAX_L4_OFFSET 8192

_Static_assert(XDPG_GATE_WORDS == (XDPG_GK_KEYS + 63) / 64, "the gate: a bit per key");

/* Where the IP packet of a parsed frame ends (from the frame's start): its
 * length field's end (parsing.h), or the frame's end for an IPv6
 * jumbogram's claim; 0 when the IP header cannot be read. */
static __always_inline __u32 xdpg_ip_end(void *data, void *data_end, const struct xdpg_pkt *pkt)
{
	__u32 l3 = pkt->l3_off & 0xFFF;
	if (pkt->l3_proto == ETH_P_IP) {
		struct iphdr *iph = data + l3;
		if ((void *)(iph + 1) > data_end)
			return 0;
		return l3 + bpf_ntohs(iph->tot_len);
	}
	struct ipv6hdr *ip6h = data + l3;
	if ((void *)(ip6h + 1) > data_end)
		return 0;
	__u32 payload = bpf_ntohs(ip6h->payload_len);
	if (payload == 0 && ip6h->nexthdr == IPPROTO_HOPOPTS)
		return data_end - data;
	return l3 + sizeof(*ip6h) + payload;
}

/* The packet's index key. Fills the source port and TCP flags (TCP, UDP;
 * left as they are for other packets). Later fragments and cut extension
 * chains have no transport header, and one cut short by the IP packet's end
 * (or the frame's) is not read: their protocol's "no key" slot. */
static __always_inline __u32 xdpg_guard_key(void *data, void *data_end, const struct xdpg_pkt *pkt, __u32 ip_end,
					    __u16 *sport, __u8 *flags)
{
	__u32 proto = pkt->l4_proto;
	__u32 off = pkt->l4_off;
	__u32 need, base, nokey;

	switch (proto) {
	case IPPROTO_TCP:
		need = XDPG_TCP_MIN, base = XDPG_GK_TCP, nokey = XDPG_GK_NOKEY_TCP;
		break;
	case IPPROTO_UDP:
		need = XDPG_UDP_MIN, base = XDPG_GK_UDP, nokey = XDPG_GK_NOKEY_UDP;
		break;
	case IPPROTO_ICMP:
		need = XDPG_ICMP_MIN, base = XDPG_GK_ICMP, nokey = XDPG_GK_NOKEY_ICMP;
		break;
	case IPPROTO_ICMPV6:
		need = XDPG_ICMP6_MIN, base = XDPG_GK_ICMP6, nokey = XDPG_GK_NOKEY_ICMP6;
		break;
	default:
		return XDPG_GK_OTHER + (proto & 0xFF);
	}
	if (off == 0 || off > XDPG_GUARD_MAX_L4_OFFSET || off + need > ip_end)
		return nokey;
	__u8 *l4 = data + off;
	if (proto == IPPROTO_TCP) {
		if ((void *)(l4 + XDPG_TCP_MIN) > data_end)
			return nokey;
		*sport = ((__u16)l4[0] << 8) | l4[1];
		*flags = l4[13];
		return base + (((__u32)l4[2] << 8) | l4[3]);
	}
	if (proto == IPPROTO_UDP) {
		if ((void *)(l4 + XDPG_UDP_MIN) > data_end)
			return nokey;
		*sport = ((__u16)l4[0] << 8) | l4[1];
		return base + (((__u32)l4[2] << 8) | l4[3]);
	}
	if ((void *)(l4 + XDPG_ICMP6_MIN) > data_end)
		return nokey;
	return base + l4[0];
}

/* Neighbour discovery on this link (ICMPv6 133-137 with hop limit 255,
 * which no router forwards: RFC 4861 s. 6.1, 7.1): not judged by the lists
 * (the filter) nor by timed blocks (the guard). A blocked ::/0 (with
 * allowlisted holes, as the refusal of it advises) dropped the router's
 * advertisements from its link-local address and cut off every source,
 * allowlisted ones too; a timed ::/0, or an auto-block of fe80::/64 by a
 * `per src/64` rule, did the same. A listed or timed-blocked host on the
 * link still resolves its neighbours, and nothing else of it passes. The
 * rules still see it (a rule that drops it needs --force). Defined here,
 * once, for the two programs that test it. */
static __always_inline int nd_on_link(void *data, void *data_end, const struct xdpg_pkt *pkt,
				      const struct ipv6hdr *ip6h)
{
	if (pkt->l4_proto != IPPROTO_ICMPV6 || ip6h->hop_limit != 255)
		return 0;
	__u16 sport;
	__u8 flags;
	__u32 key = xdpg_guard_key(data, data_end, pkt, xdpg_ip_end(data, data_end, pkt), &sport, &flags);
	return key >= XDPG_GK_ICMP6 + 133 && key <= XDPG_GK_ICMP6 + 137;
}

#endif
