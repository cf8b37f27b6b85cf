// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The guard stage: the filter tail-calls it (xdpg_stages) for IP packets
 * neither of its lists decided, while it has work (a rule set, timed
 * blocks, a SYN-guarded port). Timed blocks first, then the rules, in
 * priority order, first terminal match wins:
 *
 *   parse -> the packet's key (protocol + destination port / ICMP type /
 *   protocol number) -> the key's group in the index (one 16-bit read) ->
 *   the group's entries, each naming a record of one cache line, in order
 *   (the first few in a plain loop, the rest with bpf_loop).
 *
 * A drop rule drops (in monitor mode: counts "would drop" and passes), a
 * pass rule passes, a count rule or a monitored rule counts and the walk
 * goes on. Whatever no stage decided is passed. Passed packets go on to the
 * filter's next program (xdpg_next, shared with the filter). Every packet
 * is counted in exactly one of the filter's reason counters, and each rule
 * that matched it in its own counter.
 *
 * A rate-limit rule asks limit_over() (guard_limit.h): within its limit the
 * walk goes on, over it the rule decides (a drop). Timed blocks are checked
 * before the rules (timed_blocked(), guard_limit.h). The SYN guard
 * (syn_stage(), guard_syn.h) takes the packets no rule decided; every drop
 * decision goes through decided(), which sends drop events
 * (filter_events.h).
 *
 * Needs bpf_loop (5.17) and the SYN-cookie helpers (6.0). */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "filter_consts.h"
#include "filter_structs.h"
/* A chain past XDPG_MAX_L3_OFFSET: hidden, its source judged (parsing.h). */
#define XDPG_PARSE_LONG_CHAIN_HIDDEN
#include "parsing.h"
#include "prefix.h"
#include "filter_shared_maps.h"
#include "guard_consts.h"
#include "guard_structs.h"
#include "guard_maps.h"
#include "guard_clock.h"
#include "guard_key.h"
#include "hash.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Records of a group checked before bpf_loop takes over (see walk_group). */
#define GUARD_INLINE_RECORDS 4

/* What the rule walk needs of a packet, and what it decided. */
struct walk {
	__u32 src[4]; /* network byte order, IPv4 in word 0 */
	__u32 dst[4];
	__u32 first; /* the group's first entry (in xdpg_g_ref) */
	__u64 bytes;
	__u32 rule; /* the deciding rule's id */
	__u16 sport;
	__u8 family;   /* 4 or 6 */
	__u8 flags;    /* TCP flags (0 for other packets) */
	__u8 action;   /* XDPG_RULE_DROP or _PASS once decided, else 0 */
	__u8 would;    /* a monitored rule's would-drop reason (its first), or 0 */
	__u8 fragment; /* an IP fragment, first or later (xdpg_pkt.fragment) */
	__u32 would_rule;
};

/* A monitored rule would have dropped the packet (a drop rule, or a rate
 * limit it is over): the walk goes on, and the packet is counted under the
 * reason the walk ends with (one reason a packet), but the rule's dry run
 * sends its would-drop event (would_event(), once the packet's verdict is
 * known, unless that verdict is a drop or would-drop with its own event: a
 * later rule's or the SYN guard's; one event a packet), so events, capture
 * and top show what the rule would drop. */
static __always_inline void would_drop(struct walk *w, __u32 reason, __u32 rule)
{
	if (!w->would) {
		w->would = reason;
		w->would_rule = rule;
	}
}

/* Every drop and would-drop decision of the guard, with its reason and
 * rule: a sampled drop event while a reader holds a lease
 * (filter_events.h). The config lookup is an inlined array lookup of a
 * line the filter read for this packet; not measured on its own (the
 * filter's hook, the same load and branch, measured no cost:
 * BENCHMARKS.md, "Drop events"). */
static __always_inline void decided(struct xdp_md *ctx, __u32 reason, __u32 rule)
{
	__u32 zero = 0;
	struct xdpg_filter_config *cfg = bpf_map_lookup_elem(&xdpg_filter_cfg, &zero);
	if (cfg)
		xdpg_event(ctx, cfg, reason, rule);
}

/* A drop decision (`reason`): the packet is dropped, or, in the filter's
 * monitor mode, counted as `would` and passed on. */
static __always_inline int drop_or_monitor(struct xdp_md *ctx, const struct xdpg_filter_config *fcfg, __u32 reason,
					   __u32 would, __u32 rule, __u64 bytes)
{
	if (fcfg->monitor & XDPG_MONITOR_ON) {
		count(would, bytes);
		decided(ctx, would, rule);
		return pass_on(ctx);
	}
	count(reason, bytes);
	decided(ctx, reason, rule);
	return XDP_DROP;
}

/* The first monitored rule's would-drop event, for a packet whose verdict
 * sends no drop event of its own (it passes, or the SYN guard answers it:
 * then sent by xdpg_syn_guard, before the answer overwrites the SYN).
 * Sent after the SYN guard, not after the walk: sent there, a SYN the
 * guard then dropped sent two events, the rule's and the guard's (it
 * still can when an answer cannot be written: a SYN from a group MAC or a
 * martian source, counted `unanswerable`). */
static __always_inline void would_event(struct xdp_md *ctx, const struct walk *w)
{
	if (w->would)
		decided(ctx, w->would, w->would_rule);
}

/* Packets no rule decided (count rules and monitored rules may have
 * counted them): the place of the stages after the rules (the SYN guard),
 * in the plan's order. Today they pass. A rate-limit rule action
 * (XDPG_RULE_RATE_LIMIT) is decided in the walk instead, like
 * drop and pass. */
static __always_inline int undecided(struct xdp_md *ctx, const struct walk *w)
{
	would_event(ctx, w);
	count(XDPG_REASON_PASSED, w->bytes);
	return pass_on(ctx);
}

#include "guard_syn.h"

/* The SYN guard's decision for a packet no rule decided (guard_syn.h);
 * what it leaves goes to undecided(). */
static __always_inline int syn_stage(struct xdp_md *ctx, const struct xdpg_pkt *pkt, const struct walk *w, __u32 key,
				     const struct xdpg_guard_config *gcfg, const struct xdpg_filter_config *fcfg)
{
	if (w->family == 0 || key >= XDPG_GK_UDP)
		return undecided(ctx, w);
	int monitor = fcfg->monitor & XDPG_MONITOR_ON;
	switch (xdpg_syn_guard(ctx, pkt, w->family, w->flags, key - XDPG_GK_TCP, w->src, gcfg, monitor, w->would,
			       w->would_rule)) {
	case XDPG_SYN_DROP:
		count(XDPG_REASON_SYN_DROPPED, w->bytes);
		decided(ctx, XDPG_REASON_SYN_DROPPED, 0);
		return XDP_DROP;
	case XDPG_SYN_WOULD_DROP:
		count(XDPG_REASON_WOULD_DROP_SYN, w->bytes);
		decided(ctx, XDPG_REASON_WOULD_DROP_SYN, 0);
		return pass_on(ctx);
	case XDPG_SYN_TX:
		/* The rule's event went out before the answer was written
		 * (xdpg_syn_guard). */
		count(XDPG_REASON_SYN_COOKIE_SENT, w->bytes);
		return XDP_TX;
	case XDPG_SYN_COOKIE_OK:
		would_event(ctx, w);
		count(XDPG_REASON_SYN_COOKIE_PASSED, w->bytes);
		return pass_on(ctx);
	}
	return undecided(ctx, w);
}

/* Whether addr lies in net/len (both network byte order, IPv4 in word 0).
 * A record's prefix is of its family (user space sets the family whenever
 * a prefix is given), and the walk skips records of the other family, so
 * an IPv4 packet's check is one word against an IPv4 prefix (len <= 32):
 * its mask, the first `len` of 32 bits, taken from a 64-bit shift without
 * a branch. */
static __always_inline int in_prefix(const __u32 *net, __u32 len, const __u32 *addr, int v6)
{
	if (!v6)
		return (addr[0] & bpf_htonl((__u32)(0xFFFFFFFF00000000ull >> (len & 63)))) == net[0];
	return ((mask_word(addr[0], len) ^ net[0]) | (mask_word(addr[1], len - 32) ^ net[1]) |
		(mask_word(addr[2], len - 64) ^ net[2]) | (mask_word(addr[3], len - 96) ^ net[3])) == 0;
}

/* Whether the source is in physical set `set`: one trie lookup, only for
 * packets that reach a rule naming a set. */
static __always_inline int in_set(__u32 set, const struct walk *w)
{
	struct xdpg_set_key key = {};
	int v6 = w->family == 6;
	key.prefixlen = XDPG_SET_TAG_BITS + (v6 ? 128 : 32);
	key.tag = bpf_htonl((set << 1) | v6);
	__builtin_memcpy(key.addr, w->src, sizeof(key.addr));
	return bpf_map_lookup_elem(&xdpg_g_sets, &key) != NULL;
}

static __always_inline void count_rule(__u32 id, __u64 bytes)
{
	struct xdpg_counter *c = bpf_map_lookup_elem(&xdpg_g_cnt, &id);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

#include "guard_limit.h"

/* Record i of the group: 0 to go on, 1 when the walk is decided (or the
 * record cannot be read). */
static __always_inline long check_record(__u32 i, struct walk *w)
{
	__u32 idx = w->first + i;
	__u32 word_idx = idx / 2;
	__u64 *word = bpf_map_lookup_elem(&xdpg_g_ref, &word_idx);
	if (!word)
		return 1;
	__u32 ref = (__u32)(*word >> ((idx & 1) * 32));
	struct xdpg_rule_rec *r = bpf_map_lookup_elem(&xdpg_g_rec, &ref);
	if (!r)
		return 1;
	if (r->family && r->family != w->family)
		return 0;
	__u32 match = r->conds;
	if ((match & XDPG_RM_SPORT) && (w->sport < r->sport_lo || w->sport > r->sport_hi))
		return 0;
	if ((w->flags & r->flags_mask) != r->flags_value)
		return 0;
	if ((match & XDPG_RM_FRAG) && w->fragment == !!(match & XDPG_RM_FRAG_NOT))
		return 0;
	if (match & XDPG_RM_DST) {
		int hit = in_prefix(r->dst, r->dst_len, w->dst, w->family == 6);
		if (hit == !!(match & XDPG_RM_DST_NOT))
			return 0;
	}
	if (match & XDPG_RM_SRC) {
		int hit = (match & XDPG_RM_SRC_SET) ? in_set(r->set, w)
						    : in_prefix(r->src, r->src_len, w->src, w->family == 6);
		if (hit == !!(match & XDPG_RM_SRC_NOT))
			return 0;
	}
	count_rule(r->rule, w->bytes);
	if (r->action == XDPG_RULE_RATE_LIMIT) {
		/* Within the limit the walk goes on; over it, the rule decides
		 * (a monitored rule only counts it). */
		__u32 monitored = r->mode & XDPG_RULE_MONITOR;
		if (!limit_over(w, r->rule, monitored))
			return 0;
		if (monitored) {
			would_drop(w, XDPG_REASON_WOULD_DROP_LIMIT, r->rule);
			return 0;
		}
		w->action = XDPG_RULE_RATE_LIMIT;
		w->rule = r->rule;
		return 1;
	}
	if (r->action == XDPG_RULE_COUNT)
		return 0;
	if (r->mode & XDPG_RULE_MONITOR) {
		if (r->action == XDPG_RULE_DROP)
			would_drop(w, XDPG_REASON_WOULD_DROP_RULE, r->rule);
		return 0;
	}
	w->action = r->action;
	w->rule = r->rule;
	return 1;
}

/* The same, as bpf_loop's callback, for records past the inline ones. */
static long check_record_cb(__u32 i, void *data)
{
	return check_record(i, data);
}

/* Walks the group's records in order until one decides. The first
 * GUARD_INLINE_RECORDS are checked in a plain loop; bpf_loop takes the
 * rest (a group's length has no bound the verifier could walk). Measured
 * (hot, AMD EPYC, 6.18): a record costs ~4 ns inline and ~14 ns through
 * bpf_loop's callback. 8 inline records cost the verifier three times as
 * long (a filter load: 0.34 s -> 1 s), for groups longer than most. */
static __always_inline void walk_group(struct walk *w, __u32 count)
{
	__u32 i;
	for (i = 0; i < GUARD_INLINE_RECORDS; i++) {
		if (i >= count)
			return;
		if (check_record(i, w))
			return;
	}
	if (count > GUARD_INLINE_RECORDS) {
		w->first += GUARD_INLINE_RECORDS;
		bpf_loop(count - GUARD_INLINE_RECORDS, check_record_cb, w, 0);
	}
}

/* nd_on_link for an IPv6 packet the parse accepted: its header read again
 * (rather than kept from the address copy above, where every packet would
 * carry it), only on the timed-block drop path. */
static __always_inline int nd_on_link_ipv6(void *data, void *data_end, const struct xdpg_pkt *pkt)
{
	struct ipv6hdr *ip6h = data + (pkt->l3_off & 0xFFF);
	if ((void *)(ip6h + 1) > data_end)
		return 0;
	return nd_on_link(data, data_end, pkt, ip6h);
}

SEC("xdp")
int xdpg_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct xdpg_pkt pkt = {};
	struct walk w = {};
	__u32 key = XDPG_GK_KEYS; /* none, until the packet is parsed */

	w.bytes = data_end - data;
	struct xdpg_guard_config *gcfg = bpf_map_lookup_elem(&xdpg_guard_cfg, &zero);
	struct xdpg_filter_config *fcfg = bpf_map_lookup_elem(&xdpg_filter_cfg, &zero);
	if (!gcfg || !fcfg || xdpg_parse(ctx, &pkt) != XDPG_PARSE_OK)
		goto passed;

	if (pkt.l3_proto == ETH_P_IP) {
		struct iphdr *iph = data + (pkt.l3_off & 0xFFF);
		if ((void *)(iph + 1) > data_end)
			goto passed;
		w.family = 4;
		w.src[0] = iph->saddr;
		w.dst[0] = iph->daddr;
	} else {
		struct ipv6hdr *ip6h = data + (pkt.l3_off & 0xFFF);
		if ((void *)(ip6h + 1) > data_end)
			goto passed;
		w.family = 6;
		__builtin_memcpy(w.src, &ip6h->saddr, sizeof(w.src));
		__builtin_memcpy(w.dst, &ip6h->daddr, sizeof(w.dst));
	}

	/* Timed blocks (user space's and rate limits' auto-blocks), while
	 * there are any: after the lists, before the rules. On-link neighbour
	 * discovery is exempt, as from the lists (guard_key.h, nd_on_link):
	 * tested only for IPv6 packets a timed block would drop, so IPv4 and
	 * every packet no block covers pay nothing for it. */
	if (timed_blocked(&w, gcfg) && (w.family != 6 || !nd_on_link_ipv6(data, data_end, &pkt)))
		return drop_or_monitor(ctx, fcfg, XDPG_REASON_TIMED_BLOCKED, XDPG_REASON_WOULD_DROP_TIMED,
				       XDPG_TB_BY_USER, w.bytes);

	/* An IPv6 extension-header chain longer than the parse walks
	 * (XDPG_MAX_IPV6_EXT_HDRS), or a TCP first fragment cutting its header
	 * short (parsing.h, xdpg_tiny_fragment): the stack still reaches the
	 * transport header, the rules and the SYN guard cannot (a rule naming
	 * ports, flags or types would be passed by, and a protocol looked for
	 * behind the chain), so nothing can say it does not match. Dropped as
	 * malformed while the guard runs; counted and passed in monitor mode,
	 * as the filter treats malformed packets. */
	if (pkt.l4_hidden) {
		count(XDPG_REASON_MALFORMED, w.bytes);
		if (fcfg->monitor & XDPG_MONITOR_ON)
			return pass_on(ctx);
		decided(ctx, XDPG_REASON_MALFORMED, 0);
		return XDP_DROP;
	}

	/* One read: one rule set (one half) decides this packet. */
	__u32 half = *(volatile __u32 *)&gcfg->rules & XDPG_RULES_HALF;
	key = xdpg_guard_key(data, data_end, &pkt, xdpg_ip_end(data, data_end, &pkt), &w.sport, &w.flags);
	__u32 word_idx = key / XDPG_GK_PER_WORD + (half ? XDPG_GK_WORDS : 0);
	__u64 *word = bpf_map_lookup_elem(&xdpg_g_idx, &word_idx);
	if (!word)
		goto passed;
	__u32 group = (*word >> ((key % XDPG_GK_PER_WORD) * 16)) & 0xFFFF;
	if (group == 0)
		goto passed;
	group += half ? gcfg->groups_per_half : 0;
	struct xdpg_rule_group *g = bpf_map_lookup_elem(&xdpg_g_grp, &group);
	if (!g)
		goto passed;
	w.first = g->first;
	/* Set here, not with the addresses: a packet whose key has no group
	 * (most, under a port-scoped rule set) pays nothing for it. */
	w.fragment = pkt.fragment;
	walk_group(&w, g->count);
	if (w.action == XDPG_RULE_DROP)
		return drop_or_monitor(ctx, fcfg, XDPG_REASON_RULE_DROPPED, XDPG_REASON_WOULD_DROP_RULE, w.rule,
				       w.bytes);
	if (w.action == XDPG_RULE_RATE_LIMIT)
		return drop_or_monitor(ctx, fcfg, XDPG_REASON_RATE_LIMITED, XDPG_REASON_WOULD_DROP_LIMIT, w.rule,
				       w.bytes);
	if (w.action == XDPG_RULE_PASS) {
		would_event(ctx, &w);
		count(XDPG_REASON_RULE_PASSED, w.bytes);
		return pass_on(ctx);
	}
passed:
	if (!gcfg || !fcfg)
		return undecided(ctx, &w);
	return syn_stage(ctx, &pkt, &w, key, gcfg, fcfg);
}
