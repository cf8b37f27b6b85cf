// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The filter exactly as src/bpf/filter.bpf.c, without its drop-event hook
 * (filter_events.h's xdpg_event() compiled out): the "before" of the drop
 * events' A/B in benches/per_packet.rs (section `events`), loaded over a
 * real filter's pinned maps so both programs decide on the same tables. */
#define XDPG_EVENTS_OFF 1
#include "filter.bpf.c"
