// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark ceiling: count the frame, drop it. Also the "sink" stage that
 * other benchmarked programs hand their passed frames to, so a bench measures
 * the program and not the kernel stack behind it. Not used by the library. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Frames seen, per CPU (one slot). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_drop_cnt SEC(".maps");

SEC("xdp")
int bench_drop(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&bench_drop_cnt, &zero);

	if (n)
		*n += 1;
	return XDP_DROP;
}
