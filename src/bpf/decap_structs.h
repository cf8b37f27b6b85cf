/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every struct the decapsulator shares with user space, defined once.
 * src/lb/layout.rs asserts the same sizes on the Rust side. */
#ifndef XDPG_DECAP_STRUCTS_H
#define XDPG_DECAP_STRUCTS_H

#include <linux/types.h>
#include "common.h"
#include "decap_consts.h"

/* The decapsulator's config value (xdpg_decap_cfg): the common header
 * only, so its pins are recognised and checked like the others'. */
struct xdpg_decap_config {
	struct xdpg_header hdr; /* XDPG_LB_DECAP_MAGIC, XDPG_LB_DECAP_LAYOUT_VERSION */
};

/* Key of xdpg_decap_addr: a local address the decapsulator accepts
 * tunnels for (network byte order; IPv4 in addr[0], the rest zero). */
struct xdpg_decap_key {
	__u32 addr[4];
	__u8 family; /* XDPG_LB_FAMILY_* (lb_consts.h) */
	__u8 pad[3];
};

_Static_assert(sizeof(struct xdpg_decap_config) == 24, "xdpg_decap_config layout");
_Static_assert(sizeof(struct xdpg_decap_key) == 20, "xdpg_decap_key layout");

#endif
