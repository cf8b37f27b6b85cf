// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The xdpguard filter: allowlist, then blocklist, then (when a rule set is
 * loaded) the guard stage, then pass. Whatever passes is tail-called into
 * xdpg_next[0] when a next stage is installed. In monitor mode a
 * blocklisted source is counted as "would drop" and passed.
 *
 * A packet's path, top to bottom of xdpg_filter (at the end of this file):
 * parse (parsing.h), then the source's verdict: IPv4 by v4_verdict (one
 * line per /18: its /24 cells and listed hosts inline; host buckets on
 * overflow), IPv6 by v6_verdict (entries of /48 and longer in one chain
 * per /48, walked by v6_anchored; the live view's shorter prefix lengths,
 * longest first, each behind a Bloom bit, probed by v6_probe); then count
 * and drop, or pass on (through the guard stage unless its gate, xdpg_gate,
 * says it has nothing to do for the packet: gate_skips). The tables' layout
 * is in filter_structs.h and filter_consts.h, the maps in filter_maps.h,
 * the hashes (mirrored in Rust) in hash.h. Every drop and would-drop
 * may send a sampled event (filter_events.h) while a reader holds a lease. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "filter_consts.h"
#include "filter_structs.h"
#include "filter_maps.h"
/* A chain past XDPG_MAX_L3_OFFSET: hidden, its source judged (parsing.h). */
#define XDPG_PARSE_LONG_CHAIN_HIDDEN
#include "parsing.h"
#include "hash.h"
#include "prefix.h"
#include "guard_consts.h"
#include "guard_key.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Entry `key` of map_b when `use_b` is set, else of map_a (the live copy of
 * an A/B table pair). Two call sites, each given one map, so that the
 * verifier inlines both array lookups into a bounds check and an add. One
 * call site given either map, which is what `use_b ? lookup(map_b) :
 * lookup(map_a)` compiles to, cannot be inlined: it stays a call into the
 * generic helper and its indirect call through the map's ops, a retpoline
 * here (measured: 58 ns of the IPv4 drop's 65 at repeat=1, BENCHMARKS.md,
 * "Issue 13, sixth session"). The empty asm in one arm keeps clang from
 * merging the two calls back into one. */
#define XDPG_LOOKUP_AB(use_b, map_b, map_a, key)                   \
	({                                                         \
		void *__entry;                                     \
		if (use_b) {                                       \
			__entry = bpf_map_lookup_elem(map_b, key); \
			asm volatile("" ::: "memory");             \
		} else {                                           \
			__entry = bpf_map_lookup_elem(map_a, key); \
		}                                                  \
		__entry;                                           \
	})

/* Returned by the host lookup when no bucket holds the host. */
#define HOST_NOT_FOUND 0xFF

_Static_assert(XDPG_HOST_PASS == 3 && XDPG_VERDICT_PASS == 0 && XDPG_VERDICT_BLOCK == 1 && XDPG_VERDICT_ALLOW == 2,
	       "v4_verdict maps a host's code to a verdict by these values");

/* Looks a host up in the mixed-/24 buckets. Inlined: as a global function
 * (one verification, one call) it measured ~15 ns slower per flood packet. */
static __always_inline __u32 v4_host_verdict(struct xdpg_filter_config *cfg, __u32 active, __u32 addr)
{
	__u32 mask = cfg->v4_bucket_mask;
	__u32 idx = xdpg_v4_bucket_index(addr, cfg->hash_seed, mask);

	for (int probe = 0; probe < XDPG_V4_MAX_PROBES; probe++) {
		struct xdpg_v4_bucket *b = XDPG_LOOKUP_AB(active, &xdpg_v4_hosts_b, &xdpg_v4_hosts_a, &idx);
		if (!b)
			break;
		__u32 meta = b->meta;
#pragma unroll
		for (int s = 0; s < XDPG_V4_BUCKET_SLOTS; s++) {
			if (b->addrs[s] == addr) {
				__u32 code = (meta >> (2 * s)) & 3;
				if (code)
					return code == XDPG_HOST_PASS ? XDPG_VERDICT_PASS : code;
			}
		}
		if (!(meta & XDPG_V4_BUCKET_OVERFLOW))
			break;
		idx = (idx + 1) & mask;
	}
	return HOST_NOT_FOUND;
}

/* The code of host `addr` in its line's inline slots, 0 when none holds
 * it. Branch-free: each word's four slots are compared at once (a slot
 * matches when its bits 2-15 equal the host's, and gives its code bits; at
 * most one slot holds a host). */
static __always_inline __u32 v4_inline_code(const struct xdpg_v4_line *line, __u32 addr)
{
	const __u64 lanes = 0x0001000100010001ULL;
	__u64 want = (__u64)((((addr >> 8) & 63) << 10) | ((addr & 0xFF) << 2)) * lanes;
	__u64 codes = 0;

#pragma unroll
	for (int w = 0; w < XDPG_V4_LINE_SLOT_WORDS; w++) {
		__u64 x = line->slots[w] ^ want;
		__u64 key = x & (0xFFFC * lanes);
		/* Bit 15 of a lane set when that lane's key bits are all 0. */
		__u64 same = ~(((key & (0x7FFF * lanes)) + 0x7FFF * lanes) | key) & (0x8000 * lanes);
		codes |= (same >> 15) * 3 & x;
	}
	codes |= codes >> 32;
	codes |= codes >> 16;
	return codes & 3;
}

/* A source's verdict: its host's code in its /18's line, else (only if the
 * line overflowed) in the host buckets, else its /24's cell. One memory
 * access unless a /18 holds more than seven listed hosts. (Measured and
 * dropped, BENCHMARKS.md: a 4-bit cell per /24 with a "mixed" bit sending
 * the lookup on to the host buckets, two dependent reads for a listed /32;
 * reading that bucket early in parallel with the cell; a 2 MiB "mixed /24"
 * hint bitmap; a /20 cell and a /24 table with two hosts inline; 64-byte
 * lines with fifteen hosts, whose 16 MiB array left the TLB's reach.) */
static __always_inline __u32 v4_verdict(struct xdpg_filter_config *cfg, __u32 tables, __u32 addr)
{
	__u32 active = tables & XDPG_TABLES_V4_MASK;
	__u32 line_idx = addr >> 14;
	struct xdpg_v4_line *line = XDPG_LOOKUP_AB(active, &xdpg_v4_l1_b, &xdpg_v4_l1_a, &line_idx);
	if (!line)
		return XDPG_VERDICT_PASS;
	__u32 cell_idx = (addr >> 8) & 63;
	__u32 cell = (line->cells[cell_idx / XDPG_V4_CELLS_PER_WORD] >> ((cell_idx % XDPG_V4_CELLS_PER_WORD) * 2)) & 3;
	__u32 code = v4_inline_code(line, addr);
	/* The host's code when a slot holds the host, else the cell, chosen
	 * without a branch: which of the two decides changes from packet to
	 * packet under a flood, and a mispredicted branch on it is found only
	 * when the line's miss returns, then the work after it is redone
	 * (about 10 ns per cold attack packet, BENCHMARKS.md, "Issue 13,
	 * sixth session"). BPF has no conditional move; the empty asm keeps
	 * clang from turning the masks back into a branch. */
	__u64 in_line = ((__u64)code + 3) >> 2;			     /* code 1-3: 1 */
	__u64 host_verdict = code & ~(((code >> 1) & code & 1) * 3); /* XDPG_HOST_PASS: 0 */
	__u64 pick = -in_line;
	asm volatile("" : "+r"(pick));
	__u32 verdict = (host_verdict & pick) | (cell & ~pick);
	if (in_line | ((line->slots[XDPG_V4_LINE_SLOT_WORDS - 1] >> 48) != XDPG_V4_LINE_OVERFLOW))
		return verdict;
	__u32 host = v4_host_verdict(cfg, active, addr);
	return host == HOST_NOT_FOUND ? cell : host;
}

/* Bucket `idx` of v6 table `table` (0 or 1), NULL past the end. */
static __always_inline struct xdpg_v6_bucket *v6_bucket(__u32 table, __u32 idx)
{
	return XDPG_LOOKUP_AB(table, &xdpg_v6_tab_b, &xdpg_v6_tab_a, &idx);
}

/* Looks a masked v6 key up in one table: its bucket chain, three entries
 * per cache line. Returns the entry's code, or 0 when absent. A global
 * function (checked once by the verifier), so the caller's loop over prefix
 * lengths stays small; `where` packs the key hash, length and table. */
__noinline int v6_probe(__u64 where, __u32 k0, __u32 k1, __u32 k2, __u32 k3)
{
	__u32 zero = 0;
	struct xdpg_filter_config *cfg = bpf_map_lookup_elem(&xdpg_filter_cfg, &zero);
	if (!cfg)
		return 0;
	__u32 hash = (__u32)where;
	__u32 want = ((where >> 32) & 0xFF) + 1;
	__u32 table = (where >> 40) & 1;
	__u32 mask = cfg->v6_bucket_mask;
	__u32 idx = xdpg_mix32(hash) & mask;

	for (int probe = 0; probe < XDPG_V6_MAX_PROBES; probe++) {
		struct xdpg_v6_bucket *b = v6_bucket(table, idx);
		if (!b)
			break;
#pragma unroll
		for (int s = 0; s < XDPG_V6_BUCKET_SLOTS; s++) {
			/* Code first: the key is only meaningful under a code. */
			__u32 len_code = *(volatile __u32 *)&b->e[s].len_code;
			/* Length and kind (XDPG_V6_KIND_LEN, 0) both match. */
			__u32 diff = ((len_code & 0xFFFF00FF) ^ want) | (b->e[s].addr[0] ^ k0) |
				     (b->e[s].addr[1] ^ k1) | (b->e[s].addr[2] ^ k2) | (b->e[s].addr[3] ^ k3);
			__u32 code = (len_code >> 8) & 0xFF;
			if (!diff && code)
				return code;
		}
		if (!(b->meta & XDPG_V6_BUCKET_OVERFLOW))
			break;
		idx = (idx + 1) & mask;
	}
	return 0;
}

/* The first `bits` bits of a word set (network byte order), for any
 * `bits`: a constant expression, for v6_masks. */
#define V6_MASK(bits) \
	__bpf_constant_htonl((bits) <= 0 ? 0u : (bits) >= 32 ? 0xFFFFFFFFu : (__u32)(0xFFFFFFFFu << (32 - (bits))))
#define V6_MASK_ROW(c)                                                            \
	{                                                                         \
		V6_MASK((c)-1), V6_MASK((c)-33), V6_MASK((c)-65), V6_MASK((c)-97) \
	}
#define V6_MASK_ROWS4(c) V6_MASK_ROW(c), V6_MASK_ROW((c) + 1), V6_MASK_ROW((c) + 2), V6_MASK_ROW((c) + 3)
#define V6_MASK_ROWS16(c) V6_MASK_ROWS4(c), V6_MASK_ROWS4((c) + 4), V6_MASK_ROWS4((c) + 8), V6_MASK_ROWS4((c) + 12)
#define V6_MASK_ROWS64(c) \
	V6_MASK_ROWS16(c), V6_MASK_ROWS16((c) + 16), V6_MASK_ROWS16((c) + 32), V6_MASK_ROWS16((c) + 48)

/* The masks of an entry's four address words, by its len_code's low byte
 * (length + 1; rows past 129 are never read): one read of a 4 KiB
 * read-only table, whose lines for the lengths in use stay cached, in
 * place of the masks computed per entry (branch-free, kept from clang's
 * jumps by barrier_var). Intel Xeon, six A/B pairs in turn: a cold IPv6
 * attack packet 3-21 ns cheaper in five (median 6.7), warm within the
 * noise (BENCHMARKS.md, "Issue 13, fourteenth session"). */
static const __u32 v6_masks[256][4] = { V6_MASK_ROWS64(0), V6_MASK_ROWS64(64), V6_MASK_ROWS64(128),
					V6_MASK_ROWS64(192) };

/* Entry `e` (live, its code word `len_code`, of the packet's /48) judged
 * against address words a1-a3: (length + 1) << 8 | code when it covers
 * them, else 0. */
static __always_inline __u32 v6_judged(const struct xdpg_v6_entry *e, __u32 len_code, __u32 a1, __u32 a2, __u32 a3)
{
	const __u32 *m = v6_masks[len_code & 0xFF];
	__u32 diff = (e->addr[1] ^ (a1 & m[1])) | (e->addr[2] ^ (a2 & m[2])) | (e->addr[3] ^ (a3 & m[3]));
	return diff ? 0 : (len_code & 0xFF) << 8 | ((len_code >> 8) & 0xFF);
}

/* Set in v6_anchored's answer when the /48 is marked dense. */
#define V6_WALK_DENSE 0x10000

/* Walks the chain of a /48 in v6 table `table` (`mixed`: xdpg_mix32 of its
 * chain hash, whichever hash the view names) for the entries of that /48
 * covering address a0-a3. Returns V6_WALK_DENSE at the /48's
 * dense mark; else the longest covering entry as (length + 1) << 8 | code,
 * 0 when none. Stops at the /48's mark or at its only entry
 * (XDPG_V6_KIND_SINGLE), else reads the whole chain: a longer entry may
 * come later. Inlined (called once per packet): as a global function, its
 * call, return and second config lookup cost about 10 ns per cold IPv6
 * attack packet (BENCHMARKS.md, "Issue 13, sixth session"). */
static __always_inline int v6_anchored(struct xdpg_filter_config *cfg, __u32 table, __u32 mixed, __u32 a0, __u32 a1,
				       __u32 a2, __u32 a3)
{
	__u32 mask = cfg->v6_bucket_mask;
	__u32 idx = mixed & mask;
	__u32 w1_mask = bpf_htonl(0xFFFF0000);
	__u32 best = 0;

	/* The /48's only entry, in the slot of the home bucket its hash names
	 * (where v6_tables.rs puts it when that slot is free, about 73% of
	 * them at the 1M capacity's load): judged alone, before the walk, with
	 * no branch on the other slots' contents. AMD EPYC, 1M prefixes, six
	 * A/B pairs: a cold IPv6 attack packet 2-26 ns cheaper (median 7),
	 * warm 0-6; hot paths +1-2 (BENCHMARKS.md, "Issue 13, ninth
	 * session"). */
	struct xdpg_v6_bucket *home = v6_bucket(table, idx);
	if (!home)
		return 0;
	struct xdpg_v6_entry *e = &home->e[XDPG_HOME_SLOT(mixed, XDPG_V6_BUCKET_SLOTS)];
	__u32 len_code = *(volatile __u32 *)&e->len_code;
	if ((len_code >> 16) == XDPG_V6_KIND_SINGLE && (len_code & 0xFF00) && e->addr[0] == a0 &&
	    !((e->addr[1] ^ a1) & w1_mask))
		return v6_judged(e, len_code, a1, a2, a3);

	/* The walk starts at the home bucket already looked up (it was
	 * looked up again: Intel Xeon, four A/B pairs in turn, a cold IPv6
	 * attack packet 172.9 / 185.8 / 186.2 / 182.2 -> 179.2 / 168.1 /
	 * 178.8 / 175.0 ns, warm 41-54 -> 37-44; BENCHMARKS.md, "Issue 13,
	 * eleventh session"). */
	struct xdpg_v6_bucket *b = home;
	for (int probe = 0; probe < XDPG_V6_MAX_PROBES; probe++) {
		if (probe) {
			idx = (idx + 1) & mask;
			b = v6_bucket(table, idx);
			if (!b)
				break;
		}
#pragma unroll
		for (int s = 0; s < XDPG_V6_BUCKET_SLOTS; s++) {
			/* Code first: the key is only meaningful under a code. The
			 * /48 is compared before any mask is computed: most entries
			 * in the chain are other /48s' (hot, a listed /128 69 -> 48
			 * ns with this order). */
			__u32 len_code = *(volatile __u32 *)&b->e[s].len_code;
			__u32 kind = len_code >> 16;
			if (b->e[s].addr[0] != a0 || ((b->e[s].addr[1] ^ a1) & w1_mask) || !kind ||
			    !(len_code & 0xFF00))
				continue;
			if (kind == XDPG_V6_KIND_DENSE)
				return V6_WALK_DENSE;
			__u32 found = v6_judged(&b->e[s], len_code, a1, a2, a3);
			if (kind == XDPG_V6_KIND_SINGLE)
				return found;
			if (found > best)
				best = found;
		}
		if (!(b->meta & XDPG_V6_BUCKET_OVERFLOW))
			break;
	}
	return best;
}

static __always_inline __u32 v6_verdict(struct xdpg_filter_config *cfg, __u32 tables, const __u32 *addr)
{
	__u32 view_idx = (tables >> XDPG_TABLES_V6_SHIFT) & XDPG_TABLES_V6_MASK;
	struct xdpg_v6_view *view = bpf_map_lookup_elem(&xdpg_v6_views, &view_idx);
	if (!view)
		return XDPG_VERDICT_PASS;
	__u32 table = view->table;
	__u32 count = view->count;
	__u32 seed = cfg->hash_seed;
	__u32 bloom_mask = cfg->v6_bloom_mask;
	__u32 key[4];
	__u32 first = 0;

	/* The entries of /48 and longer: one walk of one chain, behind the
	 * Bloom bit of that chain, unless the source's /48 is dense; then every
	 * length is probed on its own. */
	if (view->short_from) {
		__u32 w1 = addr[1] & bpf_htonl(0xFFFF0000);
		/* The chain's bucket and slot (mixed), and its Bloom bit (from
		 * hash), in the table's own hash (the view says which). The
		 * multiply hash puts one multiply between the address and the
		 * bucket, where the murmur hash put three dependent xdpg_mix32:
		 * Intel Xeon, seven A/B pairs in turn, a cold IPv6 attack packet
		 * 188-194 -> 172-179 ns, warm 45-55 -> 34-45 (with the
		 * branch-free masks v6_masks has since replaced; BENCHMARKS.md,
		 * "Issue 13, twelfth session"). */
		__u32 mixed, hash;
		if (view->anchor_hash == XDPG_V6_ANCHOR_MULSHIFT) {
			mixed = xdpg_v6_anchor_mixed(addr[0], w1, xdpg_v6_anchor_mult(seed));
			hash = xdpg_unmix32(mixed);
		} else {
			hash = xdpg_v6_anchor_hash(addr[0], w1, seed);
			mixed = xdpg_mix32(hash);
		}
		__u32 bit = hash & bloom_mask;
		__u32 word_idx = bit / 64;
		__u64 *word = bpf_map_lookup_elem(&xdpg_v6_bloom, &word_idx);
		first = view->short_from;
		if (word && ((*word >> (bit % 64)) & 1)) {
			int found = v6_anchored(cfg, table, mixed, addr[0], addr[1], addr[2], addr[3]);
			if (found & V6_WALK_DENSE)
				first = 0;
			else if (found)
				return found & 0xFF;
		}
	}

	/* Longest first: the first hit is the most specific entry, and its
	 * stored verdict already says whether an allow entry covers it. */
	for (__u32 i = first; i < XDPG_V6_MAX_LENS; i++) {
		if (i >= count)
			break;
		int len = view->lens[i];
		key[0] = mask_word(addr[0], len);
		key[1] = mask_word(addr[1], len - 32);
		key[2] = mask_word(addr[2], len - 64);
		key[3] = mask_word(addr[3], len - 96);
		__u32 hash = xdpg_v6_key_hash(len, key, seed);
		/* A clear Bloom bit proves the key absent: skip the probe, a
		 * cache miss in a big table. */
		__u32 bit = hash & bloom_mask;
		__u32 word_idx = bit / 64;
		__u64 *word = bpf_map_lookup_elem(&xdpg_v6_bloom, &word_idx);
		if (!word || !((*word >> (bit % 64)) & 1))
			continue;
		__u64 where = hash | ((__u64)len << 32) | ((__u64)table << 40);
		int code = v6_probe(where, key[0], key[1], key[2], key[3]);
		if (code)
			return code;
	}
	return XDPG_VERDICT_PASS;
}

/* 1 when the guard's gate (filter_maps.h) says the guard has nothing to
 * do for this packet's key: then the filter passes it itself. Called only
 * while the gate is open; right after the parse, where the verifier has
 * few paths to walk (after the verdict's walks, its branches multiplied
 * the filter's verified paths past the verifier's limit), and inlined (as
 * a global function, its call and return cost about 20 ns per cache-cold
 * packet, BENCHMARKS.md, "Issue 13, seventh session"). */
static __always_inline __u64 gate_skips(void *data, void *data_end, const struct xdpg_pkt *pkt)
{
	__u16 sport;
	__u8 flags;
	__u32 key = xdpg_guard_key(data, data_end, pkt, xdpg_ip_end(data, data_end, pkt), &sport, &flags);
	__u32 word = key / 64;
	__u64 *bits = bpf_map_lookup_elem(&xdpg_gate, &word);
	if (!bits)
		return 0;
	return (*bits >> (key % 64)) & 1;
}

SEC("xdp")
int xdpg_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0;
	struct xdpg_pkt pkt = {};

	struct xdpg_filter_config *cfg = bpf_map_lookup_elem(&xdpg_filter_cfg, &zero);
	if (!cfg)
		return XDP_PASS;

	int parsed = xdpg_parse(ctx, &pkt);
	if (parsed == XDPG_PARSE_NON_IP) {
		count(XDPG_REASON_NON_IP, bytes);
		return pass_on(ctx);
	}
	if (parsed != XDPG_PARSE_OK) {
		count(XDPG_REASON_MALFORMED, bytes);
		/* Malformed: the policy's (the stack drops such packets too). A
		 * packet hidden behind more VLAN tags than the parse walks, which
		 * the stack may deliver (parsing.h): dropped unless in monitor
		 * mode. */
		if ((cfg->malformed_policy == XDPG_MALFORMED_DROP || parsed == XDPG_PARSE_HIDDEN) &&
		    !(cfg->monitor & XDPG_MONITOR_ON)) {
			xdpg_event(ctx, cfg, XDPG_REASON_MALFORMED, 0);
			return XDP_DROP;
		}
		return pass_on(ctx);
	}

	/* One read: the tables of one edit generation decide this packet. */
	__u32 tables = *(volatile __u32 *)&cfg->tables;
	/* A transport header the parse cannot read (parsing.h, l4_hidden) has
	 * no key the gate knows: the guard stage judges it. */
	__u64 skip_guard = (tables & XDPG_TABLES_GATE_OPEN) && !pkt.l4_hidden ? gate_skips(data, data_end, &pkt) : 0;
	__u32 verdict;
	__u32 blocked_reason;
	if (pkt.l3_proto == ETH_P_IP) {
		struct iphdr *iph = data + (pkt.l3_off & 0xFFF);
		if ((void *)(iph + 1) > data_end)
			return XDP_PASS;
		verdict = v4_verdict(cfg, tables, bpf_ntohl(iph->saddr));
		blocked_reason = XDPG_REASON_BLOCKED_V4;
	} else {
		struct ipv6hdr *ip6h = data + (pkt.l3_off & 0xFFF);
		if ((void *)(ip6h + 1) > data_end)
			return XDP_PASS;
		__u32 src[4];
		__builtin_memcpy(src, &ip6h->saddr, sizeof(src));
		verdict = nd_on_link(data, data_end, &pkt, ip6h) ? XDPG_VERDICT_PASS : v6_verdict(cfg, tables, src);
		blocked_reason = XDPG_REASON_BLOCKED_V6;
	}

	if (verdict == XDPG_VERDICT_BLOCK) {
		if (cfg->monitor & XDPG_MONITOR_ON) {
			count(XDPG_REASON_WOULD_DROP_BLOCKED, bytes);
			xdpg_event(ctx, cfg, XDPG_REASON_WOULD_DROP_BLOCKED, 0);
			return pass_on(ctx);
		}
		count(blocked_reason, bytes);
		xdpg_event(ctx, cfg, blocked_reason, 0);
		return XDP_DROP;
	}
	if (verdict == XDPG_VERDICT_ALLOW) {
		count(XDPG_REASON_ALLOWLISTED, bytes);
		return pass_on(ctx);
	}
	/* The guard stage decides (and counts) the rest while it is installed,
	 * unless its gate says it has nothing to do for this packet; an empty
	 * slot falls through at the cost of a not-taken jump. */
	if (!skip_guard)
		bpf_tail_call(ctx, &xdpg_stages, XDPG_STAGE_GUARD);
	count(XDPG_REASON_PASSED, bytes);
	return pass_on(ctx);
}
