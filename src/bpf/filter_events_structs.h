/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The drop events' shared layouts, defined once: src/filter/events/layout.rs
 * asserts the same sizes and offsets on the Rust side. */
#ifndef XDPG_FILTER_EVENTS_STRUCTS_H
#define XDPG_FILTER_EVENTS_STRUCTS_H

#include <linux/types.h>
#include "filter_events_consts.h"

/* One sampled drop (or would-drop), as the ring buffer carries it. */
struct xdpg_drop_event {
	__u64 time_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 reason;	/* enum xdpg_filter_reason */
	__u32 rule;	/* the deciding rule's id (guard stage), else 0 */
	__u32 ifindex;	/* the receiving interface */
	__u32 rx_queue; /* its receive queue */
	__u32 len;	/* the frame's length */
	__u16 cap_len;	/* bytes of it in `bytes`: min(len, XDPG_EVENT_SNAP_LEN) */
	__u16 pad;
	__u8 bytes[XDPG_EVENT_SNAP_LEN]; /* the frame's first bytes */
};

/* The events' config, one entry, mmapped by user space; each field read on
 * its own (a change applies to the next refill). */
struct xdpg_events_config {
	__u32 rate;  /* events per second per CPU */
	__u32 burst; /* events a CPU may send at once after a quiet time */
};

/* Each CPU's token bucket and counts (a per-CPU array entry). */
struct xdpg_event_cpu {
	__u64 tokens;  /* XDPG_EVENT_TOKEN per event */
	__u64 last_ns; /* the last refill */
	__u64 sent;    /* events put in the ring */
	__u64 limited; /* drops the rate limit left out */
	__u64 lost;    /* events the ring had no room for (a slow reader) */
};

_Static_assert(sizeof(struct xdpg_drop_event) == 32 + XDPG_EVENT_SNAP_LEN, "xdpg_drop_event layout");
_Static_assert(__builtin_offsetof(struct xdpg_drop_event, cap_len) == 28, "cap_len offset");
_Static_assert(__builtin_offsetof(struct xdpg_drop_event, bytes) == 32, "bytes offset");
_Static_assert(sizeof(struct xdpg_events_config) == 8, "xdpg_events_config layout");
_Static_assert(sizeof(struct xdpg_event_cpu) == 40, "xdpg_event_cpu layout");
_Static_assert(XDPG_EVENT_SNAP_LEN == 128, "the copy in filter_events.h is written for 128 bytes");

#endif
