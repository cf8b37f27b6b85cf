// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark yardstick: one random dependent read per frame, in a table the
 * size of the filter's tables. Each frame reads bench_chase_tab at an index
 * mixed from its IPv4 source and the value the previous frame on this CPU
 * read (a pointer chase: the address of each read depends on the last
 * one, so no two reads overlap), then drops the frame. Its cost above a
 * bare drop in the live bench is one memory round trip in that harness,
 * which is what a lookup structure is measured against. Not used by the
 * library. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Random 64-bit words; user space sets max_entries (a power of two) and
 * fills them before loading the traffic. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} bench_chase_tab SEC(".maps");

/* Per CPU: slot 0 frames seen, slot 1 the last value read (the chain). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bench_chase_cnt SEC(".maps");

/* max_entries - 1 of bench_chase_tab, set by user space. */
volatile const __u32 bench_chase_mask = 0;

/* The same table cut into pieces of BENCH_CHASE_PIECE words, each its own
 * array map, behind an array of maps. An array map this small comes from
 * kmalloc, so bench_chase_direct's pieces lie in the kernel's direct map
 * (1 GiB or 2 MiB pages), where bench_chase_tab, like every larger or
 * mmapable map, is vmalloc'd in 4 KiB pages. bench_chase_vmalloc_pieces
 * reads the same pieces made mmapable, so vmalloc'd: it and
 * bench_chase_direct run the same instructions and differ only in the
 * pages the reads go through, the TLB's part of one random read. */
#define BENCH_CHASE_PIECE 2048

/* The pieces' template `piece` (its map flags `flags`) and the array of
 * maps `outer` holding them. */
#define CHASE_PIECES(piece, flags, outer)                 \
	struct piece {                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(max_entries, BENCH_CHASE_PIECE);   \
		__uint(map_flags, flags);                 \
		__type(key, __u32);                       \
		__type(value, __u64);                     \
	};                                                \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
		__uint(max_entries, 1);                   \
		__type(key, __u32);                       \
		__array(values, struct piece);            \
	} outer SEC(".maps")

CHASE_PIECES(bench_chase_piece, 0, bench_chase_pieces);
CHASE_PIECES(bench_chase_vpiece, BPF_F_MMAPABLE, bench_chase_vpieces);

/* The frame's source word (0 if neither IPv4 nor IPv6). */
static __always_inline __u32 chase_source(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	__u32 src = 0;

	struct ipv6hdr *ip6h = (void *)(eth + 1);

	if ((void *)(iph + 1) <= data_end && eth->h_proto == __constant_htons(ETH_P_IP))
		src = iph->saddr;
	/* IPv6: the source's last and first words (without a source term the
	 * chain would run a short cycle that stays in cache). */
	else if ((void *)(ip6h + 1) <= data_end && eth->h_proto == __constant_htons(ETH_P_IPV6))
		src = ip6h->saddr.in6_u.u6_addr32[3] ^ ip6h->saddr.in6_u.u6_addr32[0];
	return src;
}

/* The next index of the chain, and the per-CPU word that keeps it. */
static __always_inline __u64 *chase_step(struct xdp_md *ctx, __u32 *idx)
{
	__u32 zero = 0, one = 1;
	__u32 src = chase_source(ctx);
	__u64 *n = bpf_map_lookup_elem(&bench_chase_cnt, &zero);
	__u64 *last = bpf_map_lookup_elem(&bench_chase_cnt, &one);
	if (!n || !last)
		return 0;
	*n += 1;
	__u32 h = (src ^ (__u32)*last) * 0x9E3779B1u;
	*idx = (h ^ (h >> 15)) & bench_chase_mask;
	return last;
}

SEC("xdp")
int bench_chase(struct xdp_md *ctx)
{
	__u32 idx;
	__u64 *last = chase_step(ctx, &idx);
	if (!last)
		return XDP_DROP;
	__u64 *v = bpf_map_lookup_elem(&bench_chase_tab, &idx);
	if (v)
		*last = *v;
	return XDP_DROP;
}

/* One read in a table cut into pieces behind the array of maps `outer`. */
static __always_inline int chase_pieces(struct xdp_md *ctx, void *outer)
{
	__u32 idx;
	__u64 *last = chase_step(ctx, &idx);
	if (!last)
		return XDP_DROP;
	__u32 piece = idx / BENCH_CHASE_PIECE, word = idx % BENCH_CHASE_PIECE;
	void *map = bpf_map_lookup_elem(outer, &piece);
	if (!map)
		return XDP_DROP;
	__u64 *v = bpf_map_lookup_elem(map, &word);
	if (v)
		*last = *v;
	return XDP_DROP;
}

SEC("xdp")
int bench_chase_direct(struct xdp_md *ctx)
{
	return chase_pieces(ctx, &bench_chase_pieces);
}

SEC("xdp")
int bench_chase_vmalloc_pieces(struct xdp_md *ctx)
{
	return chase_pieces(ctx, &bench_chase_vpieces);
}
