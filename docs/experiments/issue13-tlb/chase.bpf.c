// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Issue 13 experiment (eighth session): does the page size behind a table
 * change what one random read in it costs at repeat=1? Each program reads
 * one 64-byte line per call at an index mixed from the frame's IPv4 source
 * and the previous read (a pointer chase), then drops:
 *   c_flat8   an 8 MiB array (BPF_F_MMAPABLE: vmalloc_user, 4 KiB pages),
 *             the size of the filter's IPv4 line array at 1M prefixes;
 *   c_flat32  a 32 MiB one (IPv6's bucket table at 1M);
 *   c_sparse  8 MiB of lines spread over the 32 MiB one (one line in four):
 *             the data of c_flat8 over the pages of c_flat32;
 *   c_mim     32 MiB as 2048 arrays of 256 lines (16 KiB + header, under
 *             the 32 KiB bpf_map_area_alloc serves from kmalloc), behind an
 *             array of maps: the kernel's direct map, 1 GiB pages here.
 * Run by chase.c; results in BENCHMARKS.md, "Issue 13, eighth session". */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct line {
	__u64 w[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct line);
} flat8 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 19);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct line);
} flat32 SEC(".maps");

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct line);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps");

/* The chain: the last value read, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last SEC(".maps");

/* The next index's hash, or 0 with *chain NULL for a frame too short. */
static __always_inline __u32 next_hash(struct xdp_md *ctx, __u64 **chain)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__u32 zero = 0;
	*chain = NULL;
	if ((void *)(iph + 1) > end)
		return 0;
	*chain = bpf_map_lookup_elem(&last, &zero);
	if (!*chain)
		return 0;
	__u32 h = (iph->saddr ^ (__u32)**chain) * 0x9E3779B1u;
	h ^= h >> 15;
	h *= 0x85EBCA6Bu;
	return h ^ (h >> 13);
}

#define CHASE(name, map, index)                                        \
	SEC("xdp") int name(struct xdp_md *ctx)                        \
	{                                                              \
		__u64 *chain;                                          \
		__u32 h = next_hash(ctx, &chain);                      \
		if (!chain)                                            \
			return XDP_PASS;                               \
		__u32 i = (index);                                     \
		struct line *l = bpf_map_lookup_elem(&map, &i);        \
		if (l)                                                 \
			*chain = l->w[0];                              \
		return XDP_DROP;                                       \
	}

SEC("xdp") int drop(struct xdp_md *ctx)
{
	__u64 *chain;
	__u32 h = next_hash(ctx, &chain);
	if (chain)
		*chain = h;
	return XDP_DROP;
}

CHASE(c_flat8, flat8, h & ((1 << 17) - 1))
CHASE(c_flat32, flat32, h & ((1 << 19) - 1))
CHASE(c_sparse, flat32, (h & ((1 << 17) - 1)) << 2)

SEC("xdp") int c_mim(struct xdp_md *ctx)
{
	__u64 *chain;
	__u32 h = next_hash(ctx, &chain);
	if (!chain)
		return XDP_PASS;
	__u32 o = (h >> 8) & 2047, i = h & 255;
	void *in = bpf_map_lookup_elem(&outer, &o);
	if (!in)
		return XDP_PASS;
	struct line *l = bpf_map_lookup_elem(in, &i);
	if (l)
		*chain = l->w[0];
	return XDP_DROP;
}
