/* Packet parsing for the XDP program: Ethernet with at most one VLAN tag,
 * IPv4 (options allowed) or IPv6 (extension headers skipped), then the
 * ports of TCP, UDP or SCTP. The result is a struct pkt of offsets and
 * copied fields, so later stages can re-derive pointers after the packet
 * is resized. Nothing here aborts: a packet is either parsed, passed to
 * the stack (not ours), or reported malformed. */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define WEIR_NEXTHDR_HOP 0
#define WEIR_NEXTHDR_ROUTING 43
#define WEIR_NEXTHDR_FRAGMENT 44
#define WEIR_NEXTHDR_AUTH 51
#define WEIR_NEXTHDR_DEST 60

/* Extension headers skipped before giving up (the packet is then passed). */
#define WEIR_IPV6_MAX_EXT 4
/* Offsets past this are not parsed: no real header chain is that long,
 * and a constant bound keeps the verifier's range tracking simple. */
#define WEIR_MAX_L4_OFF 512

#define WEIR_IP_MF 0x2000
#define WEIR_IP_DF 0x4000
#define WEIR_IP_OFFMASK 0x1fff

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* An address in map form: IPv4 is IPv4-mapped (::ffff:a.b.c.d). */
union addr {
	__u8 b[16];
	__be32 w[4];
	__u64 d[2];
};

static __always_inline void addr_set4(union addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

static __always_inline int addr_is4(const union addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline int addr_eq(const union addr *a, const union addr *b)
{
	return ((a->d[0] ^ b->d[0]) | (a->d[1] ^ b->d[1])) == 0;
}

/* Parse results. */
#define P_OK 0 /* IP + TCP/UDP/SCTP ports */
#define P_PASS 1 /* not for us: hand to the stack untouched */
#define P_MALFORMED 2 /* truncated or inconsistent headers */
#define P_TUNNEL 3 /* IPIP / IPv6-in-IP: a decap candidate */

struct pkt {
	union addr saddr;
	union addr daddr;
	__u32 l3_off; /* start of the IP header (after Ethernet and VLAN) */
	__u32 l4_off; /* start of the L4 header (after IP options/extensions) */
	__u32 l3_len; /* IP datagram length from its header */
	__u32 len; /* frame length as received */
	__u32 ifindex; /* ingress device */
	__be16 sport;
	__be16 dport;
	__u8 family; /* 4 or 6 */
	__u8 proto; /* L4 protocol after extension headers */
	__u8 tos; /* IPv4 TOS / IPv6 traffic class */
	__u8 tcp_flags;
};

static __always_inline int parse_l4(void *data, void *data_end, struct pkt *p)
{
	__u32 off = p->l4_off;

	if (off > WEIR_MAX_L4_OFF)
		return P_PASS;
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + off;

		if ((void *)(th + 1) > data_end || th->doff < 5)
			return P_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return P_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* Both start with the two ports; UDP's header is 8 bytes, SCTP's
		 * common header 12. */
		__be16 *ports = data + off;

		if ((void *)ports + 8 > data_end)
			return P_MALFORMED;
		if (p->proto == IPPROTO_SCTP && (void *)ports + 12 > data_end)
			return P_MALFORMED;
		p->sport = ports[0];
		p->dport = ports[1];
		return P_OK;
	}
	}
	return P_PASS;
}

static __always_inline int parse_ipv4(void *data, void *data_end, struct pkt *p)
{
	struct iphdr *ip = data + p->l3_off;
	__u32 hlen, tot;

	if ((void *)(ip + 1) > data_end)
		return P_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return P_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || p->l3_off + tot > p->len)
		return P_MALFORMED;
	/* Later fragments carry no ports: the stack reassembles them. */
	if (ip->frag_off & bpf_htons(WEIR_IP_OFFMASK))
		return P_PASS;
	p->family = 4;
	p->proto = ip->protocol;
	p->tos = ip->tos;
	p->l3_len = tot;
	p->l4_off = p->l3_off + hlen;
	addr_set4(&p->saddr, ip->saddr);
	addr_set4(&p->daddr, ip->daddr);
	if (p->proto == IPPROTO_IPIP || p->proto == IPPROTO_IPV6) {
		/* A first fragment of a tunnel packet can't be decapsulated
		 * alone. */
		if (ip->frag_off & bpf_htons(WEIR_IP_MF))
			return P_PASS;
		return P_TUNNEL;
	}
	return parse_l4(data, data_end, p);
}

static __always_inline int parse_ipv6(void *data, void *data_end, struct pkt *p)
{
	struct ipv6hdr *ip6 = data + p->l3_off;
	__u32 off;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return P_MALFORMED;
	if (ip6->version != 6)
		return P_MALFORMED;
	p->l3_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (p->l3_off + p->l3_len > p->len)
		return P_MALFORMED;
	p->family = 6;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	__builtin_memcpy(p->saddr.b, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr.b, &ip6->daddr, 16);
	nh = ip6->nexthdr;
	off = p->l3_off + sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < WEIR_IPV6_MAX_EXT; i++) {
		__u8 *h;

		if (nh != WEIR_NEXTHDR_HOP && nh != WEIR_NEXTHDR_ROUTING && nh != WEIR_NEXTHDR_DEST &&
		    nh != WEIR_NEXTHDR_FRAGMENT && nh != WEIR_NEXTHDR_AUTH)
			break;
		if (off > WEIR_MAX_L4_OFF)
			return P_PASS;
		h = data + off;
		if ((void *)(h + 8) > data_end)
			return P_MALFORMED;
		if (nh == WEIR_NEXTHDR_FRAGMENT) {
			/* Later fragments pass; a first fragment (offset 0) is
			 * parsed like an unfragmented packet. */
			if (*(__be16 *)(h + 2) & bpf_htons(0xfff8))
				return P_PASS;
			off += 8;
		} else if (nh == WEIR_NEXTHDR_AUTH) {
			off += ((__u32)h[1] + 2) * 4;
		} else {
			off += ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
	}
	if (off > WEIR_MAX_L4_OFF)
		return P_PASS;
	p->proto = nh;
	p->l4_off = off;
	if (nh == IPPROTO_IPV6 || nh == IPPROTO_IPIP)
		return P_TUNNEL;
	return parse_l4(data, data_end, p);
}

/* parse fills p from the packet in ctx. */
static __always_inline int parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__be16 proto;

	p->len = data_end - data;
	if ((void *)(eth + 1) > data_end)
		return P_PASS;
	proto = eth->h_proto;
	p->l3_off = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *vt = (void *)(eth + 1);

		if ((void *)(vt + 1) > data_end)
			return P_MALFORMED;
		proto = vt->proto;
		p->l3_off += sizeof(*vt);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, data_end, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, data_end, p);
	return P_PASS;
}

#endif
