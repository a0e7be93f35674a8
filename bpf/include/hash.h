/* Flow hashing. The hash is fixed (no per-node seed) so every load
 * balancer node maps a flow to the same Maglev slot, and an ECMP reshuffle
 * between nodes keeps flows on their backends. */
#ifndef WEIR_HASH_H
#define WEIR_HASH_H

#include "common.h"
#include "parse.h"

#define WEIR_HASH_SEED 0x77656972ULL /* "weir" */
#define WEIR_HASH_MUL 0x9e3779b97f4a7c15ULL

/* One round of a multiply-xorshift mix per 64-bit word, then a full
 * avalanche (the murmur3 finaliser): cheap, no tables, good spread. */
static __always_inline __u64 hash_step(__u64 h, __u64 w)
{
	h = (h ^ w) * WEIR_HASH_MUL;
	return h ^ (h >> 29);
}

static __always_inline __u32 hash_final(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)(h ^ (h >> 32));
}

/* flow_hash hashes the client packet's 5-tuple, or only its source address
 * when src_only is set (ClientIP affinity: every connection of a client
 * lands on the same slot). */
static __always_inline __u32 flow_hash(const struct pkt *p, int src_only)
{
	__u64 h = WEIR_HASH_SEED;

	h = hash_step(h, p->saddr.d[0]);
	h = hash_step(h, p->saddr.d[1]);
	if (!src_only) {
		h = hash_step(h, p->daddr.d[0]);
		h = hash_step(h, p->daddr.d[1]);
		h = hash_step(h, ((__u64)p->sport << 32) | ((__u64)p->dport << 16) | p->proto);
	}
	return hash_final(h);
}

#endif
