/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The guard's rate limits (the rate-limit rule action) and timed blocks.
 *
 * Rate limits. A rate-limit rule that matches a packet asks limit_over()
 * whether the packet's key (the rule and the source's prefix, /32 and /64
 * by default) is over the rule's rates:
 *
 *   1. an exact bucket for the key in the LRU (xdpg_l_lru)? Its GCRA
 *      decides (packets and bytes, each with its burst);
 *   2. else the key is counted in this CPU's count-min sketch (4 rows in
 *      one cache line, time-windowed, never under-counts). An estimate up to the rule's
 *      `admit` (at most half of what the rate allows in a window) cannot
 *      be over the limit: the packet conforms and no state is made. So a
 *      spoofed flood of one or two packets per source makes no bucket;
 *   3. else (a heavy key) a bucket is made, charged with the packets the
 *      sketch let through (the estimate, at most `admit`), and decides. At most `promote_max` buckets are made per
 *      window per CPU: when a flood saturates the sketch (every estimate
 *      high), it cannot churn the LRU faster than that, so the buckets of
 *      clients seen recently stay. Past the cap the sketch decides alone:
 *      over when the estimate exceeds what the rate and burst allow in a
 *      window (`sketch_max`).
 *
 * The LRU never refuses a bucket: when full, it evicts the least recently
 * used ones. An evicted key comes back through the sketch (and is charged
 * with its estimate when it is heavy), so eviction never makes the limit
 * stricter than configured, and the cap bounds how much eviction a flood
 * can cause. Bucket updates are not atomic: two CPUs updating one key's
 * bucket at once can let a packet more through (RSS makes that rare).
 *
 * Timed blocks (xdpg_l_tblk) are checked before the rules, only while
 * the config's timed_active is set: an entry whose expiry is past matches
 * nothing and is deleted on the hit that finds it.
 *
 * The caller includes guard_structs.h, guard_maps.h, guard_clock.h and
 * hash.h first. */
#ifndef XDPG_GUARD_LIMIT_H
#define XDPG_GUARD_LIMIT_H

#include "guard_limit_consts.h"
#include "guard_limit_structs.h"
#include "guard_limit_maps.h"

/* The key of a source: its prefix for the rule's limit. */
static __always_inline void limit_key(struct xdpg_limit_key *k, __u32 rule, __u32 family, const __u32 *src, __u32 len)
{
	k->rule = rule;
	k->family_len = (family << 8) | len;
	mask_prefix(k->addr, src, len, family == 6);
}

/* GCRA: whether a packet of `cost` conforms to (tat, burst) at `now`, and
 * the TAT it leaves. */
static __always_inline int gcra(__u64 tat, __u64 now, __u64 cost, __u64 burst, __u64 *next)
{
	__u64 start = tat > now ? tat : now;
	*next = start + cost;
	return *next - now <= burst;
}

/* The packet and byte verdict of a bucket, updated when the packet conforms. */
static __always_inline int bucket_over(struct xdpg_limit_bucket *b, const struct xdpg_limit_spec *s, __u64 now,
				       __u64 bytes)
{
	__u64 np = 0, nb = 0;
	if (s->pkt_cost && !gcra(b->tat_pkts, now, s->pkt_cost, s->pkt_burst, &np))
		return 1;
	if (s->byte_cost && !gcra(b->tat_bytes, now, s->byte_cost * bytes, s->byte_burst, &nb))
		return 1;
	if (s->pkt_cost)
		b->tat_pkts = np;
	if (s->byte_cost)
		b->tat_bytes = nb;
	return 0;
}

/* Counts the key in the sketch; returns its estimate for this window.
 * Measured (1M random sources, one call each): one sketch counter per row
 * in a per-CPU array of single counters cost two misses a row (the
 * element's pointer, then the counter); the blocked layout costs one. */
static __always_inline __u32 sketch_count(__u32 hash, __u64 window)
{
	__u32 est = XDPG_RL_COUNT_MASK;
	__u32 tag = (__u32)(window & 0xFF) << XDPG_RL_TAG_SHIFT;
	__u32 block = hash & (XDPG_RL_BLOCKS - 1);
	__u32 chunk = block / XDPG_RL_CHUNK_BLOCKS;
	struct xdpg_sketch_chunk *ch = bpf_map_lookup_elem(&xdpg_l_sketch, &chunk);
	if (!ch)
		return est;
	__u32 base = (block % XDPG_RL_CHUNK_BLOCKS) * XDPG_RL_BLOCK_SLOTS;
	__u32 slots = xdpg_mix32(hash ^ 0x9E3779B9u);
#pragma unroll
	for (__u32 row = 0; row < XDPG_RL_ROWS; row++) {
		__u32 idx = base + row * 4 + ((slots >> (2 * row)) & 3);
		if (idx >= XDPG_RL_CHUNK_BLOCKS * XDPG_RL_BLOCK_SLOTS)
			return est;
		__u32 v = ch->c[idx];
		__u32 n = (v & ~XDPG_RL_COUNT_MASK) == tag ? (v & XDPG_RL_COUNT_MASK) : 0;
		if (n < XDPG_RL_COUNT_MASK)
			n++;
		ch->c[idx] = tag | n;
		if (n < est)
			est = n;
	}
	return est;
}

/* Blocks the key for the rule's block time (an auto-block). */
static __always_inline void auto_block(struct xdpg_limit_config *lcfg, struct xdpg_limit_stats *st,
				       const struct xdpg_limit_key *k, const struct xdpg_limit_spec *s, __u64 now_ns)
{
	struct xdpg_tblock_key tk = {};
	struct xdpg_tblock tb = {};
	__u32 family = k->family_len >> 8;
	/* A /0 key (`per src/0`) would block a whole address family: rule
	 * normalisation refuses `block` with it, and a rule stored by an older
	 * build that took one blocks nothing here (counted as a failed block).
	 * Only on the auto-block path. */
	if ((k->family_len & 0xFF) == 0) {
		if (st)
			st->blocks_failed++;
		return;
	}
	tk.prefixlen = XDPG_TB_TAG_BITS + (k->family_len & 0xFF);
	tk.tag = bpf_htonl(family == 6);
	__builtin_memcpy(tk.addr, k->addr, sizeof(tk.addr));
	tb.expires_ns = now_ns + s->block_ns;
	tb.rule = k->rule;
	tb.len = k->family_len & 0xFF;
	if (bpf_map_update_elem(&xdpg_l_tblk, &tk, &tb, BPF_ANY) == 0) {
		lcfg->timed_active = 1;
		struct xdpg_limit_counter *c = bpf_map_lookup_elem(&xdpg_l_cnt, &k->rule);
		if (c)
			c->blocks++;
	} else if (st) {
		st->blocks_failed++;
	}
}

/* Whether a packet that rule `rule` (a rate-limit rule) matched is over its
 * limit. `monitor`: count what it would do, change no bucket's verdict
 * into a block. A global function: verified once, called from the walk. */
__noinline int limit_over(struct walk *w, __u32 rule, __u32 monitor)
{
	__u32 zero = 0;
	if (!w)
		return 0;
	struct xdpg_limit_spec *s = bpf_map_lookup_elem(&xdpg_l_spec, &rule);
	struct xdpg_limit_config *lcfg = bpf_map_lookup_elem(&xdpg_l_cfg, &zero);
	struct xdpg_guard_config *gcfg = bpf_map_lookup_elem(&xdpg_guard_cfg, &zero);
	struct xdpg_limit_stats *st = bpf_map_lookup_elem(&xdpg_l_stats, &zero);
	struct xdpg_filter_config *fcfg = bpf_map_lookup_elem(&xdpg_filter_cfg, &zero);
	if (!s || !lcfg || !gcfg || !st || !fcfg)
		return 0;
	/* Whole-filter monitor mode makes no auto-block either. */
	if (fcfg->monitor & XDPG_MONITOR_ON)
		monitor = 1;
	__u64 now_ns = guard_now(gcfg);
	__u64 now = now_ns << XDPG_RL_TIME_SHIFT;
	__u64 bytes = w->bytes;
	struct xdpg_limit_key k = {};
	__u32 family = w->family == 6 ? 6 : 4;
	limit_key(&k, rule, family, w->src, family == 6 ? s->v6_len : s->v4_len);

	int over;
	__u64 over_count = 1; /* the key's over-limit packets, this one included */
	struct xdpg_limit_bucket *b = bpf_map_lookup_elem(&xdpg_l_lru, &k);
	if (b) {
		/* `after N` counts the over-limit packets of one episode: a
		 * bucket back to its whole burst (the key within its limit long
		 * enough to refill it) starts a new one, as does a block (below).
		 * Counted for life, one slip every few seconds added up to a
		 * block, and a block's first over-limit packet after it expired
		 * blocked again at once. */
		if ((!s->pkt_cost || b->tat_pkts <= now) && (!s->byte_cost || b->tat_bytes <= now))
			b->over = 0;
		over = bucket_over(b, s, now, bytes);
		/* A dry run counts nothing toward the block it would not make,
		 * or ending it would leave the key one packet from a block. */
		if (over && !monitor)
			over_count = ++b->over;
		goto decided;
	}
	__u64 window_ns = lcfg->window_ns ? lcfg->window_ns : XDPG_RL_WINDOW_NS;
	__u64 window = now_ns / window_ns;
	__u32 hash = xdpg_mix32(lcfg->seed ^ rule ^ k.family_len);
	hash = xdpg_mix32(hash ^ k.addr[0]);
	hash = xdpg_mix32(hash ^ k.addr[1] ^ (k.addr[2] * 0x9E3779B1u) ^ (k.addr[3] * 0x85EBCA6Bu));
	__u32 est = sketch_count(hash, window);
	if (est <= s->admit)
		return 0;
	if (st->window != window) {
		st->window = window;
		st->window_made = 0;
	}
	__u32 cap = lcfg->promote_max ? lcfg->promote_max : XDPG_RL_PROMOTE_MAX;
	if (st->window_made >= cap) {
		st->promote_capped++;
		over = est > s->sketch_max;
		if (over) {
			st->sketch_over++;
			over_count = est - s->sketch_max;
		}
		goto decided;
	}
	/* A new bucket, charged with the packets the sketch let through
	 * without one: at most `admit` (past it, a key gets a bucket), so a
	 * new key whose estimate collisions inflated is not charged for other
	 * keys' packets beyond that (never for its whole burst: admit is at
	 * most half of it). */
	struct xdpg_limit_bucket nb = {};
	__u64 seen = est - 1 < s->admit ? est - 1 : s->admit;
	nb.tat_pkts = now + (seen * s->pkt_cost < s->pkt_burst ? seen * s->pkt_cost : s->pkt_burst);
	__u64 seen_bytes = seen * bytes * s->byte_cost;
	nb.tat_bytes = now + (seen_bytes < s->byte_burst ? seen_bytes : s->byte_burst);
	over = bucket_over(&nb, s, now, bytes);
	nb.over = over && !monitor;
	bpf_map_update_elem(&xdpg_l_lru, &k, &nb, BPF_ANY);
	st->window_made++;
	st->buckets_made++;

decided:
	if (!over)
		return 0;
	struct xdpg_limit_counter *c = bpf_map_lookup_elem(&xdpg_l_cnt, &rule);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	/* `block ... after N`: blocked by the Nth over-limit packet (the
	 * first, for N of 0 or 1). */
	if (s->block_ns && !monitor && over_count >= s->block_after) {
		auto_block(lcfg, st, &k, s, now_ns);
		if (b)
			b->over = 0;
	}
	return 1;
}

/* One step of the timed-block lookup (bpf_loop's callback): looks the
 * source up; a live entry blocks (1 in `blocked`, stop), no entry ends the
 * walk (stop), an expired one is deleted by its key and counted, and the
 * walk goes on: a shorter prefix, live or expired, may cover the source.
 * Every step removes one entry covering the source, so the walk ends within
 * one step per prefix length. */
struct tblock_walk {
	struct xdpg_tblock_key tk;
	const struct walk *w;
	__u64 now;
	int blocked;
};

static long tblock_step(__u32 i, void *data)
{
	struct tblock_walk *t = data;
	const struct walk *w = t->w;
	__u32 zero = 0;
	struct xdpg_tblock *tb = bpf_map_lookup_elem(&xdpg_l_tblk, &t->tk);
	if (!tb)
		return 1;
	if (t->now < tb->expires_ns) {
		t->blocked = 1;
		return 1;
	}
	struct xdpg_tblock_key dk = {};
	__u32 len = tb->len & 0xFF;
	dk.prefixlen = XDPG_TB_TAG_BITS + len;
	dk.tag = t->tk.tag;
	mask_prefix(dk.addr, w->src, len, w->family == 6);
	if (bpf_map_delete_elem(&xdpg_l_tblk, &dk) != 0)
		return 1; /* another CPU deleted it first; it was expired anyway */
	struct xdpg_limit_stats *st = bpf_map_lookup_elem(&xdpg_l_stats, &zero);
	if (st)
		st->expired++;
	return 0;
}

/* Whether the source is in a live timed block. Expired entries on the way
 * are reclaimed; nested ones (an expired /32 inside an expired /24 inside a
 * live /16) are all walked: bpf_loop, one step per entry, at most one per
 * prefix length (129). The first version stopped after two lookups and
 * passed a source whose live block lay under two expired ones. */
static __always_inline int timed_blocked(const struct walk *w, struct xdpg_guard_config *gcfg)
{
	__u32 zero = 0;
	struct xdpg_limit_config *lcfg = bpf_map_lookup_elem(&xdpg_l_cfg, &zero);
	if (!lcfg || !lcfg->timed_active)
		return 0;
	struct tblock_walk t = {};
	int v6 = w->family == 6;
	t.tk.prefixlen = XDPG_TB_TAG_BITS + (v6 ? 128 : 32);
	t.tk.tag = bpf_htonl(v6);
	__builtin_memcpy(t.tk.addr, w->src, sizeof(t.tk.addr));
	t.w = w;
	t.now = guard_now(gcfg);
	bpf_loop(129, tblock_step, &t, 0);
	return t.blocked;
}

#endif
