/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Sampled drop events: the filter (list drops and would-drops) and its
 * guard stage (rule drops and would-drops, in decided()) put them in one
 * ring buffer, xdpg_events, while a reader holds a fresh lease, at most
 * `rate` a second per CPU (a token bucket) with a `burst`.
 *
 * What a drop pays while no one reads: xdpg_event() below, one load of
 * config->events_lease (the filter config's last word, in the cache line
 * the drop path has just read `monitor` from) and a branch not taken. No
 * helper call, no other map. Measured: BENCHMARKS.md, "Drop events".
 *
 * Rejected: a flag in a map of its own (a second lookup on every drop);
 * bpf_ringbuf_query(.., BPF_RB_AVAIL_DATA) or the ring's consumer position
 * to guess whether anyone reads (a helper call per drop, and a ring nobody
 * drains only says "full", not "no reader"); a perf event array (per-CPU
 * buffers, a copy through the helper for every event, and no way to know
 * a reader is gone). The lease needs a reader that refreshes it (the Rust
 * EventReader does on every poll); a reader killed with SIGKILL stops
 * production within the lease.
 *
 * Needs the ring buffer (Linux 5.8); the filter's own floor is higher. */
#ifndef XDPG_FILTER_EVENTS_H
#define XDPG_FILTER_EVENTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "filter_structs.h"
#include "filter_events_consts.h"
#include "filter_events_structs.h"

/* The events, shared by the filter and its guard stage. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, XDPG_EVENT_RING_BYTES);
} xdpg_events SEC(".maps");

/* Rate and burst, one entry, mmapped by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xdpg_events_config);
} xdpg_ev_cfg SEC(".maps");

/* Each CPU's token bucket and event counts. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpg_event_cpu);
} xdpg_ev_cpu SEC(".maps");

/* A refill after a long quiet time is cut at this many ns (1,000 s), so
 * elapsed x rate fits in 64 bits for every accepted rate. */
#define XDPG_EVENT_MAX_ELAPSED 1000000000000ull

/* Copies n bytes at `off` of the frame into the event, when the captured
 * length has bit n set (the chunks add up to cap, largest first). The
 * bound on `off` is for the verifier. Word copies: the frame and the ring
 * need no alignment for the x86-64 and arm64 JITs (the kernel only asks
 * for it where unaligned loads are slow, and there such a load is the
 * same slow load a byte copy would make). */
#define XDPG_EVENT_COPY(n, T)                                                       \
	if (cap & (n)) {                                                            \
		if (off > XDPG_EVENT_SNAP_LEN - (n) || data + off + (n) > data_end) \
			goto copied;                                                \
		for (int i = 0; i < (n) / (int)sizeof(T); i++)                      \
			((T *)(e->bytes + off))[i] = ((T *)(data + off))[i];        \
		off += (n);                                                         \
	}

#ifndef XDPG_EVENTS_OFF
/* Copies the frame's first bytes into the event; returns how many. A
 * function of its own (not inlined) so struct xdpg_drop_event is in the
 * object's BTF, where the Rust skeleton's type comes from. */
static __noinline __u32 xdpg_event_copy(struct xdp_md *ctx, struct xdpg_drop_event *e)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	__u32 cap = len < XDPG_EVENT_SNAP_LEN ? len : XDPG_EVENT_SNAP_LEN;
	__u32 off = 0;
	XDPG_EVENT_COPY(128, __u64)
	XDPG_EVENT_COPY(64, __u64)
	XDPG_EVENT_COPY(32, __u64)
	XDPG_EVENT_COPY(16, __u64)
	XDPG_EVENT_COPY(8, __u64)
	XDPG_EVENT_COPY(4, __u32)
	XDPG_EVENT_COPY(2, __u16)
	XDPG_EVENT_COPY(1, __u8)
copied:
	return off;
}

/* The cold path: a lease is set. Checks it, takes a token, sends the event. */
static __noinline int xdpg_event_send(struct xdp_md *ctx, struct xdpg_filter_config *cfg, __u32 reason, __u32 rule)
{
	__u32 lease = *(volatile __u32 *)&cfg->events_lease;
	__u64 now = bpf_ktime_get_ns();
	if ((__s32)((__u32)(now >> XDPG_EVENT_LEASE_SHIFT) - lease) > 0) {
		/* The reader stopped refreshing: no more helper calls until it
		 * comes back. A plain store, not a compare-and-swap (which needs
		 * clang -mcpu=v3 for every program): a lease written between the
		 * load above and this store (the reader refreshing, or a new
		 * reader taking the word over) is lost until that reader's next
		 * refresh, at most half a lease later, which writes it again
		 * (src/filter/events/mod.rs: a cleared word is anyone's). */
		*(volatile __u32 *)&cfg->events_lease = 0;
		return 0;
	}
	__u32 zero = 0;
	struct xdpg_events_config *ec = bpf_map_lookup_elem(&xdpg_ev_cfg, &zero);
	struct xdpg_event_cpu *c = bpf_map_lookup_elem(&xdpg_ev_cpu, &zero);
	if (!ec || !c)
		return 0;
	__u64 elapsed = now - c->last_ns;
	if (elapsed > XDPG_EVENT_MAX_ELAPSED)
		elapsed = XDPG_EVENT_MAX_ELAPSED;
	__u64 full = (__u64)ec->burst * XDPG_EVENT_TOKEN;
	__u64 tokens = c->tokens + elapsed * ec->rate;
	if (tokens > full)
		tokens = full;
	c->last_ns = now;
	if (tokens < XDPG_EVENT_TOKEN) {
		c->tokens = tokens;
		c->limited++;
		return 0;
	}
	c->tokens = tokens - XDPG_EVENT_TOKEN;

	struct xdpg_drop_event *e = bpf_ringbuf_reserve(&xdpg_events, sizeof(*e), 0);
	if (!e) {
		c->lost++;
		return 0;
	}
	e->time_ns = now;
	e->reason = reason;
	e->rule = rule;
	e->ifindex = ctx->ingress_ifindex;
	e->rx_queue = ctx->rx_queue_index;
	e->len = (__u32)((long)ctx->data_end - (long)ctx->data);
	e->cap_len = xdpg_event_copy(ctx, e);
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	c->sent++;
	return 1;
}
#endif

/* A drop or would-drop decision: an event while a reader holds a lease.
 * With no lease, one load and a branch not taken. XDPG_EVENTS_OFF is for
 * the benches only (benches/bpf/bench_filter_noev.bpf.c: this filter
 * without the hook, the "before" of the A/B). */
static __always_inline void xdpg_event(struct xdp_md *ctx, struct xdpg_filter_config *cfg, __u32 reason, __u32 rule)
{
#ifndef XDPG_EVENTS_OFF
	if (*(volatile __u32 *)&cfg->events_lease)
		xdpg_event_send(ctx, cfg, reason, rule);
#endif
}

#endif
