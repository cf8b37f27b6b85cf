/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the decapsulator (xdpg_decap), shared with Rust through
 * build.rs (crate::core::layout::consts). Named XDPG_LB_DECAP_* as the
 * LB's backend side; only integer literals and enums. */
#ifndef XDPG_DECAP_CONSTS_H
#define XDPG_DECAP_CONSTS_H

/* Written into xdpg_decap_cfg so a pin directory can be recognised as a
 * decapsulator's, and bumped whenever its layout changes. */
#define XDPG_LB_DECAP_MAGIC 0x58474443u /* "XGDC" */
#define XDPG_LB_DECAP_LAYOUT_VERSION 1

/* The decapsulator's per-CPU counters. */
enum xdpg_decap_counter {
	XDPG_LB_DECAP_DONE = 0, /* outer header removed, inner packet passed */
	XDPG_LB_DECAP_PASSED,	/* not a tunnel packet for a local endpoint: passed */
	XDPG_LB_DECAP_COUNT,
};

#endif
