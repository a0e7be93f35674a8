//go:build ignore

/* floor_encap: floor_lookup plus IPIP encapsulation to the flow's
 * backend: adjust_head(-20), new Ethernet + outer IPv4 (protocol 4,
 * checksum computed), XDP_TX. */
#include "floor.h"

#define NODE_ADDR 0x0a000001 /* 10.0.0.1, the outer source */

static __always_inline __u16 ip_csum(const struct iphdr *h)
{
	const __u16 *w = (const __u16 *)h;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*h) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline int encap_tx(struct xdp_md *ctx)
{
	struct flow_key k;
	struct iphdr *ip, outer;
	struct ethhdr *eth, neweth;
	void *data, *data_end;
	__be32 backend;
	__u16 inner_len;

	if (parse_v4(ctx, &k, &ip) < 0)
		return XDP_PASS;

	/* Keep what the new headers need before the packet moves. */
	eth = (void *)ip - sizeof(*eth);
	inner_len = bpf_ntohs(ip->tot_len);
	__builtin_memcpy(neweth.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(neweth.h_source, eth->h_dest, ETH_ALEN);
	neweth.h_proto = bpf_htons(ETH_P_IP);

	backend = flow_lookup_or_insert(&k);

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_ABORTED;

	outer.version = 4;
	outer.ihl = 5;
	outer.tos = 0;
	outer.tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer.id = 0;
	outer.frag_off = bpf_htons(0x4000); /* DF */
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.check = 0;
	outer.saddr = bpf_htonl(NODE_ADDR);
	outer.daddr = backend;
	outer.check = ip_csum(&outer);

	__builtin_memcpy(eth, &neweth, sizeof(neweth));
	__builtin_memcpy(ip, &outer, sizeof(outer));
	return XDP_TX;
}

SEC("xdp")
int floor_encap(struct xdp_md *ctx)
{
	return encap_tx(ctx);
}

/* The same, with the map filled (2 x max_entries synthetic flows) on the
 * first packet. */
SEC("xdp")
int floor_encap_full(struct xdp_md *ctx)
{
	prefill_once();
	return encap_tx(ctx);
}
