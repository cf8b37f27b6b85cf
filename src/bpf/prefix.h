/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address prefixes, for the filter (the v6 table's keys) and its guard stage
 * (rules' prefixes): one 32-bit word of an address in network byte order. */
#ifndef XDPG_PREFIX_H
#define XDPG_PREFIX_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* The word with all but its first `bits` bits cleared (`bits` may be out
 * of 0..32: the word of a longer prefix is kept whole, of a shorter one
 * cleared). */
static __always_inline __u32 mask_word(__u32 word, int bits)
{
	if (bits >= 32)
		return word;
	if (bits <= 0)
		return 0;
	return word & bpf_htonl(~0u << (32 - bits));
}

/* `addr` with all but its first `len` bits cleared, into `out`: word 0
 * only for IPv4 (`v6` 0; words 1-3 of `out` are left as they are), all
 * four for IPv6. The guard's limit and timed-block keys use it; the
 * filter's v6 loop keeps its four mask_word() lines: through this helper
 * clang allocated that hot loop's registers differently (one instruction
 * more), not measured yet. */
static __always_inline void mask_prefix(__u32 *out, const __u32 *addr, int len, int v6)
{
	out[0] = mask_word(addr[0], len);
	if (v6) {
		out[1] = mask_word(addr[1], len - 32);
		out[2] = mask_word(addr[2], len - 64);
		out[3] = mask_word(addr[3], len - 96);
	}
}

#endif
