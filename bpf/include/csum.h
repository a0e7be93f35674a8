/* Internet checksum helpers. Sums are ones-complement sums of 32-bit words
 * loaded in memory order, accumulated in 64 bits and folded at the end;
 * that equals the RFC 1071 16-bit sum, and storing the folded value back
 * in memory order gives the right bytes on either endianness. */
#ifndef WEIR_CSUM_H
#define WEIR_CSUM_H

#include "common.h"
#include "parse.h"

/* csum_fold folds a 64-bit accumulator and complements it: the value to
 * store in a checksum field. */
static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* csum_addr adds a 16-byte address. */
static __always_inline __u64 csum_addr(__u64 acc, const union addr *a)
{
	return acc + a->w[0] + a->w[1] + a->w[2] + a->w[3];
}

/* csum_replace_addr updates acc for old -> new (RFC 1624: ~m + m'). */
static __always_inline __u64 csum_replace_addr(__u64 acc, const union addr *old, const union addr *new)
{
	for (int i = 0; i < 4; i++)
		acc += (__u64)(__u32)~old->w[i] + new->w[i];
	return acc;
}

static __always_inline __u64 csum_replace32(__u64 acc, __u32 old, __u32 new)
{
	return acc + (__u32)~old + new;
}

static __always_inline __u64 csum_replace16(__u64 acc, __u16 old, __u16 new)
{
	return acc + (__u16)~old + new;
}

/* csum_words sums n 32-bit words (n a constant). */
static __always_inline __u64 csum_words(__u64 acc, const void *p, int n)
{
	const __u32 *w = p;

#pragma unroll
	for (int i = 0; i < n; i++)
		acc += w[i];
	return acc;
}

#endif
