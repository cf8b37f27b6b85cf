// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The xdpguard L4 load balancer.
 *
 * Per packet: one parse, one VIP lookup (two for all-ports VIPs), one
 * connection-table lookup, one backend slot; only a new flow (or a SYN)
 * computes the hash, reads the VIP's Maglev table and writes the
 * connection table. The next hop comes from the kernel FIB. It runs
 * attached on its own or tail-called by the filter (it re-parses either
 * way).
 *
 * What keeps the hot path short (each measured with benches/per_packet.rs;
 * BENCHMARKS.md has the numbers):
 * - untagged IPv4 without options or fragments and IPv6 without extension
 *   headers, carrying TCP or UDP, skip the generic parser (parse_fast);
 * - flows and map keys are written as whole 64-bit words, since the kernel
 *   reads keys back as words at once and a load spanning narrower fresh
 *   stores cannot be forwarded from the store buffer;
 * - each map call site uses one map (XDPG_DISTINCT), so the verifier can
 *   inline lookups and call map functions directly;
 * - VIP lookups are cached per CPU for one config generation;
 * - a SYN looks its flow up too and refreshes an existing entry in place;
 * - the outer IPv4 header is written as five words and checksummed from
 *   registers.
 *
 * Policies (documented in src/lb and set from user space):
 * - not for a VIP (or VLAN-tagged, or not IP): XDP_PASS untouched;
 * - fragments: to an all-ports DSR/IPIP VIP forwarded, hashed without
 *   ports and not tracked (XDPG_LB_FRAG_FORWARD); any other fragment to a
 *   VIP address dropped;
 * - IPv4 options: forwarded (and counted) or dropped;
 * - ICMP errors quoting a VIP's flow go to that flow's backend; ICMP echo
 *   to a VIP address is answered, passed or dropped;
 * - no route, or forwarding disabled: the packet goes to the stack
 *   unchanged, and is counted;
 * - no resolved neighbour for a backend's next hop (a cold cache, a flush):
 *   IPIP and NAT packets go to the stack already rewritten, which routes
 *   them by the backend address and resolves the neighbour on the way (the
 *   packet waits in the neighbour's queue, it is not lost); an L2 DSR
 *   packet, addressed to the VIP the stack cannot route, is turned into a
 *   probe towards the backend (see dsr_probe). Counted globally and per
 *   backend. User space keeps configured backends' next hops resolved with
 *   managed neighbour entries, so this is rare.
 *
 * Next hops come from bpf_fib_lookup; each CPU reuses a backend's answer
 * (egress, MACs, route MTU) for nexthop_ttl jiffies, since a FIB lookup
 * costs more than the rest of the hot path. Times are jiffies: reading
 * them is free, a precise clock read costs ~30 ns in a VM. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "parsing.h"
#include "hash.h"
#include "csum.h"
#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_maps.h"
#include "lb_hash.h"
#include "lb_parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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

/* ---- too big ----------------------------------------------------------- */

/* "Too big for an MTU of m", as a return value below -1 (-1 means go on,
 * >= 0 is a verdict). */
#define TOO_BIG(m) (-2 - (int)(m))
#define TOO_BIG_MTU(rc) ((__u32)(-2 - (rc)))

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

static __always_inline __u16 csum_of(__u32 *buf, __u32 len)
{
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, len, 0);
	return xdpg_csum_finish(sum < 0 ? 0 : (__u32)sum);
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
	out->version = 4;
	out->ihl = 5;
	out->tos = tos;
	out->tot_len = bpf_htons(20 + icmp_len);
	out->id = 0;
	out->frag_off = 0;
	out->ttl = XDPG_LB_OUTER_TTL;
	out->protocol = IPPROTO_ICMP;
	out->check = 0;
	/* From the address the packet was sent to (the VIP): the sender's
	 * stack matches the message to its connection by the quote. */
	out->saddr = daddr;
	out->daddr = saddr;
	out->check = xdpg_ipv4_hdr_csum(out);
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

/* ---- next hop ---------------------------------------------------------- */

/* fib_next_hop's and backend_hop's answer when the route is known but its
 * neighbour is not resolved: above every XDP verdict, so `rc >= 0` still
 * means "stop here" to callers that do not handle it themselves. */
#define XDPG_NEED_NEIGH 0x100

/* Asks the FIB for the next hop towards dst. Returns -1 to go on (fib is
 * filled), TOO_BIG(mtu) when the packet does not fit the route's MTU,
 * XDPG_NEED_NEIGH (uncounted) when the next hop's neighbour is not
 * resolved, else the verdict for the untouched packet. */
static __always_inline int fib_next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u8 family,
					const __u32 *src, const __u32 *dst, __u8 l4_proto, __u32 tot_len,
					__u64 bytes)
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

/* Counts a packet rewritten for a backend whose next hop is unresolved and
 * passes it to the stack. A subprogram, so its map lookups cost the
 * callers' frames nothing (lb_icmp's is near the shared limit). */
XDPG_COLD int no_neigh_pass(__u32 be_id, __u64 bytes)
{
	count_no_neigh(be_id, bytes);
	return XDP_PASS;
}

/* Asks the FIB for the next hop towards backend be_id and writes the answer
 * (with the route MTU) into this CPU's cache entry for it, valid for the
 * configured time (none: it is only this packet's answer). The question's
 * length and L4 protocol come packed as tot_len | l4_proto << 16 (a
 * subprogram takes five arguments). Returns -1 to go on, TOO_BIG(mtu),
 * XDPG_NEED_NEIGH (not counted: the caller counts what it makes of the
 * packet, with no_neigh_pass or dsr_probe), or the verdict. Only a
 * successful lookup is cached: any other answer leaves the entry as it was
 * (a "fragmentation needed" answer fills neither the MACs nor the egress,
 * and caching it sent every packet to that backend out of the ingress with
 * zero MACs until it expired). */
XDPG_COLD int refill_hop(struct xdp_md *ctx, __u32 be_id, struct xdpg_lb_backend *be, const __u32 *src,
			 __u32 packed)
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
		iph->check = xdpg_csum_finish(xdpg_csum_replace16(xdpg_csum_start(iph->check), old, *(__u16 *)&iph->ttl));
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		if ((void *)(ip6h + 1) > data_end)
			return;
		ip6h->hop_limit++;
	}
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
		out->version = 4;
		out->ihl = 5;
		out->tos = tos;
		out->tot_len = bpf_htons(28);
		out->id = 0;
		out->frag_off = 0;
		out->ttl = ttl;
		out->protocol = IPPROTO_ICMP;
		out->check = 0;
		out->saddr = saddr;
		out->daddr = daddr;
		out->check = xdpg_ipv4_hdr_csum(out);
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
 * FIB lookup. Returns the cache entry holding the hop, or NULL with *verdict
 * set for the untouched packet, or to XDPG_NEED_NEIGH: the caller then
 * hands the stack a packet that makes it resolve the neighbour, and counts
 * it (no_neigh_pass, dsr_probe). */
static __always_inline struct xdpg_lb_nexthop *backend_hop(struct xdp_md *ctx, __u32 be_id,
							   struct xdpg_lb_backend *be, const __u32 *src,
							   __u8 l4_proto, __u32 tot_len, __u64 bytes, int *verdict,
							   const int may_reply)
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
	return nh;
}

/* Writes the next hop's MACs and sends the frame on its way. */
static __always_inline int emit_to(struct xdp_md *ctx, const __u8 *dmac, const __u8 *smac, __u32 ifindex,
				   __u64 bytes)
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
	long rc = bpf_redirect_map(&xdpg_lb_devmap, ifindex, XDP_PASS);
	if (rc == XDP_REDIRECT) {
		count(XDPG_LB_EV_REDIRECT, bytes);
		return XDP_REDIRECT;
	}
	/* Not a devmap interface: the stack forwards the rewritten packet. */
	return pass_counted(XDPG_LB_PASS_NO_DEVMAP, bytes);
}

static __always_inline int emit(struct xdp_md *ctx, struct xdpg_lb_nexthop *nh, __u64 bytes)
{
	return emit_to(ctx, nh->dmac, nh->smac, nh->ifindex, bytes);
}

/* ---- tables ------------------------------------------------------------ */

/* Keys are written as whole 64-bit words: the kernel hashes them as 32-bit
 * words right away, and a load that spans several narrower stores cannot
 * be forwarded from the store buffer (it waits for them to reach the
 * cache, a stall measured at several ns per lookup). */
union xdpg_lb_vip_key4_words {
	struct xdpg_lb_vip_key4 k;
	__u64 w;
};

union xdpg_lb_vip_key_words {
	struct xdpg_lb_vip_key k;
	__u64 w[3]; /* 24 bytes: the key's 20 and padding */
};

union xdpg_lb_flow4_words {
	struct xdpg_lb_flow4 k;
	__u64 w[2];
};

/* A flow (the IPv6 connection and NAT key, and the hash input). */
union xdpg_lb_flow_words {
	struct xdpg_lb_flow f;
	__u64 w[5];
};

/* The cache slot for a VIP key (a multiplicative hash of its words). */
static __always_inline struct xdpg_lb_vip_cache *vip_cache_slot(__u64 k0, __u64 k1, __u64 k2)
{
	__u32 slot = ((k0 ^ (k1 * 0xC2B2AE3D27D4EB4Full) ^ (k2 * 0x165667B19E3779F9ull)) * 0x9E3779B97F4A7C15ull) >> 60;
	slot &= XDPG_LB_VIP_CACHE_SLOTS - 1;
	return bpf_map_lookup_elem(&xdpg_lb_vipc, &slot);
}

/* The VIP for (the flow's destination, port, protocol); port 0 looks up the
 * all-ports VIP. IPv4 uses its own map with an 8-byte key. Answers come
 * from this CPU's cache while the config generation they were found in is
 * current and no edit is under way (cfg->hdr.dirty); a hash-map lookup costs
 * several calls and a hash. This relies on user space bumping the
 * generation after anything that may have changed a VIP map: every edit
 * does, and so must the recovery from an edit that died half way. */
static __always_inline struct xdpg_lb_vip *vip_lookup(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow,
						      __u16 port)
{
	__u64 gen = cfg->hdr.generation + 1;
	__u64 k0, k1 = 0, k2 = 0;
	struct xdpg_lb_vip *vip;

	if (flow->family == XDPG_LB_FAMILY_V4)
		k0 = (__u64)flow->dst[0] | ((__u64)port << 32) | ((__u64)flow->proto << 48);
	else {
		k0 = (__u64)flow->dst[0] | ((__u64)flow->dst[1] << 32);
		k1 = (__u64)flow->dst[2] | ((__u64)flow->dst[3] << 32);
		k2 = (__u64)port | ((__u64)flow->proto << 16) | ((__u64)flow->family << 24);
	}
	struct xdpg_lb_vip_cache *c = vip_cache_slot(k0, k1, k2);
	if (c && c->generation == gen && c->key[0] == k0 && c->key[1] == k1 && c->key[2] == k2 && !cfg->hdr.dirty)
		return &c->vip;
	if (flow->family == XDPG_LB_FAMILY_V4) {
		union xdpg_lb_vip_key4_words k4;
		k4.w = k0;
		vip = bpf_map_lookup_elem(&xdpg_lb_vips4, &k4.k);
		XDPG_DISTINCT(vip);
	} else {
		union xdpg_lb_vip_key_words key;
		key.w[0] = k0;
		key.w[1] = k1;
		key.w[2] = k2;
		vip = bpf_map_lookup_elem(&xdpg_lb_vips6, &key.k);
	}
	if (vip && c && !cfg->hdr.dirty) {
		c->key[0] = k0;
		c->key[1] = k1;
		c->key[2] = k2;
		__builtin_memcpy(&c->vip, vip, sizeof(c->vip));
		c->generation = gen;
	}
	return vip;
}

/* The VIP for a TCP/UDP flow: its port's, else the all-ports one. */
static __always_inline struct xdpg_lb_vip *vip_for(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow)
{
	struct xdpg_lb_vip *vip = vip_lookup(cfg, flow, flow->dport);
	if (!vip && cfg->allport_vips)
		vip = vip_lookup(cfg, flow, 0);
	return vip;
}

static __always_inline void flow4_key(union xdpg_lb_flow4_words *k, const struct xdpg_lb_flow *flow)
{
	k->w[0] = (__u64)flow->src[0] | ((__u64)flow->dst[0] << 32);
	k->w[1] = (__u64)flow->sport | ((__u64)flow->dport << 16) | ((__u64)flow->proto << 32);
}

static __always_inline struct xdpg_lb_conn *conn_lookup(const struct xdpg_lb_flow *flow)
{
	if (flow->family == XDPG_LB_FAMILY_V4) {
		union xdpg_lb_flow4_words k;
		flow4_key(&k, flow);
		struct xdpg_lb_conn *conn = bpf_map_lookup_elem(&xdpg_lb_conns4, &k.k);
		XDPG_DISTINCT(conn);
		return conn;
	}
	return bpf_map_lookup_elem(&xdpg_lb_conns6, flow);
}

static __always_inline void conn_update(const struct xdpg_lb_flow *flow, struct xdpg_lb_conn *conn)
{
	if (flow->family == XDPG_LB_FAMILY_V4) {
		union xdpg_lb_flow4_words k;
		flow4_key(&k, flow);
		long rc = bpf_map_update_elem(&xdpg_lb_conns4, &k.k, conn, BPF_ANY);
		XDPG_DISTINCT(rc);
		return;
	}
	bpf_map_update_elem(&xdpg_lb_conns6, flow, conn, BPF_ANY);
}

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

/* ---- L2 DSR ------------------------------------------------------------ */

static __always_inline int fwd_dsr(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u64 bytes, const int may_reply)
{
	int verdict = XDP_PASS;
	if (be->family != flow->family)
		return drop_counted(XDPG_LB_DROP_UNSUPPORTED, bytes);
	struct xdpg_lb_nexthop *nh = backend_hop(ctx, be_id, be, flow->src, flow->proto, l3_len, bytes, &verdict, may_reply);
	if (!nh)
		return verdict == XDPG_NEED_NEIGH ? dsr_probe(ctx, be_id, be) : verdict;
	return emit(ctx, nh, bytes);
}

/* ---- IPIP -------------------------------------------------------------- */

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
	__u32 saddr = cfg->ipip_v4_src | (bpf_htonl(hash) & cfg->ipip_v4_mask);
	__u32 daddr = be->addr[0];
	src[0] = saddr;
	__u32 outer_len = l3_len + sizeof(struct iphdr);
	struct xdpg_lb_nexthop *nh = backend_hop(ctx, be_id, be, src, IPPROTO_IPIP, outer_len, bytes, &verdict, may_reply);
	if (!nh && verdict != XDPG_NEED_NEIGH)
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
	 * total length; ID and fragment offset (0); TTL, protocol and the
	 * checksum; source; destination. The checksum is summed from the same
	 * register values (one's-complement sums do not care about byte
	 * order). */
	__u32 w0 = 0x45 | (tos << 8) | ((__u32)bpf_htons(outer_len) << 16);
	__u32 w2 = XDPG_LB_OUTER_TTL | (IPPROTO_IPIP << 8);
	__u16 check = ~xdpg_csum_fold_words((__u64)w0 + w2 + saddr + daddr);
	w2 |= (__u32)check << 16;
	__u32 *o = (__u32 *)outer;
	o[0] = w0;
	o[1] = 0;
	o[2] = w2;
	o[3] = saddr;
	o[4] = daddr;
	eth->h_proto = bpf_htons(ETH_P_IP);
	/* No neighbour: the stack routes the tunnel packet and resolves it. */
	if (!nh)
		return no_neigh_pass(be_id, bytes);
	return emit(ctx, nh, bytes + sizeof(struct iphdr));
}

static __always_inline int encap_v6(struct xdp_md *ctx, struct xdpg_lb_config *cfg, __u32 be_id,
				    struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l3_len, __u32 hash,
				    __u64 bytes, const int may_reply)
{
	int verdict = XDP_PASS;
	__u32 src[4];

	src[0] = cfg->ipip_v6_src[0];
	src[1] = cfg->ipip_v6_src[1];
	src[2] = cfg->ipip_v6_src[2] | (bpf_htonl(xdpg_mix32(hash)) & cfg->ipip_v6_mask[0]);
	src[3] = cfg->ipip_v6_src[3] | (bpf_htonl(hash) & cfg->ipip_v6_mask[1]);
	__u8 next = flow->family == XDPG_LB_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	struct xdpg_lb_nexthop *nh = backend_hop(ctx, be_id, be, src, next, l3_len + sizeof(struct ipv6hdr), bytes, &verdict, may_reply);
	if (!nh && verdict != XDPG_NEED_NEIGH)
		return verdict;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
		return drop_counted(XDPG_LB_DROP_HEADROOM, bytes);
	if (!nh)
		keep_macs(ctx, sizeof(struct ipv6hdr));
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *outer = data + XDPG_ETH_HLEN;
	if ((void *)(outer + 1) > data_end)
		return XDP_DROP;
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	/* Version 6, traffic class 0, and a flow label from the flow hash, so
	 * ECMP and RSS on the way spread flows. */
	*(__u32 *)outer = bpf_htonl((6u << 28) | (hash & 0xFFFFF));
	outer->payload_len = bpf_htons(l3_len);
	outer->nexthdr = next;
	outer->hop_limit = XDPG_LB_OUTER_TTL;
	__builtin_memcpy(&outer->saddr, src, 16);
	__builtin_memcpy(&outer->daddr, be->addr, 16);
	if (!nh)
		return no_neigh_pass(be_id, bytes);
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

/* ---- NAT --------------------------------------------------------------- */

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
	struct xdpg_lb_nexthop *nh = backend_hop(ctx, be_id, be, flow->src, flow->proto, l3_len, bytes, &verdict, may_reply);
	if (!nh && verdict != XDPG_NEED_NEIGH)
		return verdict;
	if (nat_rewrite(ctx, flow->family, flow->proto, l4_off, NAT_DST, be->addr, port) < 0)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	if (!nh) {
		/* The stack forwards it to the backend, resolving the neighbour. */
		undo_ttl(ctx, flow->family);
		return no_neigh_pass(be_id, bytes);
	}
	return emit(ctx, nh, bytes);
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

/* ---- backend selection ------------------------------------------------- */

/* The VIP's Maglev choice for a flow hash. */
static __always_inline __u32 maglev_pick(struct xdpg_lb_vip *vip, __u32 hash)
{
	__u32 index = vip->index;
	void *table = bpf_map_lookup_elem(&xdpg_lb_tables, &index);
	if (!table)
		return XDPG_LB_NO_BACKEND;
	__u32 size = vip->table_size;
	if (size == 0)
		return XDPG_LB_NO_BACKEND;
	__u32 slot = hash % size;
	__u32 *id = bpf_map_lookup_elem(table, &slot);
	return id ? *id : XDPG_LB_NO_BACKEND;
}

/* Whether this CPU may create one more connection entry now (GCRA). */
static __always_inline int may_track(struct xdpg_lb_config *cfg, __u64 jiffies)
{
	__u64 interval = cfg->new_flow_interval;
	if (!interval)
		return 1;
	__u64 now = jiffies * cfg->ns_per_jiffy;
	__u32 zero = 0;
	struct xdpg_lb_rate *r = bpf_map_lookup_elem(&xdpg_lb_rate, &zero);
	if (!r)
		return 1;
	__u64 tat = r->tat;
	if (tat < now)
		tat = now;
	if (tat - now > cfg->new_flow_burst)
		return 0;
	r->tat = tat + interval;
	return 1;
}

static __always_inline struct xdpg_lb_backend *backend_at(__u32 id)
{
	struct xdpg_lb_backend *be = bpf_map_lookup_elem(&xdpg_lb_backend, &id);
	if (!be || !(be->flags & XDPG_LB_BACKEND_ACTIVE))
		return NULL;
	return be;
}

/* Counts the packet for its backend and sends it by the VIP's mode. */
static __always_inline int deliver(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip,
				   __u32 be_id, struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow,
				   __u32 l4_off, __u32 l3_len, __u32 hash, __u64 bytes, const int may_reply)
{
	struct xdpg_counter *bs = bpf_map_lookup_elem(&xdpg_lb_becnt, &be_id);
	if (bs) {
		bs->packets++;
		bs->bytes += bytes;
	}
	switch (vip->mode) {
	case XDPG_LB_MODE_DSR:
		return fwd_dsr(ctx, cfg, be_id, be, flow, l3_len, bytes, may_reply);
	case XDPG_LB_MODE_IPIP:
		return fwd_ipip(ctx, cfg, be_id, be, flow, l3_len, hash, bytes, may_reply);
	default:
		return fwd_nat(ctx, cfg, be_id, be, flow, l4_off, l3_len, bytes, may_reply);
	}
}

/* A connection entry as two words, backend | gen << 32 and last_seen |
 * hash << 32: written whole, and the first read whole, so a reader on
 * another CPU never pairs one backend with another's generation. */
union xdpg_lb_conn_words {
	struct xdpg_lb_conn c;
	__u64 w[2];
};

/* A TCP/UDP packet for a VIP. */
static __always_inline int lb_vip(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip,
				  struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len, int syn, __u64 bytes)
{
	__u32 vip_index = vip->index;
	struct xdpg_lb_vip_stats *vs = bpf_map_lookup_elem(&xdpg_lb_vipcnt, &vip_index);
	struct xdpg_lb_backend *be = NULL;
	union xdpg_lb_conn_words *conn = NULL;
	__u32 be_id = XDPG_LB_NO_BACKEND;
	int track = !(vip->flags & XDPG_LB_VIP_NO_CONNTRACK);
	__u32 hash = 0;

	if (vs) {
		vs->packets++;
		vs->bytes += bytes;
	}
	/* A SYN is looked up too, though it chooses afresh: a repeated SYN
	 * then refreshes its entry in place instead of replacing it (an LRU
	 * update takes a new element, two locks and frees the old one), and a
	 * new flow's lookup brings the bucket into the cache for the insert. */
	if (track)
		conn = (union xdpg_lb_conn_words *)conn_lookup(flow);
	if (conn && !syn) {
		__u64 backend_gen = conn->w[0];
		be_id = (__u32)backend_gen;
		hash = conn->c.hash;
		be = backend_at(be_id);
		if (be && be->gen != (__u32)(backend_gen >> 32))
			be = NULL;
		if (be && flow->proto == IPPROTO_UDP) {
			__u32 now = bpf_jiffies64();
			__u32 last = conn->c.last_seen;
			if (now - last > cfg->udp_timeout)
				be = NULL;
			else if (now != last)
				conn->c.last_seen = now; /* at most one write per tick */
		}
	}
	if (be) {
		if (vs)
			vs->lru_hits++;
	} else {
		if (vs)
			vs->lru_misses++;
		hash = xdpg_lb_flow_hash(flow, cfg->hash_seed, vip->flags & XDPG_LB_VIP_HASH_SRC_ONLY);
		be_id = maglev_pick(vip, hash);
		be = backend_at(be_id);
		if (!be)
			return drop_counted(XDPG_LB_DROP_NO_BACKEND, bytes);
		if (track) {
			__u64 now = bpf_jiffies64();
			if (may_track(cfg, now)) {
				__u64 w0 = be_id | ((__u64)be->gen << 32);
				__u64 w1 = (__u32)now | ((__u64)hash << 32);
				if (conn) {
					/* Written only when something changed (at most
					 * once a tick for a repeated SYN). */
					if (conn->w[0] != w0 || conn->w[1] != w1) {
						conn->w[1] = w1;
						conn->w[0] = w0;
					}
				} else {
					union xdpg_lb_conn_words fresh;
					fresh.w[0] = w0;
					fresh.w[1] = w1;
					conn_update(flow, &fresh.c);
				}
				if (vip->mode == XDPG_LB_MODE_NAT)
					nat_remember(flow, be, vip_index);
				if (vs)
					vs->new_flows++;
			} else {
				count(XDPG_LB_EV_CT_REFUSED, bytes);
				/* NAT translates replies from this state: an untracked
				 * flow would reach its backend and then break, so it is
				 * dropped and the client retries. */
				if (vip->mode == XDPG_LB_MODE_NAT)
					return drop_counted(XDPG_LB_DROP_NAT_UNTRACKED, bytes);
			}
		}
	}
	return deliver(ctx, cfg, vip, be_id, be, flow, l4_off, l3_len, hash, bytes, 1);
}

static __always_inline int is_vip_addr(struct xdpg_lb_flow *flow)
{
	struct xdpg_lb_addr_key key = {};
	addr_copy(key.addr, flow->dst);
	key.family = flow->family;
	return bpf_map_lookup_elem(&xdpg_lb_vaddrs, &key) != NULL;
}

/* A fragment (first or later): no ports to key on, so only all-ports VIPs
 * can take it, hashed without ports so every fragment of a datagram goes
 * to the same backend. */
XDPG_COLD int lb_fragment(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *flow, __u32 l3_len)
{
	__u64 bytes = ctx->data_end - ctx->data;
	if (cfg->frag_policy == XDPG_LB_FRAG_FORWARD &&
	    (flow->proto == IPPROTO_TCP || flow->proto == IPPROTO_UDP)) {
		struct xdpg_lb_vip *vip = vip_lookup(cfg, flow, 0);
		if (vip && vip->mode != XDPG_LB_MODE_NAT) {
			__u32 vip_index = vip->index;
			struct xdpg_lb_vip_stats *vs = bpf_map_lookup_elem(&xdpg_lb_vipcnt, &vip_index);
			if (vs) {
				vs->packets++;
				vs->bytes += bytes;
				vs->lru_misses++;
			}
			__u32 hash = xdpg_lb_flow_hash(flow, cfg->hash_seed, vip->flags & XDPG_LB_VIP_HASH_SRC_ONLY);
			__u32 be_id = maglev_pick(vip, hash);
			struct xdpg_lb_backend *be = backend_at(be_id);
			if (!be)
				return drop_counted(XDPG_LB_DROP_NO_BACKEND, bytes);
			count(XDPG_LB_EV_FRAG_FORWARDED, bytes);
			return deliver(ctx, cfg, vip, be_id, be, flow, 0, l3_len, hash, bytes, 1);
		}
	}
	if (is_vip_addr(flow))
		return drop_counted(XDPG_LB_DROP_FRAGMENT, bytes);
	return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
}

/* ---- ICMP -------------------------------------------------------------- */

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
static __always_inline int nat_icmp_rewrite(struct xdp_md *ctx, struct xdpg_lb_quoted *q, __u32 icmp_off,
					    int direction, int outer_too, const __u32 *addr, __u16 port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 icmp_fix = 0;

	if (icmp_off > XDPG_LB_MAX_L4_OFFSET || q->l3_off > XDPG_LB_MAX_L4_OFFSET ||
	    q->l4_off > XDPG_LB_MAX_L4_OFFSET)
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

static __always_inline int same_addr(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
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
	if (!fib->ifindex) {
		undo_ttl(ctx, flow->family);
		return pass_counted(XDPG_LB_PASS_NO_NEIGH, bytes);
	}
	return emit_to(ctx, fib->dmac, fib->smac, fib->ifindex, bytes);
}

/* A reply from a NAT backend (cold: kept out of the entry function). */
XDPG_COLD int nat_reply(struct xdp_md *ctx, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len)
{
	return nat_to_client(ctx, flow, NULL, l4_off, l3_len);
}

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
		struct xdpg_lb_conn *conn = conn_lookup(&q->flow);
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
	if (!nh && verdict != XDPG_NEED_NEIGH)
		return verdict;
	if (nat_icmp_rewrite(ctx, q, icmp_off, ICMP_TO_BACKEND, 1, be->addr, port) < 0)
		return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
	if (!nh) {
		undo_ttl(ctx, outer->family);
		return no_neigh_pass(be_id, bytes);
	}
	return emit(ctx, nh, bytes);
}

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

/* ---- entry ------------------------------------------------------------- */

/* What parsing tells the TCP/UDP path besides the flow. */
struct xdpg_lb_meta {
	__u32 l4_off;
	__u32 l3_len;
	__u32 syn;	  /* a bare SYN (SYN without ACK) */
	__u32 ip_options; /* an IPv4 header longer than 20 bytes */
};

/* The common case without the generic parser's loops: an untagged IPv4
 * packet without options or fragmentation, or an IPv6 packet without
 * extension headers, carrying a whole TCP or UDP header (within the IP
 * packet, not only the frame). Returns 0 with the flow and meta filled, or
 * -1: the generic path then decides (and gives these packets the verdict it
 * always gave them). */
static __always_inline int parse_fast(void *data, void *data_end, union xdpg_lb_flow_words *fw,
				      struct xdpg_lb_meta *m)
{
	struct ethhdr *eth = data;
	void *l4;
	__u32 l4_len; /* the IP packet's bytes from l4 on */
	__u64 family;
	__u8 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return -1;
		__u32 tot = bpf_ntohs(iph->tot_len);
		if (*(__u8 *)iph != 0x45 || (iph->frag_off & bpf_htons(XDPG_IP_MF | XDPG_IP_OFFSET)) ||
		    tot < sizeof(*iph) || (void *)iph + tot > data_end)
			return -1;
		proto = iph->protocol;
		l4 = iph + 1;
		l4_len = tot - sizeof(*iph);
		fw->w[0] = iph->saddr;
		fw->w[1] = 0;
		fw->w[2] = iph->daddr;
		fw->w[3] = 0;
		m->l3_len = tot;
		m->l4_off = XDPG_ETH_HLEN + sizeof(*iph);
		family = XDPG_LB_FAMILY_V4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__u32 plen = bpf_ntohs(ip6h->payload_len);
		/* payload_len 0 (a jumbogram) takes the generic path. */
		if ((*(__u8 *)ip6h & 0xF0) != 0x60 || plen == 0 || (void *)(ip6h + 1) + plen > data_end)
			return -1;
		proto = ip6h->nexthdr;
		l4 = ip6h + 1;
		l4_len = plen;
		__u32 *a = (__u32 *)&ip6h->saddr;
		fw->w[0] = a[0] | ((__u64)a[1] << 32);
		fw->w[1] = a[2] | ((__u64)a[3] << 32);
		fw->w[2] = a[4] | ((__u64)a[5] << 32);
		fw->w[3] = a[6] | ((__u64)a[7] << 32);
		m->l3_len = plen + sizeof(*ip6h);
		m->l4_off = XDPG_ETH_HLEN + sizeof(*ip6h);
		family = XDPG_LB_FAMILY_V6;
	} else {
		return -1;
	}
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end || l4_len < sizeof(*th))
			return -1;
		/* Byte 13 holds the flags: SYN is 0x02, ACK 0x10. */
		m->syn = (((__u8 *)th)[13] & 0x12) == 0x02;
	} else if (proto == IPPROTO_UDP) {
		if (l4 + sizeof(struct udphdr) > data_end || l4_len < sizeof(struct udphdr))
			return -1;
		m->syn = 0;
	} else {
		return -1;
	}
	/* Source and destination port as they sit in the packet. */
	fw->w[4] = *(__u32 *)l4 | ((__u64)proto << 32) | (family << 40);
	m->ip_options = 0;
	return 0;
}

/* Everything parse_fast leaves: VLAN tags, IPv4 options, fragments, IPv6
 * extension headers, ICMP, other protocols, malformed packets. Returns a
 * verdict, or -1 with the flow and meta filled for the TCP/UDP path. */
static __always_inline int lb_generic(struct xdp_md *ctx, struct xdpg_lb_config *cfg, union xdpg_lb_flow_words *fw,
			 struct xdpg_lb_meta *m)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct xdpg_pkt pkt = {};
	struct xdpg_lb_flow *flow = &fw->f;
	__u32 l3_len;

	__builtin_memset(fw, 0, sizeof(*fw));
	int parsed = xdpg_parse(ctx, &pkt);
	if (parsed != XDPG_PARSE_OK)
		return pass_counted(parsed == XDPG_PARSE_NON_IP ? XDPG_LB_PASS_NON_VIP : XDPG_LB_PASS_MALFORMED,
				    bytes);
	/* VLAN-tagged traffic is not load balanced (the egress may not carry
	 * the tag): the stack gets it. */
	if (pkt.vlan_tags)
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);

	if (pkt.l3_proto == ETH_P_IP) {
		struct iphdr *iph = data + XDPG_ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return XDP_PASS;
		flow->src[0] = iph->saddr;
		flow->dst[0] = iph->daddr;
		flow->family = XDPG_LB_FAMILY_V4;
		l3_len = bpf_ntohs(iph->tot_len);
	} else {
		struct ipv6hdr *ip6h = data + XDPG_ETH_HLEN;
		if ((void *)(ip6h + 1) > data_end)
			return XDP_PASS;
		/* Payload length 0 with hop-by-hop claims a jumbogram, whose
		 * length we do not read (parsing.h); nothing XDP sees can be
		 * one. Other payload lengths of 0 are 40-byte packets. */
		if (ip6h->payload_len == 0 && ip6h->nexthdr == IPPROTO_HOPOPTS)
			return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
		__builtin_memcpy(flow->src, &ip6h->saddr, 16);
		__builtin_memcpy(flow->dst, &ip6h->daddr, 16);
		flow->family = XDPG_LB_FAMILY_V6;
		l3_len = bpf_ntohs(ip6h->payload_len) + sizeof(*ip6h);
	}
	flow->proto = pkt.l4_proto;

	if (pkt.fragment)
		return lb_fragment(ctx, cfg, flow, l3_len);

	if (flow->proto == IPPROTO_TCP || flow->proto == IPPROTO_UDP) {
		int syn = 0;
		/* Untagged: the IP packet starts at 14. */
		if (xdpg_lb_read_ports(data, data_end, pkt.l4_off, XDPG_ETH_HLEN + l3_len, flow, &syn) < 0)
			return pass_counted(XDPG_LB_PASS_MALFORMED, bytes);
		m->l4_off = pkt.l4_off;
		m->l3_len = l3_len;
		m->syn = syn;
		m->ip_options = pkt.ip_options;
		return -1;
	}
	if ((flow->proto == IPPROTO_ICMP && flow->family == XDPG_LB_FAMILY_V4) ||
	    (flow->proto == IPPROTO_ICMPV6 && flow->family == XDPG_LB_FAMILY_V6))
		return lb_icmp(ctx, cfg, flow, pkt.l4_off, l3_len);
	return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
}

SEC("xdp")
int xdpg_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0;
	union xdpg_lb_flow_words fw;
	struct xdpg_lb_meta m;

	struct xdpg_lb_config *cfg = bpf_map_lookup_elem(&xdpg_lb_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse_fast(data, data_end, &fw, &m) < 0) {
		int rc = lb_generic(ctx, cfg, &fw, &m);
		if (rc >= 0)
			return rc;
	}
	struct xdpg_lb_flow *flow = &fw.f;
	/* A no-op for every offset parsing produces (all are below it), and
	 * a bound the verifier can see after the round trip through m. */
	__u32 l4_off = m.l4_off & XDPG_LB_MAX_L4_OFFSET;
	struct xdpg_lb_vip *vip = vip_for(cfg, flow);
	if (!vip) {
		if (cfg->nat_vips)
			return nat_reply(ctx, flow, l4_off, m.l3_len);
		return pass_counted(XDPG_LB_PASS_NON_VIP, bytes);
	}
	if (m.ip_options) {
		if (cfg->options_policy == XDPG_LB_OPTIONS_DROP)
			return drop_counted(XDPG_LB_DROP_IP_OPTIONS, bytes);
		count(XDPG_LB_EV_OPTIONS_FORWARDED, bytes);
	}
	return lb_vip(ctx, cfg, vip, flow, l4_off, m.l3_len, m.syn, bytes);
}
