// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark baseline for the load balancer: return XDP_TX and nothing else,
 * so its BPF_PROG_TEST_RUN time is the fixed cost every XDP_TX program pays.
 * Not used by the library. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int bench_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}
