/* Replies built in place and sent back with XDP_TX: ICMP/ICMPv6 errors
 * (port unreachable for rejected flows, fragmentation needed / packet too
 * big when the encapsulated packet would not fit) and TCP resets. The
 * Ethernet header (and VLAN tag) is kept with the MACs swapped, so the
 * reply leaves the way the packet came. These are slow paths: separate
 * functions, so their stack and instructions are verified once. */
#ifndef WEIR_ICMP_H
#define WEIR_ICMP_H

#include "common.h"
#include "csum.h"
#include "parse.h"

/* The UAPI ICMP header pulls in libc's socket headers; these are the few
 * definitions needed. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_PORT_UNREACH 4
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* ICMP and ICMPv6 errors share this layout: type, code, checksum, then
 * 4 bytes (unused + next-hop MTU for ICMP, MTU for packet too big). */
struct icmp_err {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 data;
};

#define WEIR_IPV6_MIN_MTU 1280
/* ICMPv4 errors quote the IP header (up to 60 bytes) and 8 bytes. */
#define WEIR_ICMP4_QUOTE_MAX 68
/* ICMPv6 errors quote as much as fits in the minimum MTU. */
#define WEIR_ICMP6_QUOTE_MAX (WEIR_IPV6_MIN_MTU - sizeof(struct ipv6hdr) - sizeof(struct icmp_err))
#define WEIR_CSUM_CHUNK 64

/* reply_l2 copies the L2 header (14 or 18 bytes) from `from` bytes further
 * into the packet to its start, swapping the MACs. */
static __always_inline int reply_l2(void *data, void *data_end, __u32 l2len, __u32 from)
{
	struct ethhdr *eth = data;
	struct ethhdr *old = data + from;
	__u8 mac[ETH_ALEN];

	if (from > 64 || (void *)(old + 1) + sizeof(struct vlan_tag) > data_end)
		return -1;
	if ((void *)(eth + 1) + sizeof(struct vlan_tag) > data_end)
		return -1;
	__builtin_memcpy(mac, old->h_source, ETH_ALEN);
	__builtin_memmove(eth->h_source, old->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	eth->h_proto = old->h_proto;
	if (l2len > sizeof(struct ethhdr))
		__builtin_memmove((void *)(eth + 1), (void *)(old + 1), sizeof(struct vlan_tag));
	return 0;
}

/* resize moves the packet start by head bytes (negative grows) and sets
 * its total length to len. */
static __always_inline int resize(struct xdp_md *ctx, int head, __u32 len)
{
	int cur;

	if (head && bpf_xdp_adjust_head(ctx, head))
		return -1;
	cur = (long)ctx->data_end - (long)ctx->data;
	if ((int)len != cur && bpf_xdp_adjust_tail(ctx, (int)len - cur))
		return -1;
	return 0;
}

/* csum_packet sums len bytes of the packet from off, in zero-padded
 * chunks (zero padding doesn't change a ones-complement sum). */
static __always_inline __u64 csum_packet(struct xdp_md *ctx, __u32 off, __u32 len, __u64 acc)
{
	__u8 buf[WEIR_CSUM_CHUNK];

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < (WEIR_ICMP6_QUOTE_MAX + WEIR_CSUM_CHUNK - 1) / WEIR_CSUM_CHUNK; i++) {
		__u32 done = i * WEIR_CSUM_CHUNK;
		__u32 n;

		if (done >= len)
			break;
		n = len - done;
		if (n > WEIR_CSUM_CHUNK)
			n = WEIR_CSUM_CHUNK;
		/* Both bounds on the register the helper gets, for the
		 * verifier. */
		barrier_var(n);
		if (n == 0 || n > WEIR_CSUM_CHUNK)
			break;
		__builtin_memset(buf, 0, sizeof(buf));
		if (bpf_xdp_load_bytes(ctx, off + done, buf, n))
			break;
		acc = csum_words(acc, buf, WEIR_CSUM_CHUNK / 4);
	}
	return acc;
}

/* icmp4_reply turns an IPv4 packet into an ICMP error (type, code, and
 * the next-hop MTU for fragmentation needed) from its destination to its
 * source. Returns XDP_TX, or XDP_DROP when the packet can't be rebuilt. */
static __attribute__((noinline)) int icmp4_reply(struct xdp_md *ctx, const struct pkt *p, __u8 type, __u8 code,
						__u16 mtu)
{
	__u32 l2 = p->l3_off;
	__u32 quote = p->l4_off - p->l3_off + 8;
	__u32 hdrs = sizeof(struct iphdr) + sizeof(struct icmp_err);
	void *data, *data_end;
	struct iphdr *ip;
	struct icmp_err *ic;

	if (quote > p->l3_len)
		quote = p->l3_len;
	if (l2 > 18 || quote < 20 || quote > WEIR_ICMP4_QUOTE_MAX)
		return XDP_DROP;
	/* The old IP header lands right after the new ICMP header. */
	if (resize(ctx, -(int)hdrs, l2 + hdrs + quote))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (reply_l2(data, data_end, l2, hdrs))
		return XDP_DROP;
	/* Keep the bounds check below: the compiler could prove it from
	 * reply_l2's, the verifier can't (variable offset). */
	barrier_var(l2);
	ip = data + l2;
	ic = (void *)(ip + 1);
	if ((void *)(ic + 1) > data_end)
		return XDP_DROP;
	*(__u8 *)ip = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(hdrs + quote);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = p->daddr.w[3];
	ip->daddr = p->saddr.w[3];
	ip->check = csum_fold(csum_words(0, ip, 5));
	ic->type = type;
	ic->code = code;
	ic->checksum = 0;
	ic->data = bpf_htonl(mtu); /* unused (2 bytes), next-hop MTU */
	ic->checksum = csum_fold(csum_packet(ctx, l2 + sizeof(*ip), sizeof(*ic) + quote, 0));
	return XDP_TX;
}

/* icmp6_reply is icmp4_reply for IPv6; mtu is the packet-too-big MTU. */
static __attribute__((noinline)) int icmp6_reply(struct xdp_md *ctx, const struct pkt *p, __u8 type, __u8 code,
						__u32 mtu)
{
	__u32 l2 = p->l3_off;
	__u32 quote = p->l3_len;
	__u32 hdrs = sizeof(struct ipv6hdr) + sizeof(struct icmp_err);
	void *data, *data_end;
	struct ipv6hdr *ip6;
	struct icmp_err *ic;
	__u64 acc;

	if (quote > WEIR_ICMP6_QUOTE_MAX)
		quote = WEIR_ICMP6_QUOTE_MAX;
	if (l2 > 18 || quote < sizeof(struct ipv6hdr))
		return XDP_DROP;
	if (resize(ctx, -(int)hdrs, l2 + hdrs + quote))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (reply_l2(data, data_end, l2, hdrs))
		return XDP_DROP;
	/* Keep the bounds check below: the compiler could prove it from
	 * reply_l2's, the verifier can't (variable offset). */
	barrier_var(l2);
	ip6 = data + l2;
	ic = (void *)(ip6 + 1);
	if ((void *)(ic + 1) > data_end)
		return XDP_DROP;
	*(__be32 *)ip6 = bpf_htonl(6U << 28);
	ip6->payload_len = bpf_htons(sizeof(*ic) + quote);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, p->daddr.b, 16);
	__builtin_memcpy(&ip6->daddr, p->saddr.b, 16);
	ic->type = type;
	ic->code = code;
	ic->checksum = 0;
	ic->data = bpf_htonl(mtu);
	/* Pseudo-header: addresses, upper-layer length, next header. */
	acc = csum_addr(0, &p->saddr);
	acc = csum_addr(acc, &p->daddr);
	acc += bpf_htonl(sizeof(*ic) + quote);
	acc += bpf_htonl(IPPROTO_ICMPV6);
	acc = csum_packet(ctx, l2 + sizeof(*ip6), sizeof(*ic) + quote, acc);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ic = data + l2 + sizeof(*ip6);
	if ((void *)(ic + 1) > data_end)
		return XDP_DROP;
	ic->checksum = csum_fold(acc);
	return XDP_TX;
}

/* tcp_reset answers a TCP segment with a RST (RFC 9293 3.10.7.1: with
 * the peer's ACK as sequence number, or an ACK of the segment when it
 * carried none). A RST is never answered (dropped). */
static __attribute__((noinline)) int tcp_reset(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l2 = p->l3_off, l4 = p->l4_off;
	__u32 iplen = p->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 seq, ack, payload;
	struct tcphdr *th;
	__u8 flags;
	__u64 acc;
	struct ethhdr *eth;
	__u8 mac[ETH_ALEN];

	if (l2 > 18 || l4 > WEIR_MAX_L4_OFF)
		return XDP_DROP;
	th = data + l4;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	flags = ((__u8 *)th)[13];
	if (flags & 0x04) /* RST */
		return XDP_DROP;
	payload = p->l3_len - (l4 - l2) - th->doff * 4;
	if (flags & 0x10) { /* ACK */
		seq = th->ack_seq;
		ack = 0;
		flags = 0x04;
	} else {
		seq = 0;
		ack = bpf_htonl(bpf_ntohl(th->seq) + payload + !!(flags & 0x02) + !!(flags & 0x01));
		flags = 0x14; /* RST|ACK */
	}
	if (resize(ctx, 0, l2 + iplen + sizeof(*th)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	th = data + l2 + iplen;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (p->family == 4) {
		struct iphdr *ip = data + l2;

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		*(__u8 *)ip = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*th));
		ip->id = 0;
		ip->frag_off = bpf_htons(WEIR_IP_DF);
		ip->ttl = 64;
		ip->protocol = IPPROTO_TCP;
		ip->check = 0;
		ip->saddr = p->daddr.w[3];
		ip->daddr = p->saddr.w[3];
		ip->check = csum_fold(csum_words(0, ip, 5));
		acc = p->saddr.w[3] + (__u64)p->daddr.w[3];
	} else {
		struct ipv6hdr *ip6 = data + l2;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		*(__be32 *)ip6 = bpf_htonl(6U << 28);
		ip6->payload_len = bpf_htons(sizeof(*th));
		ip6->nexthdr = IPPROTO_TCP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, p->daddr.b, 16);
		__builtin_memcpy(&ip6->daddr, p->saddr.b, 16);
		acc = csum_addr(csum_addr(0, &p->saddr), &p->daddr);
	}
	th->source = p->dport;
	th->dest = p->sport;
	th->seq = seq;
	th->ack_seq = ack;
	((__u8 *)th)[12] = 5 << 4; /* data offset 5, no options */
	((__u8 *)th)[13] = flags;
	th->window = 0;
	th->check = 0;
	th->urg_ptr = 0;
	acc += bpf_htonl(IPPROTO_TCP);
	acc += bpf_htonl(sizeof(*th));
	th->check = csum_fold(csum_words(acc, th, 5));
	return XDP_TX;
}

#endif
