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

#endif
