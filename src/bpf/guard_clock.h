/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The guard stage's clock, one for every stage that keeps time (rate
 * limits, blocks that expire, the SYN guard): CLOCK_MONOTONIC in
 * nanoseconds (bpf_ktime_get_ns, the clock user space reads as
 * CLOCK_MONOTONIC, so deadlines written by either side compare), plus the
 * config's clock_offset_ns, which only tests move (Filter::advance_clock):
 * verdict tests step time without sleeping.
 *
 * A precise clock read costs ~30 ns (the LB measured it, lb_structs.h);
 * call guard_now() once per packet, only on paths that need time. */
#ifndef XDPG_GUARD_CLOCK_H
#define XDPG_GUARD_CLOCK_H

#include <bpf/bpf_helpers.h>
#include "guard_structs.h"

static __always_inline __u64 guard_now(const struct xdpg_guard_config *gcfg)
{
	return bpf_ktime_get_ns() + (__u64)gcfg->clock_offset_ns;
}

#endif
