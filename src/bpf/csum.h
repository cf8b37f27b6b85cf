/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Internet checksums (RFC 1071) and their incremental updates (RFC 1624).
 * One's-complement sums do not depend on byte order, so values are summed
 * exactly as they sit in the packet (network order, loaded natively). */
#ifndef XDPG_CSUM_H
#define XDPG_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

/* Folds a 32-bit running sum to 16 bits, without complementing. */
static __always_inline __u16 xdpg_csum_fold(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)sum;
}

/* Adds a 32-bit word to a running sum as two 16-bit halves. */
static __always_inline __u32 xdpg_csum_add32(__u32 sum, __u32 word)
{
	return sum + (word & 0xFFFF) + (word >> 16);
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). Start from the old checksum,
 * then add (~old, new) pairs, then finish. */
static __always_inline __u32 xdpg_csum_start(__u16 check)
{
	return (__u16)~check;
}

static __always_inline __u32 xdpg_csum_replace32(__u32 sum, __u32 from, __u32 to)
{
	return xdpg_csum_add32(xdpg_csum_add32(sum, ~from), to);
}

static __always_inline __u32 xdpg_csum_replace16(__u32 sum, __u16 from, __u16 to)
{
	return sum + (__u16)~from + to;
}

static __always_inline __u16 xdpg_csum_finish(__u32 sum)
{
	return (__u16)~xdpg_csum_fold(sum);
}

/* Folds a sum of 32-bit words (at most a few: it must fit in 34 bits) to
 * the 16-bit one's-complement sum, without complementing. Summing 32-bit
 * words straight from registers is how the hot path checksums a header it
 * builds, instead of reading fresh narrow stores back 16 bits at a time
 * (such reads cannot be forwarded from the store buffer and stall). */
static __always_inline __u16 xdpg_csum_fold_words(__u64 sum)
{
	sum = (sum & 0xFFFFFFFF) + (sum >> 32);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)sum;
}

/* The checksum of a 20-byte IPv4 header (its check field must be 0). */
static __always_inline __u16 xdpg_ipv4_hdr_csum(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return (__u16)~xdpg_csum_fold(sum);
}

/* Writes a fresh 20-byte IPv4 header (no options, id 0) and its checksum:
 * the headers the programs make themselves (the LB's ICMP answers, the SYN
 * guard's SYN-ACKs). `tot_len` in host order; the rest as they go on the
 * wire. The caller has checked the 20 bytes are in the packet. */
static __always_inline void xdpg_ipv4_hdr_write(struct iphdr *iph, __u8 tos, __u16 tot_len, __be16 frag_off, __u8 ttl,
						__u8 protocol, __be32 saddr, __be32 daddr)
{
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = tos;
	iph->tot_len = bpf_htons(tot_len);
	iph->id = 0;
	iph->frag_off = frag_off;
	iph->ttl = ttl;
	iph->protocol = protocol;
	iph->check = 0;
	iph->saddr = saddr;
	iph->daddr = daddr;
	iph->check = xdpg_ipv4_hdr_csum(iph);
}

#endif
