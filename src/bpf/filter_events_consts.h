/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the drop events (filter_events.h), shared with Rust through
 * build.rs (consts.rs) and checked in src/filter/events/layout.rs. */
#ifndef XDPG_FILTER_EVENTS_CONSTS_H
#define XDPG_FILTER_EVENTS_CONSTS_H

/* Bytes of each packet an event carries, from the frame's first byte. 128
 * holds every header the filter and its rules decide on, for any frame they
 * parse in practice: Ethernet (14) + two VLAN tags (8) + IPv6 (40) + a TCP
 * header with full options (60) = 122; IPv4 with options (60) + TCP (60)
 * fits too. An event is then 160 bytes (168 with the ring's header): ~1,560
 * events in the 256 KiB ring, and the copy (five 8-byte-word chunks at most)
 * stays small. A full-size snapshot (1,514) would make every event ten times
 * longer for payload bytes that decide nothing. */
#define XDPG_EVENT_SNAP_LEN 128

/* The ring buffer's size in bytes (a power of two, a multiple of the page
 * size): about 1,560 events between two reads of the reader. */
#define XDPG_EVENT_RING_BYTES 262144

/* The reader's lease (xdpg_filter_config.events_lease): a deadline in units
 * of 2^20 ns (~1.05 ms) of CLOCK_MONOTONIC (bpf_ktime_get_ns), 32 bits,
 * compared with wrap-around (a lease is far shorter than the 26 days half
 * the range covers). 0 means no reader. */
#define XDPG_EVENT_LEASE_SHIFT 20

/* A token is this many units of the per-CPU bucket (xdpg_event_cpu.tokens):
 * refilled by rate x elapsed nanoseconds, so no division on the data path. */
#define XDPG_EVENT_TOKEN 1000000000

/* Defaults, per CPU: events per second and the burst above it. */
#define XDPG_EVENT_DEFAULT_RATE 100
#define XDPG_EVENT_DEFAULT_BURST 100
/* The largest rate and burst accepted (tokens x XDPG_EVENT_TOKEN fit in 64 bits). */
#define XDPG_EVENT_MAX_RATE 1000000

#endif
