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
 *   clients by ACKs sent with it; a source already known stays known by
 *   its ACKs then (its time refreshed in place, syn_refresh), so an active
 *   client does not expire during a long flood.
 * - cookie: every SYN is answered here with a SYN-ACK built in place
 *   (XDP_TX), its sequence number a SYN cookie from the kernel's own
 *   secret (bpf_tcp_raw_gen_syncookie_ipv4/6, Linux 6.0); the SYN never
 *   reaches the stack. A SYN the stack would discard (to a group MAC,
 *   from or to a multicast, broadcast, unspecified or loopback address) is
 *   dropped unanswered, counted as one that cannot be answered. An ACK
 *   whose cookie the kernel accepts (bpf_tcp_raw_check_syncookie_ipv4/6)
 *   is passed: nftables' synproxy (conntrack, the same secret) completes
 *   the connection with the server.
 *   Every SYN, not only above a threshold: the host needs synproxy for the
 *   port anyway (the stack could not complete a connection from an XDP
 *   cookie without it), and synproxy answers every SYN with a cookie too;
 *   passing SYNs below a threshold would only send them the slow way, and
 *   cost a shared rate counter on every SYN. The SYN-ACK carries window
 *   scaling, SACK and timestamps when the SYN offered timestamps and the
 *   port has XDPG_SYN_F_TCP_OPTIONS (syn_tcp_build). Other ACKs (of
 *   established connections, or forged) go to conntrack, which passes the
 *   established and drops the rest; with XDPG_SYN_F_DROP_UNTRACKED the
 *   guard asks conntrack itself (syn_tracked) and drops the rest in XDP.
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

/* A port's policy as one packet uses it, read from its slot once: its
 * first word (threshold, port, MSS) and its second (mode, flags, window
 * scale), each with one load. User space changes a live slot's policy a
 * word at a time, with a grace period between the words where a mix of
 * the two would matter (change_policy in src/filter/guard/syn.rs): read
 * field by field, a SYN could take the cookie mode's options with a drop
 * policy's window scale, or enforcement with a monitor policy's lower
 * threshold. */
struct syn_policy {
	__u32 threshold;
	__u16 port;
	__u16 mss;
	__u8 mode;
	__u8 flags;
	__u8 wscale;
	__u8 pad;
};

static __always_inline struct syn_policy syn_policy_of(const struct xdpg_syn_port *p)
{
	struct syn_policy pol;
	__u64 head = *(volatile const __u64 *)p;
	__u32 modes = *(volatile const __u32 *)&p->mode;
	__builtin_memcpy(&pol, &head, sizeof(head));
	__builtin_memcpy(&pol.mode, &modes, sizeof(modes));
	return pol;
}

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

/* Keeps a source that is still known (within the config's TTL) known: its
 * time rewritten in place, at most once a second; never an insert, so a
 * spoofed ACK cannot make a source known, while a client that keeps
 * sending ACKs through a flood stays known past the TTL. */
static __always_inline void syn_refresh(const __u32 *src, __u32 family, __u64 now, const struct xdpg_syn_config *cfg)
{
	struct xdpg_syn_key k = {};
	syn_key(&k, src, family);
	__u64 *seen = bpf_map_lookup_elem(&xdpg_syn_known, &k);
	if (!seen)
		return;
	__u64 age = now - *seen;
	if (age >= XDPG_SYN_KNOWN_REFRESH_NS && age < (__u64)cfg->known_ttl_s * 1000000000ull)
		*seen = now;
}

/* Whether an IPv4 address (network byte order) is one no SYN-ACK goes to
 * or comes from: 0.0.0.0/8, 127.0.0.0/8, multicast (224.0.0.0/4) or
 * 255.255.255.255 (the stack discards such SYNs). */
static __always_inline int syn_martian_v4(__be32 addr)
{
	__u32 a = bpf_ntohl(addr), top = a >> 24;
	return top == 0 || top == 127 || (top & 0xF0) == 0xE0 || a == 0xFFFFFFFF;
}

/* The same for IPv6: multicast (ff00::/8), :: and ::1. */
static __always_inline int syn_martian_v6(const struct in6_addr *addr)
{
	const __u32 *w = addr->in6_u.u6_addr32;
	return addr->in6_u.u6_addr8[0] == 0xFF || !(w[0] | w[1] | w[2] | (w[3] & ~bpf_htonl(1)));
}

/* Whether the frame went to a group (broadcast or multicast) MAC: the
 * SYN-ACK, its MACs swapped, would come from one. */
static __always_inline int syn_group_mac(struct xdp_md *ctx)
{
	__u8 *dst = (void *)(long)ctx->data;
	if ((void *)(dst + 1) > (void *)(long)ctx->data_end)
		return 1;
	return dst[0] & 1;
}

/* The SYN-ACK's TCP header, built in the scratch buffer (once the SYN's
 * header there has been read: the stack has no room left), checksummed from
 * its words and written to the packet: XDPG_SYN_TCP_LEN bytes of it, or all
 * XDPG_SYN_TCP_LEN_OPTIONS (opt[4..] stays zero when unused, so the
 * checksum over every word is the same either way). */
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
	__u8 opt[XDPG_SYN_TCP_LEN_OPTIONS - 20]; /* MSS [, SACK, timestamps, window scale] */
};

_Static_assert(sizeof(struct syn_tcp) == XDPG_SYN_TCP_LEN_OPTIONS, "syn_tcp layout");
_Static_assert(sizeof(struct syn_tcp) <= sizeof(struct xdpg_syn_scratch), "the SYN-ACK's header fits the scratch");

/* What syn_read_offer() found, in one word: where the timestamp option
 * starts (0: none), SACK permitted, the window scale (XDPG_SYN_TS_WSCALE_NONE:
 * none). */
#define SYN_OFFER_TS_AT 0x3F
#define SYN_OFFER_SACK 0x100
#define SYN_OFFER_WSCALE_SHIFT 12

/* A SYN's window scale as the SYN-ACK's cookie keeps it: above 14 taken as
 * 14 (RFC 7323). */
static __always_inline __u32 syn_wscale(__u32 ws)
{
	return ws > XDPG_SYN_MAX_WSCALE ? XDPG_SYN_MAX_WSCALE : ws;
}

/* Reads the options of the SYN's TCP header (`len` bytes in `tcp`).
 * Malformed options end the walk with what was found before them, as the
 * kernel's tcp_parse_options does. A global function, verified once on its
 * own, returning one word (the stack has no room for more): inlined, its
 * loop multiplied the guard's verified paths past the verifier's limit of a
 * million instructions. */
__noinline int syn_read_offer(const struct xdpg_syn_scratch *tcp, __u32 len)
{
	__u32 i = sizeof(struct tcphdr), ts_at = 0, sack = 0, wscale = XDPG_SYN_TS_WSCALE_NONE;
	if (!tcp || len > 60)
		return wscale << SYN_OFFER_WSCALE_SHIFT;
	const __u8 *buf = tcp->tcp;
	for (int n = 0; n < 40; n++) {
		if (i >= len)
			break;
		__u8 kind = buf[i & 63];
		if (kind == 0) /* end of options */
			break;
		/* i stays below len (at most 60): the masks change nothing but
		 * let the verifier see one state per iteration, where the
		 * exact sums made one per path through the options so far. */
		if (kind == 1) { /* NOP */
			i = (i + 1) & 63;
			continue;
		}
		if (i + 2 > len)
			break;
		__u32 olen = buf[(i + 1) & 63];
		if (olen < 2 || i + olen > len)
			break;
		if (kind == 3 && olen == 3) {
			wscale = syn_wscale(buf[(i + 2) & 63]);
		} else if (kind == 4 && olen == 2) {
			sack = SYN_OFFER_SACK;
		} else if (kind == 8 && olen == 10) {
			ts_at = i;
		}
		i = (i + olen) & 63;
	}
	return (int)((ts_at & SYN_OFFER_TS_AT) | sack | wscale << SYN_OFFER_WSCALE_SHIFT);
}

/* Fills the SYN-ACK's header (the scratch buffer, `tcp`, holding the SYN's
 * until then); returns its length. `mss` alone, or, when `offer` (from
 * syn_read_offer) found timestamps, the options of nf_synproxy's own
 * SYN-ACK: SACK permitted and window scale (`ours`) where the SYN offered
 * them, and timestamps whose value carries the client's window scale and
 * SACK permission (XDPG_SYN_TS_*), which synproxy reads back from the
 * ACK's echo and hands to the server. */
static __always_inline __u32 syn_tcp_fill(struct xdpg_syn_scratch *tcp, const struct tcphdr *th, __u32 cookie,
					  __u16 mss, __u32 offer, __u8 ours)
{
	__u32 ts_at = offer & SYN_OFFER_TS_AT;
	/* The client's timestamp value, read before the header is overwritten. */
	__u32 client_ts, at = ts_at + 2;
	if (at > sizeof(tcp->tcp) - 4) /* never: the option lies within the header */
		at = sizeof(tcp->tcp) - 4;
	__builtin_memcpy(&client_ts, &tcp->tcp[at], 4);
	struct syn_tcp *t = (void *)tcp->tcp;
	__builtin_memset(t, 0, sizeof(*t));
	t->source = th->dest;
	t->dest = th->source;
	t->seq = bpf_htonl(cookie);
	t->ack_seq = bpf_htonl(bpf_ntohl(th->seq) + 1);
	t->flags = XDPG_TCP_SYN | XDPG_TCP_ACK;
	/* A zero window, as nf_synproxy's own SYN-ACK: the client sends no
	 * data before the server's connection exists; synproxy opens the
	 * window once it does. */
	t->opt[0] = 2; /* TCPOPT_MSS */
	t->opt[1] = 4;
	t->opt[2] = mss >> 8;
	t->opt[3] = mss & 0xFF;
	if (!ts_at) {
		t->doff = (XDPG_SYN_TCP_LEN / 4) << 4;
		return XDPG_SYN_TCP_LEN;
	}
	__u32 wscale = (offer >> SYN_OFFER_WSCALE_SHIFT) & 0xF;
	__u32 sack = offer & SYN_OFFER_SACK;
	t->doff = (XDPG_SYN_TCP_LEN_OPTIONS / 4) << 4;
	t->opt[4] = sack ? 4 : 1; /* TCPOPT_SACK_PERM, 2 bytes; or NOP NOP */
	t->opt[5] = sack ? 2 : 1;
	t->opt[6] = 8; /* TCPOPT_TIMESTAMP */
	t->opt[7] = 10;
	/* Milliseconds, of the coarse clock: the low 6 bits are the options'
	 * anyway, and the precise one cost about 28 ns more per SYN here. */
	__u32 ms = (__u32)(bpf_ktime_get_coarse_ns() / 1000000);
	__u32 tsval = (ms & ~XDPG_SYN_TS_OPT_MASK) | wscale | (sack ? XDPG_SYN_TS_SACK : 0);
	*(__be32 *)&t->opt[8] = bpf_htonl(tsval);
	*(__be32 *)&t->opt[12] = client_ts; /* echoed as it came */
	int none = wscale == XDPG_SYN_TS_WSCALE_NONE;
	t->opt[16] = 1; /* NOP, then TCPOPT_WINDOW; or four NOPs */
	t->opt[17] = none ? 1 : 3;
	t->opt[18] = none ? 1 : 3;
	t->opt[19] = none ? 1 : ours;
	return XDPG_SYN_TCP_LEN_OPTIONS;
}

/* Sum of the TCP header's words and a pseudo-header sum. */
static __always_inline __u16 syn_tcp_csum(const struct syn_tcp *t, __u64 pseudo)
{
	const __u32 *w = (const void *)t;
	__u64 sum = pseudo;
#pragma unroll
	for (int i = 0; i < XDPG_SYN_TCP_LEN_OPTIONS / 4; i++)
		sum += w[i];
	return (__u16)~xdpg_csum_fold_words(sum);
}

/* Checksums the SYN-ACK's header (in the scratch buffer) and writes its
 * `len` bytes at `to`: 0, or -1 past the frame. */
static __always_inline int syn_tcp_write(void *to, void *data_end, struct xdpg_syn_scratch *tcp, __u32 len,
					 __u64 pseudo)
{
	struct syn_tcp *t = (void *)tcp->tcp;
	t->check = syn_tcp_csum(t, pseudo);
	if (len == XDPG_SYN_TCP_LEN_OPTIONS) {
		if (to + XDPG_SYN_TCP_LEN_OPTIONS > data_end)
			return -1;
		__builtin_memcpy(to, t, XDPG_SYN_TCP_LEN_OPTIONS);
		return 0;
	}
	if (to + XDPG_SYN_TCP_LEN > data_end)
		return -1;
	__builtin_memcpy(to, t, XDPG_SYN_TCP_LEN);
	return 0;
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

/* Makes the scratch buffer, holding the SYN's TCP header (`len` bytes),
 * the SYN-ACK's, by port `p`'s policy; returns its length. */
static __always_inline __u32 syn_tcp_build(struct xdpg_syn_scratch *tcp, const struct tcphdr *th, __u32 len,
					   __u32 cookie, const struct syn_policy *p, __u16 default_mss)
{
	__u16 mss = p->mss ? p->mss : default_mss;
	/* Without the port's options, or a SYN without timestamps (nowhere to
	 * keep the client's window scale and SACK permission): MSS alone, as
	 * synproxy's own. */
	__u32 offer = 0;
	if (p->flags & XDPG_SYN_F_TCP_OPTIONS) {
		/* Linux's SYN (MSS, SACK permitted, timestamps from byte 26,
		 * NOP, window scale, in that order: most clients) is read in
		 * place; any other by the walk, about 21 ns more (cargo bench
		 * --bench syn, Intel Xeon, a SYN-ACK with the MSS alone 198-202
		 * ns: walked, with the precise clock, 260; the offer a constant
		 * instead, 238; read in place with the coarse clock, 207-212). */
		__u64 head = bpf_be64_to_cpu(*(__u64 *)&tcp->tcp[20]);
		__u32 tail = bpf_ntohl(*(__u32 *)&tcp->tcp[36]);
		if (len == 40 && (head & 0xFFFF0000FFFFFFFFULL) == 0x020400000402080AULL && (tail >> 8) == 0x010303) {
			offer = 26 | SYN_OFFER_SACK | syn_wscale(tail & 0xFF) << SYN_OFFER_WSCALE_SHIFT;
		} else {
			offer = (__u32)syn_read_offer(tcp, len);
		}
	}
	return syn_tcp_fill(tcp, th, cookie, mss, offer, p->wscale);
}

/* Makes the frame the SYN-ACK answering it: `l3` the bytes before the IP
 * header (MACs swapped, VLAN tags kept), `ip_len` and `tcp_len` the new IP
 * and TCP headers' lengths. Returns 0, or -1 when the frame cannot be
 * resized. */
static __always_inline int syn_resize(struct xdp_md *ctx, __u32 l3, __u32 ip_len, __u32 tcp_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int delta = (int)(l3 + ip_len + tcp_len) - (int)(data_end - data);
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

/* The TCP header right after the IP header at `l3`: IPv4 without options
 * or IPv6 without extension headers (family 4 or 6), `*ip` set to the IP
 * header; NULL for any other packet, or one too short. Where the kernel's
 * cookie helpers, which take the two headers, can read them. */
static __always_inline struct tcphdr *syn_tcp_hdr(struct xdp_md *ctx, __u32 l3, __u32 family, void **ip)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *at = data + (l3 & 0xFF); /* a few VLAN tags at most */
	struct tcphdr *th;
	if (family == 4) {
		struct iphdr *iph = at;
		if ((void *)(iph + 1) > data_end || iph->ihl != 5)
			return NULL;
		th = (void *)(iph + 1);
	} else {
		struct ipv6hdr *ip6h = at;
		if ((void *)(ip6h + 1) > data_end || ip6h->nexthdr != IPPROTO_TCP)
			return NULL;
		th = (void *)(ip6h + 1);
	}
	if ((void *)(th + 1) > data_end)
		return NULL;
	*ip = at;
	return th;
}

/* Answers an IPv4 SYN with a cookie SYN-ACK in place: 0, or -1 when it
 * cannot (IP options, a fragment, a bad TCP header) or must not (a group
 * MAC or a martian address, syn_martian_v4: the stack would discard the
 * SYN, and the reply would go to or come from a group). */
static __always_inline int syn_answer_v4(struct xdp_md *ctx, const struct xdpg_pkt *pkt, const struct syn_policy *p)
{
	void *data, *data_end;
	__u32 l3 = pkt->l3_off & 0xFF;
	__u32 zero = 0;
	struct xdpg_syn_scratch *tmp = bpf_map_lookup_elem(&xdpg_syn_tmp, &zero);
	if (!tmp)
		return -1;
	__u8 *buf = tmp->tcp;
	void *ip;
	struct tcphdr *th = syn_tcp_hdr(ctx, l3, 4, &ip);
	if (!th || pkt->fragment)
		return -1;
	struct iphdr *iph = ip;
	if (syn_group_mac(ctx) || syn_martian_v4(iph->saddr) || syn_martian_v4(iph->daddr))
		return -1;
	__u32 len = syn_copy_tcp(ctx, l3 + sizeof(*iph), th, buf);
	if (!len)
		return -1;
	__s64 cookie = bpf_tcp_raw_gen_syncookie_ipv4(iph, (struct tcphdr *)buf, len);
	if (cookie < 0)
		return -1;
	__u32 tcp_len = syn_tcp_build(tmp, th, len, (__u32)cookie, p, XDPG_SYN_DEFAULT_MSS4);
	__be32 saddr = iph->daddr, daddr = iph->saddr;

	if (syn_resize(ctx, l3, sizeof(*iph), tcp_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	iph = data + l3;
	if ((void *)(iph + 1) > data_end)
		return -1;
	/* DF set, as the stack's SYN-ACKs. */
	xdpg_ipv4_hdr_write(iph, 0, sizeof(*iph) + tcp_len, bpf_htons(0x4000), XDPG_SYN_TTL, IPPROTO_TCP, saddr, daddr);

	__u64 pseudo = (__u64)saddr + daddr + bpf_htonl(IPPROTO_TCP) + bpf_htonl(tcp_len);
	return syn_tcp_write(iph + 1, data_end, tmp, tcp_len, pseudo);
}

/* The same for IPv6: -1 when extension headers come before TCP, or for a
 * group MAC or a martian address (syn_martian_v6). */
static __always_inline int syn_answer_v6(struct xdp_md *ctx, const struct xdpg_pkt *pkt, const struct syn_policy *p)
{
	void *data, *data_end;
	__u32 l3 = pkt->l3_off & 0xFF;
	__u32 zero = 0;
	struct xdpg_syn_scratch *tmp = bpf_map_lookup_elem(&xdpg_syn_tmp, &zero);
	if (!tmp)
		return -1;
	__u8 *buf = tmp->tcp;
	void *ip;
	struct tcphdr *th = syn_tcp_hdr(ctx, l3, 6, &ip);
	if (!th)
		return -1;
	struct ipv6hdr *ip6h = ip;
	if (syn_group_mac(ctx) || syn_martian_v6(&ip6h->saddr) || syn_martian_v6(&ip6h->daddr))
		return -1;
	__u32 len = syn_copy_tcp(ctx, l3 + sizeof(*ip6h), th, buf);
	if (!len)
		return -1;
	__s64 cookie = bpf_tcp_raw_gen_syncookie_ipv6(ip6h, (struct tcphdr *)buf, len);
	if (cookie < 0)
		return -1;
	__u32 tcp_len = syn_tcp_build(tmp, th, len, (__u32)cookie, p, XDPG_SYN_DEFAULT_MSS6);
	struct in6_addr saddr = ip6h->daddr, daddr = ip6h->saddr;

	if (syn_resize(ctx, l3, sizeof(*ip6h), tcp_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip6h = data + l3;
	if ((void *)(ip6h + 1) > data_end)
		return -1;
	*(__be32 *)ip6h = bpf_htonl(0x60000000); /* version 6, no class or label */
	ip6h->payload_len = bpf_htons(tcp_len);
	ip6h->nexthdr = IPPROTO_TCP;
	ip6h->hop_limit = XDPG_SYN_TTL;
	ip6h->saddr = saddr;
	ip6h->daddr = daddr;

	__u64 pseudo = bpf_htonl(IPPROTO_TCP) + bpf_htonl(tcp_len);
#pragma unroll
	for (int i = 0; i < 4; i++)
		pseudo += (__u64)saddr.in6_u.u6_addr32[i] + daddr.in6_u.u6_addr32[i];
	return syn_tcp_write(ip6h + 1, data_end, tmp, tcp_len, pseudo);
}

/* Conntrack from XDP (nf_conntrack's kfuncs, Linux 5.18). Weak: where the
 * kernel has none (nf_conntrack a module not loaded when the guard was),
 * the guard loads without them and untracked ACKs go to the stack as
 * before (syn_tracked returns -1). The options' layout is the kernel's
 * first (12 bytes), which later kernels still take. */
struct nf_conn {
	__u64 opaque; /* never read: a struct, not a declaration, which libbpf's kfunc check takes for the kernel's */
};
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

_Static_assert(sizeof(struct bpf_sock_tuple) + sizeof(struct bpf_ct_opts) <= sizeof(struct xdpg_syn_scratch),
	       "a conntrack lookup's tuple and options fit the scratch");

/* Whether conntrack (of the device's network namespace) tracks the TCP
 * connection of the packet whose IP header is at `l3`, in either
 * direction: 1 or 0; -1 when the kernel has no conntrack kfuncs or the
 * packet cannot be read. The tuple and options are built in the scratch
 * buffer (`tmp`; the stack has no room). A global function, verified on
 * its own, which also keeps the conntrack reference's tracking out of the
 * guard's paths. */
__noinline int syn_tracked(struct xdp_md *ctx, struct xdpg_syn_scratch *tmp, __u32 l3, __u32 family)
{
	if (!ctx || !tmp || !bpf_ksym_exists(bpf_xdp_ct_lookup) || !bpf_ksym_exists(bpf_ct_release))
		return -1;
	struct bpf_sock_tuple *tuple = (void *)tmp->tcp;
	struct bpf_ct_opts *opts = (void *)&tmp->tcp[sizeof(*tuple)];
	__u32 tuple_len;
	void *ip;
	struct tcphdr *th = syn_tcp_hdr(ctx, l3, family, &ip);
	if (!th)
		return -1;
	if (family == 4) {
		struct iphdr *iph = ip;
		tuple->ipv4.saddr = iph->saddr;
		tuple->ipv4.daddr = iph->daddr;
		tuple->ipv4.sport = th->source;
		tuple->ipv4.dport = th->dest;
		tuple_len = sizeof(tuple->ipv4);
	} else {
		struct ipv6hdr *ip6h = ip;
		__builtin_memcpy(tuple->ipv6.saddr, &ip6h->saddr, 16);
		__builtin_memcpy(tuple->ipv6.daddr, &ip6h->daddr, 16);
		tuple->ipv6.sport = th->source;
		tuple->ipv6.dport = th->dest;
		tuple_len = sizeof(tuple->ipv6);
	}
	__builtin_memset(opts, 0, sizeof(*opts));
	opts->netns_id = BPF_F_CURRENT_NETNS;
	opts->l4proto = IPPROTO_TCP;
	struct nf_conn *ct = bpf_xdp_ct_lookup(ctx, tuple, tuple_len, opts, sizeof(*opts));
	if (!ct)
		return opts->error == -2 /* -ENOENT: not tracked */ ? 0 : -1;
	bpf_ct_release(ct);
	return 1;
}

/* Whether an ACK carries a cookie the kernel issued (and accepts now). */
static __always_inline int syn_cookie_valid(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u32 family)
{
	void *ip;
	struct tcphdr *th = syn_tcp_hdr(ctx, pkt->l3_off, family, &ip);
	if (!th)
		return 0;
	if (family == 4)
		return bpf_tcp_raw_check_syncookie_ipv4(ip, th) == 0;
	return bpf_tcp_raw_check_syncookie_ipv6(ip, th) == 0;
}

/* The SYN guard for a TCP packet to `dport` with `flags`, from `src`:
 * XDPG_SYN_NONE (not its business: the packet goes on), or what it
 * decided (XDPG_SYN_*), counted in the port's counters; the caller counts
 * the filter reason and returns the action. `would`, `would_rule`: a
 * monitored rule's would-drop event (reason 0: none), sent here just
 * before a SYN is rewritten into its SYN|ACK answer, so the event carries
 * the SYN the rule judged (sent by the caller after the answer, it carried
 * the SYN|ACK: the server as its source). */
static __always_inline int xdpg_syn_guard(struct xdp_md *ctx, const struct xdpg_pkt *pkt, __u32 family, __u8 flags,
					  __u32 dport, const __u32 *src, const struct xdpg_guard_config *gcfg,
					  int monitor, __u32 would, __u32 would_rule)
{
	__u32 zero = 0;
	struct xdpg_syn_config *cfg = bpf_map_lookup_elem(&xdpg_syn_cfg, &zero);
	if (!cfg || cfg->ports == 0)
		return XDPG_SYN_NONE;
	__u32 port = dport & 0xFFFF;
	__u64 *ix = bpf_map_lookup_elem(&xdpg_syn_idx, &port);
	__u64 slot_plus_one = ix ? *(volatile __u64 *)ix : 0;
	if (slot_plus_one == 0)
		return XDPG_SYN_NONE;
	__u32 slot = (__u32)slot_plus_one - 1;
	struct xdpg_syn_port *p = bpf_map_lookup_elem(&xdpg_syn_slots, &slot);
	struct xdpg_syn_counters *c = bpf_map_lookup_elem(&xdpg_syn_cnt, &slot);
	if (!p || !c)
		return XDPG_SYN_NONE;
	struct syn_policy pol = syn_policy_of(p);
	if (!pol.mode)
		return XDPG_SYN_NONE;
	__u8 mode = pol.mode;
	monitor |= pol.flags & XDPG_SYN_F_MONITOR;
	__u8 kind = flags & (XDPG_TCP_SYN | XDPG_TCP_ACK | XDPG_TCP_RST);

	if (kind == XDPG_TCP_SYN) {
		c->syns++;
		if (mode == XDPG_SYN_MODE_COOKIE) {
			if (monitor) {
				c->would_drop++;
				return XDPG_SYN_WOULD_DROP;
			}
			if (would)
				decided(ctx, would, would_rule);
			int err = family == 4 ? syn_answer_v4(ctx, pkt, &pol) : syn_answer_v6(ctx, pkt, &pol);
			if (err) {
				c->unanswerable++;
				return XDPG_SYN_DROP;
			}
			c->cookies_sent++;
			return XDPG_SYN_TX;
		}
		__u64 now = guard_now(gcfg);
		if (syn_rate(p, now, 1) <= pol.threshold)
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
			/* Not a cookie: an established connection's, or forged.
			 * With XDPG_SYN_F_DROP_UNTRACKED, conntrack decides here:
			 * what it does not track is dropped (a spoofed ACK flood
			 * never reaches the stack); else the stack's conntrack
			 * does, after XDP. */
			if (pol.flags & XDPG_SYN_F_DROP_UNTRACKED) {
				__u32 zero = 0;
				struct xdpg_syn_scratch *tmp = bpf_map_lookup_elem(&xdpg_syn_tmp, &zero);
				if (tmp && syn_tracked(ctx, tmp, pkt->l3_off, family) == 0) {
					if (monitor) {
						c->would_drop++;
						return XDPG_SYN_WOULD_DROP;
					}
					c->dropped++;
					return XDPG_SYN_DROP;
				}
			}
			c->acks_other++;
			return XDPG_SYN_NONE;
		}
		c->cookies_ok++;
		syn_remember(src, family, guard_now(gcfg));
		return XDPG_SYN_COOKIE_OK;
	}
	__u64 now = guard_now(gcfg);
	if (syn_rate(p, now, 0) <= pol.threshold)
		syn_remember(src, family, now);
	else
		syn_refresh(src, family, now, cfg);
	return XDPG_SYN_NONE;
}

#endif
