// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The xdpguard L4 load balancer: its entry point and a packet's path.
 *
 * Per packet: one parse, one VIP lookup (two for all-ports VIPs), one
 * connection-table lookup, one backend slot; only a new flow (or a SYN)
 * computes the hash, reads the VIP's Maglev table and writes the
 * connection table. The next hop comes from the kernel FIB. It runs
 * attached on its own or tail-called by the filter (it re-parses either
 * way).
 *
 * A packet's path, top to bottom of this file:
 * 1. xdpg_lb, the entry: the config, the parse, the VIP (vip_for,
 *    lb_select.h, cached per CPU), the IPv4 options policy. A packet for
 *    no VIP may be a NAT backend's reply (nat_reply, lb_nat.h), else it
 *    passes.
 * 2. Parsing: parse_fast takes the common case (untagged IPv4 or IPv6,
 *    TCP or UDP, no options, fragments or extension headers), lb_generic
 *    (parsing.h, lb_parsing.h) the rest, handing fragments to lb_fragment
 *    (all-ports VIPs only, hashed without ports) and ICMP to lb_icmp
 *    (lb_icmp.h: echo, and errors about a VIP's flows, which go to the
 *    flow's backend).
 * 3. lb_vip: the connection table, else the Maglev choice (lb_select.h;
 *    the flow hash in lb_hash.h), a new entry within the per-CPU new-flow
 *    bound, and for NAT the state that translates replies (nat_remember,
 *    lb_nat.h).
 * 4. deliver, by the VIP's mode: L2 DSR (fwd_dsr, lb_nexthop.h), IPIP
 *    (fwd_ipip, lb_encap.h), NAT (fwd_nat, lb_nat.h). Each asks backend_hop
 *    (lb_nexthop.h) for the next hop (a per-CPU cache of FIB answers) and
 *    emits the frame: XDP_TX, or XDP_REDIRECT through the devmap. A packet
 *    too big for the route is answered by send_too_big (lb_icmp.h); one
 *    whose next hop has no resolved neighbour goes to the stack, which
 *    resolves it (stack_pass, dsr_probe in lb_nexthop.h), and so does one
 *    whose egress is not in the devmap (stack_pass), with the MACs it
 *    came with.
 *
 * The other files: lb_consts.h (modes, policies, counters), lb_structs.h
 * (what user space shares), lb_maps.h (every map, with why it is the type
 * it is), lb_common.h (XDPG_COLD, XDPG_DISTINCT, counting, scratch); and,
 * shared with the filter, common.h, parsing.h, hash.h, csum.h.
 *
 * What keeps the hot path short (each measured with benches/per_packet.rs;
 * BENCHMARKS.md has the numbers):
 * - untagged IPv4 without options or fragments and IPv6 without extension
 *   headers, carrying TCP or UDP, skip the generic parser (parse_fast);
 * - flows and map keys are written as whole 64-bit words, since the kernel
 *   reads keys back as words at once and a load spanning narrower fresh
 *   stores cannot be forwarded from the store buffer (lb_select.h);
 * - each map call site uses one map (XDPG_DISTINCT, lb_common.h), so the
 *   verifier can inline lookups and call map functions directly;
 * - rare paths are subprograms (XDPG_COLD, lb_common.h), out of the entry
 *   function;
 * - VIP lookups are cached per CPU for one config generation;
 * - a SYN looks its flow up too and refreshes an existing entry in place;
 * - the outer IPv4 header is written as five words and checksummed from
 *   registers (lb_encap.h).
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
 *   managed neighbour entries, so this is rare. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "parsing.h"
#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_maps.h"
#include "lb_parsing.h"
#include "lb_hash.h"
#include "lb_common.h"
#include "lb_select.h"
#include "lb_nexthop.h"
#include "lb_encap.h"
#include "lb_nat.h"
#include "lb_icmp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* What parsing tells the TCP/UDP path besides the flow. */
struct xdpg_lb_meta {
	__u32 l4_off;
	__u32 l3_len;
	__u32 syn;	  /* a bare SYN (SYN without ACK) */
	__u32 ip_options; /* an IPv4 header longer than 20 bytes */
};

/* This file's stages, defined below in the order a packet meets them. */
static __always_inline int parse_fast(void *data, void *data_end, union xdpg_lb_flow_words *fw, struct xdpg_lb_meta *m);
static __always_inline int lb_generic(struct xdp_md *ctx, struct xdpg_lb_config *cfg, union xdpg_lb_flow_words *fw,
				      struct xdpg_lb_meta *m);
XDPG_COLD int lb_fragment(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *flow, __u32 l3_len);
static __always_inline int lb_vip(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip,
				  struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len, int syn, __u64 bytes);
static __always_inline int deliver(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len,
				   __u32 hash, __u64 bytes, const int may_reply);

/* ---- 1. entry: config, parse, VIP, policies ----------------------------- */

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

/* ---- 2. parsing, and the fragments it hands off ------------------------- */

/* The common case without the generic parser's loops: an untagged IPv4
 * packet without options or fragmentation, or an IPv6 packet without
 * extension headers, carrying a whole TCP or UDP header (within the IP
 * packet, not only the frame). Returns 0 with the flow and meta filled, or
 * -1: the generic path then decides (and gives these packets the verdict it
 * always gave them). */
static __always_inline int parse_fast(void *data, void *data_end, union xdpg_lb_flow_words *fw, struct xdpg_lb_meta *m)
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
		return pass_counted(parsed == XDPG_PARSE_NON_IP ? XDPG_LB_PASS_NON_VIP : XDPG_LB_PASS_MALFORMED, bytes);
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

/* A fragment (first or later): no ports to key on, so only all-ports VIPs
 * can take it, hashed without ports so every fragment of a datagram goes
 * to the same backend. */
XDPG_COLD int lb_fragment(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_flow *flow, __u32 l3_len)
{
	__u64 bytes = ctx->data_end - ctx->data;
	if (cfg->frag_policy == XDPG_LB_FRAG_FORWARD && (flow->proto == IPPROTO_TCP || flow->proto == IPPROTO_UDP)) {
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

/* ---- 3. connection table or Maglev -------------------------------------- */

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
		conn = (union xdpg_lb_conn_words *)conn_lookup(cfg, flow);
	if (conn && !syn) {
		__u64 backend_gen = conn->w[0];
		be_id = (__u32)backend_gen;
		hash = conn->c.hash;
		be = backend_at(be_id);
		if (be && be->gen != (__u32)(backend_gen >> 32))
			be = NULL;
		/* A UDP entry's age is its timeout; an IPv4 entry's is also what
		 * decides which entry a new flow replaces (lb_select.h), so it is
		 * kept for TCP too. An IPv6 TCP hit reads no clock (the LRU hash
		 * keeps its own order). */
		if (be && (flow->proto == IPPROTO_UDP || flow->family == XDPG_LB_FAMILY_V4)) {
			__u32 now = bpf_jiffies64();
			__u32 last = conn->c.last_seen;
			if (flow->proto == IPPROTO_UDP && now - last > cfg->udp_timeout)
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
					conn_insert(cfg, flow, &fresh);
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

/* ---- 4. delivery by mode ------------------------------------------------ */

/* Counts the packet for its backend and sends it by the VIP's mode. */
static __always_inline int deliver(struct xdp_md *ctx, struct xdpg_lb_config *cfg, struct xdpg_lb_vip *vip, __u32 be_id,
				   struct xdpg_lb_backend *be, struct xdpg_lb_flow *flow, __u32 l4_off, __u32 l3_len,
				   __u32 hash, __u64 bytes, const int may_reply)
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
