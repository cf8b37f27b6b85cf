/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The route probe's frame (fib_probe.bpf.c), shared with Rust through
 * build.rs (crate::core::layout::consts); only integer literals. */
#ifndef XDPG_FIB_PROBE_CONSTS_H
#define XDPG_FIB_PROBE_CONSTS_H

/* The frame: the helper's return code (a signed 32-bit word, host order)
 * at XDPG_FIB_PROBE_RC_OFF, then one struct bpf_fib_lookup (linux/bpf.h,
 * 64 bytes) at XDPG_FIB_PROBE_FIB_OFF, the question going in and the
 * answer coming out. XDPG_FIB_PROBE_LEN bytes in all (at least an Ethernet
 * header's 14, which BPF_PROG_TEST_RUN wants). */
#define XDPG_FIB_PROBE_RC_OFF 0
#define XDPG_FIB_PROBE_FIB_OFF 8
#define XDPG_FIB_PROBE_LEN 72

#endif
