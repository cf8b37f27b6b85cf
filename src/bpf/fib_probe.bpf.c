// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdpg_fib_probe: the load balancer's route lookup, asked from user space.
 * The LB's health check (src/lb/route_probe.rs) runs it through
 * BPF_PROG_TEST_RUN as if received on each interface the LB receives on,
 * so it gets the answer the data plane gets there: bpf_fib_lookup with
 * the flags lb_nexthop.h passes (none: an input lookup from that
 * interface, so `ip rule iif` policy routing and a VRF enslaving it
 * count, as do the interface's forwarding setting and the route types).
 * An rtnetlink output lookup sees none of the first two. Never attached;
 * no maps; loaded by the check and closed with it.
 *
 * The frame is XDPG_FIB_PROBE_LEN bytes (fib_probe_consts.h): the
 * helper's return code, then the struct bpf_fib_lookup that goes in as
 * the question and comes out as the answer. Returns XDP_PASS (the code
 * is in the frame: a return value of 3 is XDP_TX, which the kernel may
 * act on for a bond's port). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fib_probe_consts.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

_Static_assert(sizeof(struct bpf_fib_lookup) == 64, "the probe frame holds a 64-byte bpf_fib_lookup");
_Static_assert(XDPG_FIB_PROBE_FIB_OFF >= XDPG_FIB_PROBE_RC_OFF + 4 &&
		       XDPG_FIB_PROBE_LEN == XDPG_FIB_PROBE_FIB_OFF + sizeof(struct bpf_fib_lookup),
	       "the probe frame's layout");

SEC("xdp")
int xdpg_fib_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + XDPG_FIB_PROBE_LEN > data_end)
		return XDP_ABORTED;
	struct bpf_fib_lookup fib;
	__builtin_memcpy(&fib, data + XDPG_FIB_PROBE_FIB_OFF, sizeof(fib));
	__s32 rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	__builtin_memcpy(data + XDPG_FIB_PROBE_FIB_OFF, &fib, sizeof(fib));
	*(__s32 *)(data + XDPG_FIB_PROBE_RC_OFF) = rc;
	return XDP_PASS;
}
