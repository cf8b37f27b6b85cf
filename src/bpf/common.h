/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What every xdpguard program shares with user space, defined once:
 * the header at the start of each program's config value, and the counter
 * slot. src/core/layout.rs checks the same sizes and offsets in Rust, for
 * every program's copy of these types. */
#ifndef XDPG_COMMON_H
#define XDPG_COMMON_H

#include <linux/types.h>

/* The first member of every program's config value (its single-entry,
 * mmapped config map, which also marks a pin directory as that program's).
 * User space's core reads and writes it the same way for every program:
 * magic and layout_version to recognise and check pins, dirty and
 * generation to repair a crashed edit and to notice other processes'
 * edits. The data plane may read dirty and generation (the LB's VIP cache
 * does); only user space writes them. */
struct xdpg_header {
	__u32 magic;	      /* the program's XDPG_*MAGIC */
	__u32 layout_version; /* its XDPG_*LAYOUT_VERSION, bumped with any shared layout */
	__u32 dirty;	      /* set while user space edits; repaired on reopen */
	__u32 reserved;
	__u64 generation; /* bumped after every edit */
};

/* One counter slot: per CPU in the map, summed by user space. */
struct xdpg_counter {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct xdpg_header) == 24, "xdpg_header layout");
_Static_assert(__builtin_offsetof(struct xdpg_header, dirty) == 8, "dirty offset");
_Static_assert(__builtin_offsetof(struct xdpg_header, generation) == 16, "generation offset");
_Static_assert(sizeof(struct xdpg_counter) == 16, "xdpg_counter layout");

#endif
