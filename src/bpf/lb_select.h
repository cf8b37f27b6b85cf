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
