/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing shared by every xdpguard program: Ethernet, up to two VLAN
 * tags, IPv4 (options honoured) and IPv6 (a bounded walk over extension
 * headers). Every access is bounds-checked, so no packet can make a program
 * fail verification at run time or return XDP_ABORTED.
 *
 * The IP packet ends where its length field says (IPv4 total length, IPv6
 * 40 + payload length), which may be before the frame's end: Ethernet pads
 * frames to 60 bytes, and a sender may append anything. Headers after the
 * IP header are read up to that end only, as the kernel's stack does after
 * trimming the packet to its length; bytes past it are not part of the
 * packet. Callers reading on (the LB's L4 and ICMP readers) bound their
 * reads the same way (lb_parsing.h). */
#ifndef XDPG_PARSING_H
#define XDPG_PARSING_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Parsing bounds: the verifier needs them, and real traffic never needs more. */
#define XDPG_MAX_VLAN_TAGS 2
#define XDPG_MAX_IPV6_EXT_HDRS 8

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define XDPG_IP_MF 0x2000
#define XDPG_IP_OFFSET 0x1FFF
/* Larger than any header chain we walk, small enough for the verifier. */
#define XDPG_MAX_L3_OFFSET 4096

enum xdpg_parse_result {
	XDPG_PARSE_OK = 0,
	XDPG_PARSE_NON_IP,
	XDPG_PARSE_MALFORMED,
	/* More VLAN tags than the walk takes (xdpg_parse_eth): not judged,
	 * and not harmless like a malformed packet, as the stack may deliver
	 * it. */
	XDPG_PARSE_HIDDEN,
};

struct xdpg_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct xdpg_ipv6_opt_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct xdpg_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* What the parser learned about a packet. Offsets are from ctx->data. */
struct xdpg_pkt {
	__u32 l3_off;
	__u32 l4_off;	/* 0 when there is no L4 header to read */
	__u16 l3_proto; /* ETH_P_IP or ETH_P_IPV6, host byte order */
	__u8 l4_proto;	/* IPPROTO_*, after IPv6 extension headers */
	__u8 vlan_tags;
	__u8 fragment;	     /* a fragment, first or later (an IPv6 atomic
			      * fragment, offset 0 and no more, is whole) */
	__u8 later_fragment; /* fragment offset != 0: no L4 header */
	__u8 ip_options;     /* IPv4 header longer than 20 bytes */
	__u8 l4_hidden;	     /* a transport header the stack reaches and the
			      * parse cannot: xdpg_tiny_fragment */
};

/* What the stack reaches and the parse cannot: an IPv6 chain longer than
 * the walk (its caller's case), or RFC 1858's tiny fragment, a first
 * fragment whose TCP header the IP packet cuts short. The stack rebuilds
 * that header from the later fragments, where no rule reads it: a SYN so
 * split, its flags in the second fragment, passed the SYN guard and every
 * flags rule (hping3 -f). No stack sends one (a first fragment carries at
 * least the 8 bytes a fragment's data comes in, and real MTUs far more). */
#define XDPG_TCP_HDR_LEN 20
static __always_inline void xdpg_tiny_fragment(struct xdpg_pkt *pkt, __u32 end)
{
	if (pkt->fragment && !pkt->later_fragment && pkt->l4_proto == IPPROTO_TCP &&
	    pkt->l4_off + XDPG_TCP_HDR_LEN > end)
		pkt->l4_hidden = 1;
}

static __always_inline int xdpg_parse_eth(void *data, void *data_end, struct xdpg_pkt *pkt)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDPG_PARSE_MALFORMED;

	__u16 proto = bpf_ntohs(eth->h_proto);
	__u32 off = sizeof(*eth);
#pragma unroll
	for (int i = 0; i < XDPG_MAX_VLAN_TAGS; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		struct xdpg_vlan_hdr *vlan = data + off;
		if ((void *)(vlan + 1) > data_end)
			return XDPG_PARSE_MALFORMED;
		proto = bpf_ntohs(vlan->encapsulated_proto);
		off += sizeof(*vlan);
		pkt->vlan_tags++;
	}
	/* A tag beyond the ones we walk hides the packet from us: it cannot be
	 * judged. Not "non-IP", which would always pass whatever its source,
	 * and not merely malformed, which the policy may pass as harmless:
	 * Linux strips priority tags (VLAN id 0) at any depth and delivers
	 * the packet behind them on the base device, so three of them carried
	 * a blocklisted source past every list and rule. The filter drops it
	 * whatever the malformed policy (filter.bpf.c). */
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD)
		return XDPG_PARSE_HIDDEN;
	pkt->l3_off = off;
	pkt->l3_proto = proto;
	if (proto == ETH_P_IP || proto == ETH_P_IPV6)
		return XDPG_PARSE_OK;
	return XDPG_PARSE_NON_IP;
}

static __always_inline int xdpg_parse_ipv4(void *data, void *data_end, struct xdpg_pkt *pkt)
{
	__u32 off = pkt->l3_off;
	if (off > XDPG_MAX_L3_OFFSET)
		return XDPG_PARSE_MALFORMED;
	struct iphdr *iph = data + off;
	if ((void *)(iph + 1) > data_end)
		return XDPG_PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return XDPG_PARSE_MALFORMED;
	__u32 hdr_len = iph->ihl * 4;
	if ((void *)iph + hdr_len > data_end)
		return XDPG_PARSE_MALFORMED;
	__u32 tot_len = bpf_ntohs(iph->tot_len);
	/* A total length beyond the frame means the packet was truncated. */
	if (tot_len < hdr_len || (void *)iph + tot_len > data_end)
		return XDPG_PARSE_MALFORMED;

	__u16 frag = bpf_ntohs(iph->frag_off);
	pkt->fragment = (frag & (XDPG_IP_MF | XDPG_IP_OFFSET)) != 0;
	pkt->later_fragment = (frag & XDPG_IP_OFFSET) != 0;
	pkt->ip_options = hdr_len > sizeof(*iph);
	pkt->l4_proto = iph->protocol;
	pkt->l4_off = pkt->later_fragment ? 0 : off + hdr_len;
	xdpg_tiny_fragment(pkt, off + tot_len);
	return XDPG_PARSE_OK;
}

static __always_inline int xdpg_parse_ipv6(void *data, void *data_end, struct xdpg_pkt *pkt)
{
	__u32 off = pkt->l3_off;
	if (off > XDPG_MAX_L3_OFFSET)
		return XDPG_PARSE_MALFORMED;
	struct ipv6hdr *ip6h = data + off;
	if ((void *)(ip6h + 1) > data_end)
		return XDPG_PARSE_MALFORMED;
	if (ip6h->version != 6)
		return XDPG_PARSE_MALFORMED;
	__u32 payload_len = bpf_ntohs(ip6h->payload_len);
	__u32 end;
	if (payload_len == 0 && ip6h->nexthdr == IPPROTO_HOPOPTS) {
		/* A jumbogram's length lives in a hop-by-hop option (RFC 2675).
		 * Linux does not trim such a packet: measured on 6.18, one
		 * without the option is delivered with the frame's length as
		 * its own. So the walk reads up to the frame's end, as the
		 * stack does, and the filter judges the source. Nothing XDP
		 * sees can really be one (no link carries 64 KiB frames): the
		 * LB passes it as malformed. */
		end = data_end - data;
	} else {
		/* Payload length 0 otherwise is a packet of its 40-byte header
		 * alone, as the stack takes it. */
		end = off + sizeof(*ip6h) + payload_len;
		if (data + end > data_end)
			return XDPG_PARSE_MALFORMED;
	}

	__u8 next = ip6h->nexthdr;
	off += sizeof(*ip6h);
#pragma unroll
	for (int i = 0; i < XDPG_MAX_IPV6_EXT_HDRS; i++) {
		/* A chain past the offsets the parse reads (a jumbo frame's,
		 * which Linux delivers). The filter judges its source, as an
		 * over-long chain's (taken as malformed, it passed the lists
		 * under the default malformed policy); the LB, which passes
		 * what it cannot balance, keeps it malformed (judged hidden,
		 * its combined stack went past the verifier's 512 bytes). */
		if (off > XDPG_MAX_L3_OFFSET) {
#ifdef XDPG_PARSE_LONG_CHAIN_HIDDEN
			break;
#else
			return XDPG_PARSE_MALFORMED;
#endif
		}
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			/* Within the frame (for the verifier) and within the IP
			 * packet (a header past its end is cut short). */
			struct xdpg_ipv6_opt_hdr *opt = data + off;
			if ((void *)(opt + 1) > data_end || off + sizeof(*opt) > end)
				return XDPG_PARSE_MALFORMED;
			__u32 len = ((__u32)opt->hdrlen + 1) * 8;
			if (data + off + len > data_end || off + len > end)
				return XDPG_PARSE_MALFORMED;
			next = opt->nexthdr;
			off += len;
			continue;
		}
		case IPPROTO_FRAGMENT: {
			struct xdpg_ipv6_frag_hdr *fh = data + off;
			if ((void *)(fh + 1) > data_end || off + sizeof(*fh) > end)
				return XDPG_PARSE_MALFORMED;
			__u16 frag = bpf_ntohs(fh->frag_off);
			/* Offset in the top 13 bits; bit 0 is "more fragments".
			 * Neither set: an atomic fragment, a whole packet with a
			 * fragment header, processed as one (RFC 6946 s. 4). */
			if (frag & 0xFFF9)
				pkt->fragment = 1;
			/* A later fragment's payload is the middle of the
			 * original packet: its first bytes are not a header, so
			 * the walk stops here, with the fragment header's next
			 * header as the protocol. Read as one (RFC 8200 allows
			 * any next header in every fragment), forged bytes hid
			 * the fragment from `drop fragment` as malformed, or
			 * passed it off as another protocol's. */
			if (frag & 0xFFF8) {
				pkt->later_fragment = 1;
				pkt->l4_proto = fh->nexthdr;
				pkt->l4_off = 0;
				return XDPG_PARSE_OK;
			}
			next = fh->nexthdr;
			off += sizeof(*fh);
			continue;
		}
		default:
			/* (A later fragment returned at its header.) */
			pkt->l4_proto = next;
			pkt->l4_off = off;
			xdpg_tiny_fragment(pkt, end);
			return XDPG_PARSE_OK;
		}
	}
	/* XDPG_MAX_IPV6_EXT_HDRS headers walked. Their last one may lead to the
	 * transport header (read as such); still inside the chain (or past
	 * XDPG_MAX_L3_OFFSET, above), the source address is known, the
	 * transport header is not (l4_hidden: the guard stage drops it,
	 * parsing it no rule could). */
	switch (next) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
	case IPPROTO_FRAGMENT:
		break;
	default:
		if (off <= XDPG_MAX_L3_OFFSET) {
			pkt->l4_proto = next;
			pkt->l4_off = off;
			xdpg_tiny_fragment(pkt, end);
			return XDPG_PARSE_OK;
		}
	}
	pkt->l4_hidden = 1;
	pkt->l4_proto = next;
	pkt->l4_off = 0;
	return XDPG_PARSE_OK;
}

/* Parses L2 and L3. XDPG_PARSE_OK means pkt->l3_proto is IPv4 or IPv6, the
 * IP packet lies within the frame and its header chain within the packet
 * (a jumbogram claim's within the frame). */
static __always_inline int xdpg_parse(struct xdp_md *ctx, struct xdpg_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	int ret = xdpg_parse_eth(data, data_end, pkt);
	if (ret != XDPG_PARSE_OK)
		return ret;
	if (pkt->l3_proto == ETH_P_IP)
		return xdpg_parse_ipv4(data, data_end, pkt);
	return xdpg_parse_ipv6(data, data_end, pkt);
}

#endif
