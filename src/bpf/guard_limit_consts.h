/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants of the guard's rate limits and timed blocks (guard_limit.h).
 * Shared with Rust through build.rs; checked in src/filter/guard/limits.rs. */
#ifndef XDPG_GUARD_LIMIT_CONSTS_H
#define XDPG_GUARD_LIMIT_CONSTS_H

/* Layout of the limit maps (guard_limit_structs.h), in their config. */
#define XDPG_LIMIT_LAYOUT_VERSION 2

/* The count-min sketch, cache-blocked: a key's XDPG_RL_ROWS counters lie in
 * one 64-byte block of 16 (row i: one of slots 4i..4i+3), so counting a key
 * costs one cache miss rather than one per row. XDPG_RL_BLOCKS blocks per
 * CPU, in chunks of XDPG_RL_CHUNK_BLOCKS (one per-CPU array value of 32 KiB,
 * the most a per-CPU value can hold). A counter is a window tag (high 8
 * bits: the window number) and a count (low 24 bits): a counter last
 * written in another window reads as 0, so the sketch empties itself
 * window by window. Two keys share all four counters only when they share
 * a block (1 in 4,096) and then each row's slot (1 in 4 each). */
#define XDPG_RL_ROWS 4
#define XDPG_RL_BLOCK_SLOTS 16
#define XDPG_RL_BLOCKS 4096 /* a power of two: 256 KiB per CPU */
#define XDPG_RL_CHUNK_BLOCKS 512
#define XDPG_RL_CHUNKS 8    /* XDPG_RL_BLOCKS / XDPG_RL_CHUNK_BLOCKS */
#define XDPG_RL_WIDTH 16384 /* counters per row, all blocks */
#define XDPG_RL_TAG_SHIFT 24
#define XDPG_RL_COUNT_MASK 0xFFFFFF
/* Default sketch window (config window_ns = 0): 100 ms. */
#define XDPG_RL_WINDOW_NS 100000000
/* Default cap (config promote_max = 0) on new exact buckets a CPU makes in
 * one window: a spoofed flood that saturates the sketch cannot churn the
 * bucket table faster than this. */
#define XDPG_RL_PROMOTE_MAX 1024
/* Exact per-key buckets (an LRU hash). */
#define XDPG_RL_BUCKETS 65536
/* Token-bucket time is kept in 1/16 ns (2^60 ns: 36 years of uptime), so a
 * byte's cost stays exact enough at high rates. */
#define XDPG_RL_TIME_SHIFT 4

/* Timed blocks: an LPM trie of prefixes with an expiry. Keys carry a 32-bit
 * tag (1 for IPv6, 0 for IPv4) before the address, like the named sets.
 * The default capacity; FilterBuilder::max_timed_blocks sets it at load. */
#define XDPG_TB_MAX 65536
#define XDPG_TB_TAG_BITS 32
/* xdpg_tblock.rule for an entry user space added. */
#define XDPG_TB_BY_USER 0xFFFFFFFF
/* xdpg_tblock.rule for an entry a rule since removed made (user space
 * relabels them before the rule's id is given to a new rule). */
#define XDPG_TB_BY_REMOVED 0xFFFFFFFE

#endif
