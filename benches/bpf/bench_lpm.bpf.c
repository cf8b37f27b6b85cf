// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark baseline, the approach most XDP blocklist tutorials use: one
 * kernel LPM trie per family keyed by source address, drop on a hit. Not used
 * by the library; the benches compare xdpguard's filter against it. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* What to return for a source in neither trie: XDP_PASS normally; the live
 * bench sets XDP_DROP so the rate measures the lookup, not the stack. */
volatile const __u32 bench_lpm_pass_action = XDP_PASS;

struct bench_lpm_v4_key {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

struct bench_lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* IPv4 blocklist; user space sets max_entries before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bench_lpm_v4_key);
	__type(value, __u8);
} bench_lpm_v4 SEC(".maps");

/* IPv6 blocklist; user space sets max_entries before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bench_lpm_v6_key);
	__type(value, __u8);
} bench_lpm_v6 SEC(".maps");

/* Per CPU: slot 0 frames passed, slot 1 frames dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bench_lpm_cnt SEC(".maps");

static __always_inline int verdict(int blocked)
{
	__u32 slot = blocked ? 1 : 0;
	__u64 *n = bpf_map_lookup_elem(&bench_lpm_cnt, &slot);

	if (n)
		*n += 1;
	return blocked ? XDP_DROP : bench_lpm_pass_action;
}

SEC("xdp")
int bench_lpm(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return verdict(0);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return verdict(0);
		struct bench_lpm_v4_key key = { .prefixlen = 32, .addr = iph->saddr };
		return verdict(bpf_map_lookup_elem(&bench_lpm_v4, &key) != NULL);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return verdict(0);
		struct bench_lpm_v6_key key = { .prefixlen = 128 };
		__builtin_memcpy(key.addr, &ip6h->saddr, sizeof(key.addr));
		return verdict(bpf_map_lookup_elem(&bench_lpm_v6, &key) != NULL);
	}
	return verdict(0);
}
