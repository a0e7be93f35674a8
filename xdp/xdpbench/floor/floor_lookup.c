//go:build ignore

/* floor_lookup: parse, 40-byte 5-tuple key, one LRU-hash lookup (insert
 * on a miss), swap MACs, XDP_TX. */
#include "floor.h"

static __always_inline int lookup_tx(struct xdp_md *ctx)
{
	struct flow_key k;
	struct iphdr *ip;
	struct ethhdr *eth;
	volatile __be32 backend;

	if (parse_v4(ctx, &k, &ip) < 0)
		return XDP_PASS;
	backend = flow_lookup_or_insert(&k);
	(void)backend;
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	swap_macs(eth);
	return XDP_TX;
}

SEC("xdp")
int floor_lookup(struct xdp_md *ctx)
{
	return lookup_tx(ctx);
}

/* The same, with the map filled (2 x max_entries synthetic flows) on the
 * first packet. */
SEC("xdp")
int floor_lookup_full(struct xdp_md *ctx)
{
	prefill_once();
	return lookup_tx(ctx);
}
