/* Flow hashing and Maglev backend selection. The hash is fixed (no
 * per-node seed) so every load balancer node maps a flow to the same
 * Maglev slot, and an ECMP reshuffle between nodes keeps flows on their
 * backends. */
#ifndef WEIR_MAGLEV_H
#define WEIR_MAGLEV_H

#include "common.h"
#include "maps.h"
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

/* maglev_pick returns the backend ID in the service's table slot for hash,
 * or 0 when the service has no table. */
static __always_inline __u32 maglev_pick(const struct service_value *svc, __u32 hash)
{
	/* The live one of the service's two tables; table and size are read
	 * once each, as they change together. */
	__u32 key = weir_table_key(svc);
	__u32 size = svc->table_size;
	__u32 slot, *id;
	void *tbl;

	if (!size)
		return 0;
	tbl = bpf_map_lookup_elem(&weir_maglev, &key);
	if (!tbl)
		return 0;
	slot = hash % size;
	id = bpf_map_lookup_elem(tbl, &slot);
	return id ? *id : 0;
}

#endif
