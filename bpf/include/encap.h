/* DSR encapsulation and decapsulation. The outer header's family follows
 * the backend's tunnel address: IPv4 outer (IPIP, or protocol 41 for an
 * IPv6 inner packet), IPv6 outer (next header 41, or 4 for IPv4 inner).
 * The outer source is derived from the client's address and port so the
 * receiving NIC's RSS spreads the flows. A VLAN tag is not kept on
 * encapsulated packets: they leave on the FIB's egress device untagged. */
#ifndef WEIR_ENCAP_H
#define WEIR_ENCAP_H

#include "common.h"
#include "csum.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "xdp_config.h"

#define WEIR_OUTER_TTL 64

/* encap_source picks the outer source for the client's flow in the
 * configured prefix of the outer family. */
static __always_inline void encap_source(union addr *src, const struct pkt *p, int outer4)
{
	__u64 h = hash_step(p->saddr.d[0] ^ p->saddr.d[1], p->sport);
	__be32 bits = (__be32)hash_final(h);

	if (outer4) {
		addr_set4(src, cfg_encap4_net | (bits & cfg_encap4_hostmask));
		return;
	}
	src->w[0] = cfg_encap6_net[0];
	src->w[1] = cfg_encap6_net[1];
	src->w[2] = cfg_encap6_net[2];
	src->w[3] = cfg_encap6_net[3] | (bits & cfg_encap6_hostmask);
}

/* encap_push puts an outer IP header (and a fresh Ethernet header with the
 * old MACs, so a packet passed to the stack is still addressed to this
 * node) in front of the IP packet. Returns 0, or -1 when the headroom
 * can't grow. Packet pointers are invalid afterwards. */
static __always_inline int encap_push(struct xdp_md *ctx, const struct pkt *p, const union addr *src,
				      const union addr *dst, __u32 flow_hash)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int outer4 = addr_is4(dst);
	__u8 inner_proto = p->family == 4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	__u32 olen = outer4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u8 macs[2 * ETH_ALEN];
	int delta;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(macs, eth, sizeof(macs));
	/* Bytes to add in front: the outer header, minus a VLAN tag dropped. */
	delta = (int)(sizeof(struct ethhdr) + olen) - (int)p->l3_off;
	if (bpf_xdp_adjust_head(ctx, -delta))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if (outer4) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return -1;
		__builtin_memcpy(eth, macs, sizeof(macs));
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u8 *)ip = 0x45;
		ip->tos = p->tos;
		ip->tot_len = bpf_htons(p->l3_len + sizeof(*ip));
		ip->id = 0;
		/* DF: a fragmented outer packet could not be decapsulated in
		 * XDP; the MTU check before encapsulation answers the client
		 * instead. */
		ip->frag_off = bpf_htons(WEIR_IP_DF);
		ip->ttl = WEIR_OUTER_TTL;
		ip->protocol = inner_proto;
		ip->check = 0;
		ip->saddr = src->w[3];
		ip->daddr = dst->w[3];
		ip->check = csum_fold(csum_words(0, ip, 5));
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__be32 vtcfl = bpf_htonl((6U << 28) | ((__u32)p->tos << 20) | (flow_hash & 0xfffff));

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(eth, macs, sizeof(macs));
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = vtcfl;
		ip6->payload_len = bpf_htons(p->l3_len);
		ip6->nexthdr = inner_proto;
		ip6->hop_limit = WEIR_OUTER_TTL;
		__builtin_memcpy(&ip6->saddr, src->b, 16);
		__builtin_memcpy(&ip6->daddr, dst->b, 16);
	}
	return 0;
}

/* decap strips the outer header of a tunnel packet addressed to this
 * node, keeping the Ethernet header (and VLAN tag) with the inner
 * ethertype, and passes the inner packet to the stack. Tunnel packets for
 * other addresses pass untouched. */
static __always_inline int decap(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 inner = p->proto == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	__u32 hlen = p->l4_off - p->l3_off;
	int vlan = p->l3_off != sizeof(struct ethhdr);
	__u8 l2[sizeof(struct ethhdr) + sizeof(struct vlan_tag)];

	if (!bpf_map_lookup_elem(&weir_node_addrs, p->daddr.b))
		return XDP_PASS;
	if ((void *)data + sizeof(l2) > data_end)
		return XDP_PASS;
	__builtin_memcpy(l2, data, sizeof(l2));
	if (hlen > WEIR_MAX_L4_OFF || bpf_xdp_adjust_head(ctx, hlen))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (vlan) {
		struct vlan_tag *vt = data + sizeof(struct ethhdr);

		if ((void *)(vt + 1) > data_end)
			return XDP_PASS;
		__builtin_memcpy(data, l2, sizeof(l2));
		vt->proto = inner;
	} else {
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return XDP_PASS;
		__builtin_memcpy(eth, l2, sizeof(*eth));
		eth->h_proto = inner;
	}
	return XDP_PASS;
}

#endif
