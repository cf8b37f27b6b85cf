// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark traffic generator, run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES: each run rewrites the source address of a
 * template UDP frame (Ethernet, IPv4 or IPv6, no VLAN) and sends it out with
 * XDP_TX. Sources come from a table user space fills in shuffled order and
 * that is walked in sequence, so the receiver's lookups land all over its
 * tables, as in a spoofed flood; or they are uniformly random. Not used by the
 * library. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* 4 or 6: the template frame's family. */
volatile const __u32 bench_gen_family = 4;
/* 1: ignore the table and draw every source uniformly at random. */
volatile const __u32 bench_gen_random = 0;
/* Entries of bench_gen_srcs in use (at least 1). */
volatile const __u32 bench_gen_table_len = 1;

/* 1: write bench_gen_hdr over the frame's first 48 bytes before each send.
 * Live-frames pages come back to the generator's page pool with whatever
 * the receiver wrote into them (the load balancer's rows rewrite and
 * encapsulate every frame and send it back), so those rows restore the
 * headers every time; the filter rows do not need it. */
volatile const __u32 bench_gen_restore = 0;
/* The template's first 48 bytes (Ethernet, IPv4, UDP and 6 payload bytes). */
volatile const __u64 bench_gen_hdr[6] = {};

/* One source address, network byte order; IPv4 uses words[0]. */
struct bench_gen_src {
	__u32 words[4];
};

/* The source table; user space sets max_entries and fills it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_gen_src);
} bench_gen_srcs SEC(".maps");

/* Per CPU: the next table index to send. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_gen_pos SEC(".maps");

/* Replaces n 16-bit words covered by a one's complement checksum (RFC 1624),
 * byte order agnostic because old and new are read the same way. */
static __always_inline __u16 csum_replace(__u16 check, const __u16 *old, const __u16 *new, int n)
{
	__u32 sum = (__u16)~check;

#pragma unroll
	for (int i = 0; i < n; i++) {
		sum += (__u16)~old[i];
		sum += new[i];
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline int next_source(struct bench_gen_src *src)
{
	if (bench_gen_random) {
		src->words[0] = bpf_get_prandom_u32();
		src->words[1] = bpf_get_prandom_u32();
		src->words[2] = bpf_get_prandom_u32();
		src->words[3] = bpf_get_prandom_u32();
		return 0;
	}
	__u32 zero = 0;
	__u32 *pos = bpf_map_lookup_elem(&bench_gen_pos, &zero);
	if (!pos)
		return -1;
	__u32 idx = *pos;
	if (idx >= bench_gen_table_len)
		idx = 0;
	*pos = idx + 1;
	struct bench_gen_src *entry = bpf_map_lookup_elem(&bench_gen_srcs, &idx);
	if (!entry)
		return -1;
	*src = *entry;
	return 0;
}

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bench_gen_src src;

	if (next_source(&src))
		return XDP_ABORTED;
	if (bench_gen_restore) {
		if (data + 48 > data_end)
			return XDP_ABORTED;
#pragma unroll
		for (int i = 0; i < 6; i++)
			((__u64 *)data)[i] = bench_gen_hdr[i];
	}
	if (bench_gen_family == 4) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return XDP_ABORTED;
		iph->check = csum_replace(iph->check, (__u16 *)&iph->saddr, (__u16 *)&src.words[0], 2);
		iph->saddr = src.words[0];
	} else {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		struct udphdr *udp = (void *)(ip6h + 1);
		if ((void *)(udp + 1) > data_end)
			return XDP_ABORTED;
		__u16 check = csum_replace(udp->check, (__u16 *)&ip6h->saddr, (__u16 *)src.words, 8);
		udp->check = check ? check : 0xffff;
		__builtin_memcpy(&ip6h->saddr, src.words, sizeof(src.words));
	}
	return XDP_TX;
}
