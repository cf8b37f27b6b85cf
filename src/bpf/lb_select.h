/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Which VIP a packet is for and which backend serves its flow: the VIP
 * lookup (cached per CPU), the connection table, the VIP's Maglev table, the
 * per-CPU bound on new connection entries, the backend slot. lb_vip in
 * lb.bpf.c puts them together; the flow hash is lb_hash.h's. */
#ifndef XDPG_LB_SELECT_H
#define XDPG_LB_SELECT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb_common.h"

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

/* ---- VIPs --------------------------------------------------------------- */

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

static __always_inline int is_vip_addr(struct xdpg_lb_flow *flow)
{
	struct xdpg_lb_addr_key key = {};
	addr_copy(key.addr, flow->dst);
	key.family = flow->family;
	return bpf_map_lookup_elem(&xdpg_lb_vaddrs, &key) != NULL;
}

/* ---- connection table --------------------------------------------------- */

static __always_inline void flow4_key(union xdpg_lb_flow4_words *k, const struct xdpg_lb_flow *flow)
{
	k->w[0] = (__u64)flow->src[0] | ((__u64)flow->dst[0] << 32);
	k->w[1] = (__u64)flow->sport | ((__u64)flow->dport << 16) | ((__u64)flow->proto << 32);
}

/* A connection entry as two words, backend | gen << 32 and last_seen |
 * hash << 32: written whole, and the first read whole, so a reader on
 * another CPU never pairs one backend with another's generation. */
union xdpg_lb_conn_words {
	struct xdpg_lb_conn c;
	__u64 w[2];
};

/* Where a flow's IPv4 connection entry is or goes: its key words and its
 * two lines. The lines' addresses depend on the key alone, so the CPU
 * fetches both at once: a hit costs one memory round trip however large
 * the table (the kernel LRU hash took two dependent ones, its bucket and
 * then the element). The lines are placed by the flow-hash seed too: where
 * clients could aim many flows at one line to push a victim's entry out,
 * give the LB a secret seed. src/lb/conntrack.rs mirrors the placement. */
struct xdpg_lb_ct4_probe {
	__u64 k0, k1;
	__u32 at[2];
	struct xdpg_lb_ct4_line *line[2];
};

/* The two lines of a key: a multiplicative hash of its words and the seed,
 * remixed for the second line, which is never the first. */
static __always_inline void ct4_lines(struct xdpg_lb_config *cfg, __u64 k0, __u64 k1, __u32 *a, __u32 *b)
{
	__u64 h = (k0 ^ (k1 * 0xC2B2AE3D27D4EB4Full) ^ cfg->hash_seed) * 0x9E3779B97F4A7C15ull;
	__u32 mask = cfg->ct4_mask;
	*a = (__u32)(h >> 32) & mask;
	h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull;
	*b = (__u32)(h >> 32) & mask;
	if (*b == *a)
		*b ^= 1;
}

static __always_inline int ct4_probe(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow,
				     struct xdpg_lb_ct4_probe *p)
{
	union xdpg_lb_flow4_words k;
	flow4_key(&k, flow);
	p->k0 = k.w[0];
	p->k1 = k.w[1];
	ct4_lines(cfg, p->k0, p->k1, &p->at[0], &p->at[1]);
	p->line[0] = bpf_map_lookup_elem(&xdpg_lb_conns4, &p->at[0]);
	p->line[1] = bpf_map_lookup_elem(&xdpg_lb_conns4, &p->at[1]);
	return p->line[0] && p->line[1];
}

#define XDPG_CT4_MATCH(l, i)                                          \
	if (l->slot[i].key[0] == p->k0 && l->slot[i].key[1] == p->k1) \
		return &l->slot[i].conn;

static __always_inline struct xdpg_lb_conn *ct4_find(struct xdpg_lb_ct4_probe *p)
{
	struct xdpg_lb_ct4_line *l0 = p->line[0], *l1 = p->line[1];
	XDPG_CT4_MATCH(l0, 0)
	XDPG_CT4_MATCH(l0, 1)
	XDPG_CT4_MATCH(l1, 0)
	XDPG_CT4_MATCH(l1, 1)
	return NULL;
}

/* Writes an entry into a slot. The key's first word is cleared first and
 * written last, so a reader on another CPU sees the old flow, no flow, or
 * the new flow whole (stores are seen in order on x86; elsewhere a torn
 * read can pair a key with another flow's entry for the length of a
 * store). */
static __always_inline void ct4_store(struct xdpg_lb_ct4_slot *s, __u64 k0, __u64 k1, __u64 w0, __u64 w1)
{
	union xdpg_lb_conn_words *w = (union xdpg_lb_conn_words *)&s->conn;
	*(volatile __u64 *)&s->key[0] = 0;
	*(volatile __u64 *)&w->w[0] = w0;
	*(volatile __u64 *)&w->w[1] = w1;
	*(volatile __u64 *)&s->key[1] = k1;
	*(volatile __u64 *)&s->key[0] = k0;
}

/* How much a slot is worth taking: an empty one in an empty line most,
 * then an empty one beside an entry (so new flows spread over both lines,
 * and a line fills only when its partner is full too), else the one idle
 * longest. */
static __always_inline __u32 ct4_worth(struct xdpg_lb_ct4_slot *c, struct xdpg_lb_ct4_slot *other, __u32 now)
{
	if (!c->key[0])
		return other->key[0] ? 0xFFFFFFFEu : 0xFFFFFFFFu;
	return now - c->conn.last_seen;
}

#define XDPG_CT4_CONSIDER(l, i)                                                   \
	do {                                                                      \
		__u32 worth = ct4_worth(&(l)->slot[i], &(l)->slot[1 - (i)], now); \
		if (worth > best) {                                               \
			best = worth;                                             \
			s = &(l)->slot[i];                                        \
		}                                                                 \
	} while (0)

/* Moves the entry in slot s of line `here` to an empty slot of its other
 * line, if that has one (the entry is in both for a moment, which readers
 * do not mind). */
static __always_inline int ct4_move(struct xdpg_lb_config *cfg, struct xdpg_lb_ct4_slot *s, __u32 here)
{
	__u64 k0 = s->key[0], k1 = s->key[1];
	union xdpg_lb_conn_words *w = (union xdpg_lb_conn_words *)&s->conn;
	__u32 a, b;
	ct4_lines(cfg, k0, k1, &a, &b);
	__u32 there = a == here ? b : a;
	struct xdpg_lb_ct4_line *l = bpf_map_lookup_elem(&xdpg_lb_conns4, &there);
	if (!l)
		return 0;
	struct xdpg_lb_ct4_slot *d = &l->slot[0];
	if (d->key[0]) {
		d = &l->slot[1];
		if (d->key[0])
			return 0;
	}
	ct4_store(d, k0, k1, w->w[0], w->w[1]);
	return 1;
}

/* A new IPv4 entry (after a ct4_probe that found both lines): the slot of
 * its lines most worth taking. When all four are taken, their entries are
 * tried in turn for a move to their other line (a cuckoo step: one more
 * cold read each, on a path that 1 new flow in 110 takes while a table
 * fills to half load, the connections asked for); only if none can move is
 * the one idle longest replaced (2 new flows in 65,536 up to half load, 1
 * in 104 up to three quarters: src/lb/conntrack.rs). */
static __always_inline void ct4_insert(struct xdpg_lb_config *cfg, struct xdpg_lb_ct4_probe *p, __u64 w0, __u64 w1,
				       __u32 now)
{
	struct xdpg_lb_ct4_line *l0 = p->line[0], *l1 = p->line[1];
	struct xdpg_lb_ct4_slot *s = &l0->slot[0];
	__u32 best = ct4_worth(s, &l0->slot[1], now);
	XDPG_CT4_CONSIDER(l0, 1);
	XDPG_CT4_CONSIDER(l1, 0);
	XDPG_CT4_CONSIDER(l1, 1);
	if (best < 0xFFFFFFFEu) {
		if (ct4_move(cfg, &l0->slot[0], p->at[0]))
			s = &l0->slot[0];
		else if (ct4_move(cfg, &l0->slot[1], p->at[0]))
			s = &l0->slot[1];
		else if (ct4_move(cfg, &l1->slot[0], p->at[1]))
			s = &l1->slot[0];
		else if (ct4_move(cfg, &l1->slot[1], p->at[1]))
			s = &l1->slot[1];
	}
	ct4_store(s, p->k0, p->k1, w0, w1);
}

/* The IPv4 table's lookup and insert are calls of their own: inlined, the
 * registers they hold push lb_vip's frame past the 512 bytes of stack its
 * deepest call chain may use. */
static __attribute__((noinline)) struct xdpg_lb_conn *ct4_lookup(struct xdpg_lb_config *cfg,
								 const struct xdpg_lb_flow *flow)
{
	struct xdpg_lb_ct4_probe p;
	return ct4_probe(cfg, flow, &p) ? ct4_find(&p) : NULL;
}

static __attribute__((noinline)) void ct4_add(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow, __u64 w0,
					      __u64 w1)
{
	struct xdpg_lb_ct4_probe p;
	if (ct4_probe(cfg, flow, &p))
		ct4_insert(cfg, &p, w0, w1, (__u32)w1);
}

static __always_inline struct xdpg_lb_conn *conn_lookup(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow)
{
	if (flow->family == XDPG_LB_FAMILY_V4)
		return ct4_lookup(cfg, flow);
	return bpf_map_lookup_elem(&xdpg_lb_conns6, flow);
}

/* A new entry for a flow conn_lookup did not find (the IPv4 lines it read
 * are still in the cache: finding them again costs a few ns, keeping them
 * would cost stack the program does not have). */
static __always_inline void conn_insert(struct xdpg_lb_config *cfg, const struct xdpg_lb_flow *flow,
					union xdpg_lb_conn_words *fresh)
{
	if (flow->family == XDPG_LB_FAMILY_V4) {
		ct4_add(cfg, flow, fresh->w[0], fresh->w[1]);
		return;
	}
	bpf_map_update_elem(&xdpg_lb_conns6, flow, &fresh->c, BPF_ANY);
}

/* ---- backend selection -------------------------------------------------- */

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

#endif
