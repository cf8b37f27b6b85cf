/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The SYN-flood guard, the guard stage's last step (guard.bpf.c's
 * undecided(): packets the lists and the rules left). It acts on TCP
 * packets to the protected ports (xdpg_syn_idx), by the port's mode:
 *
 * - drop: SYNs are counted in a per-port rate (a one-second window, the
 *   previous window weighted by its overlap with the last second). Above
 *   the port's threshold, a SYN from a source that has not completed a
 *   handshake is dropped. "Completed a handshake" is known from
 *   xdpg_syn_known, an LRU of sources: one enters when it sends a pure ACK
 *   (ACK set; SYN, RST clear) to a protected port while that port is under
 *   its threshold, or an ACK with a valid SYN cookie to a port in cookie
 *   mode (unforgeable). A pure ACK is forgeable by a spoofer who knows
 *   the port; during a flood (above the threshold) no source enters by an
 *   ACK, so a spoofed flood cannot let its own SYNs in or evict real
 *   clients by ACKs sent with it.
 * - cookie: every SYN is answered here with a SYN-ACK built in place
 *   (XDP_TX), its sequence number a SYN cookie from the kernel's own
 *   secret (bpf_tcp_raw_gen_syncookie_ipv4/6, Linux 6.0); the SYN never
 *   reaches the stack. An ACK whose cookie the kernel accepts
 *   (bpf_tcp_raw_check_syncookie_ipv4/6) is passed: nftables' synproxy
 *   (conntrack, the same secret) completes the connection with the server.
 *   Other ACKs (of established connections, or forged) go to conntrack,
 *   which passes the established and drops the rest. Always, not only
 *   above a threshold: the host needs synproxy for the port anyway (the
 *   stack could not complete a connection from an XDP cookie without it),
 *   and synproxy answers every SYN with a cookie too; passing SYNs below a
 *   threshold would only send them the slow way, and cost a shared rate
 *   counter on every SYN.
 *
 * Monitor (the filter's, or the port's): what would be dropped or answered
 * is counted and passed.
 *
 * Costs and limits are in src/filter/guard/syn.rs's docs. */
#ifndef XDPG_GUARD_SYN_H
#define XDPG_GUARD_SYN_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parsing.h"
#include "csum.h"
#include "guard_structs.h"
#include "guard_clock.h"
#include "guard_syn_consts.h"
#include "guard_syn_structs.h"
#include "guard_syn_maps.h"

#define XDPG_TCP_FIN 0x01
#define XDPG_TCP_SYN 0x02
#define XDPG_TCP_RST 0x04
#define XDPG_TCP_ACK 0x10

/* The port's SYN rate (SYNs in the last second, estimated), counting this
 * SYN first when `add`. */
static __always_inline __u64 syn_rate(struct xdpg_syn_port *p, __u64 now, int add)
{
	__u64 w = now / XDPG_SYN_WINDOW_NS;
	__u64 left = XDPG_SYN_WINDOW_NS - (now - w * XDPG_SYN_WINDOW_NS);
	__u64 win = *(volatile __u64 *)&p->window;
	if (win != w) {
		__u64 before = win + 1 == w ? p->cur : 0;
		if (!add)
			return before * left / XDPG_SYN_WINDOW_NS;
		/* Racy between CPUs: two may both roll the window and lose a
		 * few SYNs of the count, never more. */
		p->prev = before;
		p->cur = 0;
		p->window = w;
	}
	if (add)
		__sync_fetch_and_add(&p->cur, 1);
	return p->cur + p->prev * left / XDPG_SYN_WINDOW_NS;
}

static __always_inline void syn_key(struct xdpg_syn_key *k, const __u32 *src, __u32 family)
{
	__builtin_memcpy(k->addr, src, sizeof(k->addr));
	k->family = family;
}

/* Whether the source completed a handshake within the config's TTL. */
static __always_inline int syn_known(const __u32 *src, __u32 family, __u64 now, const struct xdpg_syn_config *cfg)
{
	struct xdpg_syn_key k = {};
	syn_key(&k, src, family);
	__u64 *seen = bpf_map_lookup_elem(&xdpg_syn_known, &k);
	return seen && now - *seen < (__u64)cfg->known_ttl_s * 1000000000ull;
}

/* Records that the source completed a handshake (rewrites a fresh entry
 * at most once a second: established flows' ACKs then cost a lookup). */
static __always_inline void syn_remember(const __u32 *src, __u32 family, __u64 now)
{
	struct xdpg_syn_key k = {};
	syn_key(&k, src, family);
	__u64 *seen = bpf_map_lookup_elem(&xdpg_syn_known, &k);
	if (seen && now - *seen < XDPG_SYN_KNOWN_REFRESH_NS)
		return;
	bpf_map_update_elem(&xdpg_syn_known, &k, &now, BPF_ANY);
}

/* The SYN-ACK's TCP header, built in registers and on the stack, then
 * checksummed from its words and written to the packet. */
struct syn_tcp {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;  /* data offset << 4 */
	__u8 flags; /* SYN | ACK */
	__be16 window;
	__be16 check;
	__be16 urg;
	__u8 opt[4]; /* MSS */
};

static __always_inline void syn_tcp_fill(struct syn_tcp *t, const struct tcphdr *th, __u32 cookie, __u16 mss)
{
	t->source = th->dest;
	t->dest = th->source;
	t->seq = bpf_htonl(cookie);
	t->ack_seq = bpf_htonl(bpf_ntohl(th->seq) + 1);
	t->doff = (XDPG_SYN_TCP_LEN / 4) << 4;
	t->flags = XDPG_TCP_SYN | XDPG_TCP_ACK;
	/* A zero window, as nf_synproxy's own SYN-ACK: the client sends no
	 * data before the server's connection exists; synproxy opens the
	 * window once it does. */
	t->window = 0;
	t->check = 0;
	t->urg = 0;
	t->opt[0] = 2; /* TCPOPT_MSS */
	t->opt[1] = 4;
	t->opt[2] = mss >> 8;
	t->opt[3] = mss & 0xFF;
}

/* Sum of the TCP header's six words and a pseudo-header sum. */
static __always_inline __u16 syn_tcp_csum(const struct syn_tcp *t, __u64 pseudo)
{
	const __u32 *w = (const void *)t;
	__u64 sum = pseudo;
#pragma unroll
	for (int i = 0; i < XDPG_SYN_TCP_LEN / 4; i++)
		sum += w[i];
	return (__u16)~xdpg_csum_fold_words(sum);
}

/* Copies the SYN's TCP header (options included, what the cookie helper
 * reads the client's MSS from) to `buf`; returns its length, or 0. */
static __always_inline __u32 syn_copy_tcp(struct xdp_md *ctx, __u32 off, const struct tcphdr *th, __u8 *buf)
{
	__u32 len = th->doff * 4;
	if (len < sizeof(struct tcphdr) || len > 60)
		return 0;
	if (bpf_xdp_load_bytes(ctx, off, buf, len))
		return 0;
	return len;
}

/* Makes the frame the SYN-ACK answering it: `l2` the bytes before the IP
 * header (MACs swapped, VLAN tags kept), `ip_len` the new IP header's
 * length. Returns 0, or -1 when the frame cannot be resized. */
static __always_inline int syn_resize(struct xdp_md *ctx, __u32 l3, __u32 ip_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int delta = (int)(l3 + ip_len + XDPG_SYN_TCP_LEN) - (int)(data_end - data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	return 0;
}

/* Answers an IPv4 SYN with a cookie SYN-ACK in place: 0, or -1 when it
 * cannot (IP options, a fragment, a bad TCP header). */
static __always_inline int syn_answer_v4(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u16 mss)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = pkt->l3_off & 0xFF; /* a few VLAN tags at most */
	__u32 zero = 0;
	struct xdpg_syn_scratch *tmp = bpf_map_lookup_elem(&xdpg_syn_tmp, &zero);
	if (!tmp)
		return -1;
	__u8 *buf = tmp->tcp;
	struct iphdr *iph = data + l3;
	if ((void *)(iph + 1) > data_end || iph->ihl != 5 || pkt->fragment)
		return -1;
	struct tcphdr *th = (void *)(iph + 1);
	if ((void *)(th + 1) > data_end)
		return -1;
	__u32 len = syn_copy_tcp(ctx, l3 + sizeof(*iph), th, buf);
	if (!len)
		return -1;
	__s64 cookie = bpf_tcp_raw_gen_syncookie_ipv4(iph, (struct tcphdr *)buf, len);
	if (cookie < 0)
		return -1;
	struct syn_tcp t;
	syn_tcp_fill(&t, th, (__u32)cookie, mss ? mss : XDPG_SYN_DEFAULT_MSS4);
	__be32 saddr = iph->daddr, daddr = iph->saddr;

	if (syn_resize(ctx, l3, sizeof(*iph)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	iph = data + l3;
	if ((void *)iph + sizeof(*iph) + XDPG_SYN_TCP_LEN > data_end)
		return -1;
	/* DF set, as the stack's SYN-ACKs. */
	xdpg_ipv4_hdr_write(iph, 0, sizeof(*iph) + XDPG_SYN_TCP_LEN, bpf_htons(0x4000), XDPG_SYN_TTL, IPPROTO_TCP,
			    saddr, daddr);

	__u64 pseudo = (__u64)saddr + daddr + bpf_htonl(IPPROTO_TCP) + bpf_htonl(XDPG_SYN_TCP_LEN);
	t.check = syn_tcp_csum(&t, pseudo);
	__builtin_memcpy((void *)(iph + 1), &t, sizeof(t));
	return 0;
}

/* The same for IPv6: -1 when extension headers come before TCP. */
static __always_inline int syn_answer_v6(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u16 mss)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = pkt->l3_off & 0xFF;
	__u32 zero = 0;
	struct xdpg_syn_scratch *tmp = bpf_map_lookup_elem(&xdpg_syn_tmp, &zero);
	if (!tmp)
		return -1;
	__u8 *buf = tmp->tcp;
	struct ipv6hdr *ip6h = data + l3;
	if ((void *)(ip6h + 1) > data_end || ip6h->nexthdr != IPPROTO_TCP)
		return -1;
	struct tcphdr *th = (void *)(ip6h + 1);
	if ((void *)(th + 1) > data_end)
		return -1;
	__u32 len = syn_copy_tcp(ctx, l3 + sizeof(*ip6h), th, buf);
	if (!len)
		return -1;
	__s64 cookie = bpf_tcp_raw_gen_syncookie_ipv6(ip6h, (struct tcphdr *)buf, len);
	if (cookie < 0)
		return -1;
	struct syn_tcp t;
	syn_tcp_fill(&t, th, (__u32)cookie, mss ? mss : XDPG_SYN_DEFAULT_MSS6);
	struct in6_addr saddr = ip6h->daddr, daddr = ip6h->saddr;

	if (syn_resize(ctx, l3, sizeof(*ip6h)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip6h = data + l3;
	if ((void *)ip6h + sizeof(*ip6h) + XDPG_SYN_TCP_LEN > data_end)
		return -1;
	*(__be32 *)ip6h = bpf_htonl(0x60000000); /* version 6, no class or label */
	ip6h->payload_len = bpf_htons(XDPG_SYN_TCP_LEN);
	ip6h->nexthdr = IPPROTO_TCP;
	ip6h->hop_limit = XDPG_SYN_TTL;
	ip6h->saddr = saddr;
	ip6h->daddr = daddr;

	__u64 pseudo = bpf_htonl(IPPROTO_TCP) + bpf_htonl(XDPG_SYN_TCP_LEN);
#pragma unroll
	for (int i = 0; i < 4; i++)
		pseudo += (__u64)saddr.in6_u.u6_addr32[i] + daddr.in6_u.u6_addr32[i];
	t.check = syn_tcp_csum(&t, pseudo);
	__builtin_memcpy((void *)(ip6h + 1), &t, sizeof(t));
	return 0;
}

/* Whether an ACK carries a cookie the kernel issued (and accepts now). */
static __always_inline int syn_cookie_valid(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u32 family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = pkt->l3_off & 0xFF;
	if (family == 4) {
		struct iphdr *iph = data + l3;
		if ((void *)(iph + 1) > data_end || iph->ihl != 5)
			return 0;
		struct tcphdr *th = (void *)(iph + 1);
		if ((void *)(th + 1) > data_end)
			return 0;
		return bpf_tcp_raw_check_syncookie_ipv4(iph, th) == 0;
	}
	struct ipv6hdr *ip6h = data + l3;
	if ((void *)(ip6h + 1) > data_end || ip6h->nexthdr != IPPROTO_TCP)
		return 0;
	struct tcphdr *th = (void *)(ip6h + 1);
	if ((void *)(th + 1) > data_end)
		return 0;
	return bpf_tcp_raw_check_syncookie_ipv6(ip6h, th) == 0;
}

/* The SYN guard for a TCP packet to `dport` with `flags`, from `src`:
 * XDPG_SYN_NONE (not its business: the packet goes on), or what it
 * decided (XDPG_SYN_*), counted in the port's counters; the caller counts
 * the filter reason and returns the action. */
static __always_inline int xdpg_syn_guard(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u32 family, __u8 flags,
					  __u32 dport, const __u32 *src, const struct xdpg_guard_config *gcfg,
					  int monitor)
{
	__u32 zero = 0;
	struct xdpg_syn_config *cfg = bpf_map_lookup_elem(&xdpg_syn_cfg, &zero);
	if (!cfg || cfg->ports == 0)
		return XDPG_SYN_NONE;
	__u32 port = dport & 0xFFFF;
	__u64 *ix = bpf_map_lookup_elem(&xdpg_syn_idx, &port);
	if (!ix || *ix == 0)
		return XDPG_SYN_NONE;
	__u32 slot = (__u32)*ix - 1;
	struct xdpg_syn_port *p = bpf_map_lookup_elem(&xdpg_syn_slots, &slot);
	struct xdpg_syn_counters *c = bpf_map_lookup_elem(&xdpg_syn_cnt, &slot);
	if (!p || !c || !p->mode)
		return XDPG_SYN_NONE;
	__u8 mode = p->mode;
	monitor |= p->flags & XDPG_SYN_F_MONITOR;
	__u8 kind = flags & (XDPG_TCP_SYN | XDPG_TCP_ACK | XDPG_TCP_RST);

	if (kind == XDPG_TCP_SYN) {
		c->syns++;
		if (mode == XDPG_SYN_MODE_COOKIE) {
			if (monitor) {
				c->would_drop++;
				return XDPG_SYN_WOULD_DROP;
			}
			int err = family == 4 ? syn_answer_v4(ctx, pkt, p->mss) : syn_answer_v6(ctx, pkt, p->mss);
			if (err) {
				c->unanswerable++;
				return XDPG_SYN_DROP;
			}
			c->cookies_sent++;
			return XDPG_SYN_TX;
		}
		__u64 now = guard_now(gcfg);
		if (syn_rate(p, now, 1) <= p->threshold)
			return XDPG_SYN_NONE;
		if (syn_known(src, family, now, cfg)) {
			c->known_passed++;
			return XDPG_SYN_NONE;
		}
		if (monitor) {
			c->would_drop++;
			return XDPG_SYN_WOULD_DROP;
		}
		c->dropped++;
		return XDPG_SYN_DROP;
	}
	if (kind != XDPG_TCP_ACK)
		return XDPG_SYN_NONE;
	if (mode == XDPG_SYN_MODE_COOKIE) {
		if (!syn_cookie_valid(ctx, pkt, family)) {
			c->acks_other++;
			return XDPG_SYN_NONE;
		}
		c->cookies_ok++;
		syn_remember(src, family, guard_now(gcfg));
		return XDPG_SYN_COOKIE_OK;
	}
	__u64 now = guard_now(gcfg);
	if (syn_rate(p, now, 0) <= p->threshold)
		syn_remember(src, family, now);
	return XDPG_SYN_NONE;
}

#endif
