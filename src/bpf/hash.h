/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Hashes computed both here and in Rust (src/core/hash.rs, src/filter/hash.rs);
 * the verdict tests fail if the two ever disagree. */
#ifndef XDPG_HASH_H
#define XDPG_HASH_H

#include <linux/types.h>

/* A murmur3-style finaliser: cheap, and every input bit moves every output bit. */
static __always_inline __u32 xdpg_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	h ^= h >> 13;
	h *= 0xC2B2AE35u;
	h ^= h >> 16;
	return h;
}

/* Bucket of a v4 host (host byte order); the seed is random per filter so an
 * attacker who knows the list cannot aim lookups at one bucket chain. */
static __always_inline __u32 xdpg_v4_bucket_index(__u32 addr, __u32 seed, __u32 mask)
{
	return xdpg_mix32(addr ^ seed) & mask;
}

/* Hash of a masked v6 key (words in network order): its Bloom bit is the
 * low bits, its bucket comes from xdpg_mix32 of it. */
static __always_inline __u32 xdpg_v6_key_hash(__u32 len, const __u32 *w, __u32 seed)
{
	__u32 h = xdpg_mix32(seed ^ len ^ w[0]);
	h = xdpg_mix32(h ^ w[1]);
	return xdpg_mix32(h ^ w[2] ^ (w[3] * 0x9E3779B1u));
}

/* xdpg_mix32 undone: unmix32(xdpg_mix32(h)) == h. */
static __always_inline __u32 xdpg_unmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7ED1B41Du; /* 0xC2B2AE35's inverse mod 2^32 */
	h ^= (h >> 13) ^ (h >> 26);
	h *= 0xA5CB9243u; /* 0x85EBCA6B's inverse mod 2^32 */
	h ^= h >> 16;
	return h;
}

/* Hash of a /48 (its first two words in network order, the second masked)
 * in tables of XDPG_V6_ANCHOR_MURMUR (layouts 5-7): the home of the chain
 * holding that /48's anchored entries and its dense mark, xdpg_mix32 of it
 * its bucket. Those chains share the buckets with xdpg_v6_key_hash's; an
 * entry's kind keeps each walk to its own entries. */
static __always_inline __u32 xdpg_v6_anchor_hash(__u32 w0, __u32 w1_masked, __u32 seed)
{
	return xdpg_mix32(xdpg_mix32(seed ^ 0xA5C30000u ^ w0) ^ w1_masked);
}

/* The odd 64-bit multiplier of XDPG_V6_ANCHOR_MULSHIFT's hash: the
 * filter's seed spread over 64 bits by one multiply. It depends on nothing
 * from the packet, so it is ready before the address is. */
static __always_inline __u64 xdpg_v6_anchor_mult(__u32 seed)
{
	return ((((__u64)seed << 32) | seed) ^ 0xD6E8FEB86659FD93ULL) * 0x9E3779B97F4A7C15ULL | 1;
}

/* A /48's chain in tables of XDPG_V6_ANCHOR_MULSHIFT (its first two words
 * in network order, the second masked to its first 16 bits, so the key is
 * below 2^48): xdpg_mix32 of its chain hash, as for every other chain, so
 * the low bits are its home bucket and bits 22-31 its home slot; the chain
 * hash user space files it under, and its Bloom bit, is xdpg_unmix32 of
 * it. Multiply-shift under a secret odd multiplier: any bucket index
 * (product bits 32-51) is the top bits of the product's low 52, so the
 * hash is universal (an attacker who knows the list cannot aim it at one
 * chain without the seed), and one multiply (about 4 cycles) stands
 * between the address and the bucket, where the murmur hash put three
 * dependent xdpg_mix32 (about 36). */
static __always_inline __u32 xdpg_v6_anchor_mixed(__u32 w0, __u32 w1_masked, __u64 mult)
{
	return (__u32)(((((__u64)w1_masked) << 32 | w0) * mult) >> 32);
}

/* The slot of its home bucket, of `slots`, a chained-bucket table puts a key
 * in when that slot is free (`mixed` is xdpg_mix32 of the key's chain hash;
 * bits 22-31, above any bucket index, scaled to the slots), so a lookup can
 * judge that one slot before walking the chain (the filter's v6 entries).
 * A macro so the values below are checked at compile time; src/filter/
 * hash.rs checks the same ones. */
#define XDPG_HOME_SLOT(mixed, slots) (((((__u32)(mixed)) >> 22) * (slots)) >> 10)
_Static_assert(XDPG_HOME_SLOT(0, 3) == 0 && XDPG_HOME_SLOT(0x557FFFFFu, 3) == 0, "home slot 0 of 3");
_Static_assert(XDPG_HOME_SLOT(0x55800000u, 3) == 1 && XDPG_HOME_SLOT(0xAABFFFFFu, 3) == 1, "home slot 1 of 3");
_Static_assert(XDPG_HOME_SLOT(0xAAC00000u, 3) == 2 && XDPG_HOME_SLOT(0xFFFFFFFFu, 3) == 2, "home slot 2 of 3");

#endif
