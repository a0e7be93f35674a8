/* Source NAT for the XDP program. Forward: the client's packet leaves
 * from the node's SNAT address and a port allocated per flow in
 * [cfg_snat_port_min, cfg_snat_port_max], to the backend's address and
 * port. Reverse: a backend's reply to that address and port is rewritten
 * back to frontend -> client. weir_snat is keyed by what the reply
 * carries (backend address and port, NAT port, protocol). SCTP is not
 * source-NATed: its CRC32c covers the ports and can't be updated
 * incrementally. */
#ifndef WEIR_NAT_H
#define WEIR_NAT_H

#include "common.h"
#include "csum.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "xdp_config.h"

/* Ports tried after the hashed one before giving up on a flow. */
#define WEIR_SNAT_TRIES 32

/* snat_addr sets a to the SNAT address of the family; -1 when none is
 * configured. */
static __always_inline int snat_addr(union addr *a, __u8 family)
{
	if (family == 4) {
		addr_set4(a, cfg_snat4);
		return cfg_snat4 ? 0 : -1;
	}
	a->w[0] = cfg_snat6[0];
	a->w[1] = cfg_snat6[1];
	a->w[2] = cfg_snat6[2];
	a->w[3] = cfg_snat6[3];
	return (a->d[0] | a->d[1]) ? 0 : -1;
}

static __always_inline int snat_same_flow(const struct snat_value *v, const struct pkt *p, __u32 frontend_id)
{
	union addr c;

	__builtin_memcpy(c.b, v->client, 16);
	return addr_eq(&c, &p->saddr) && v->client_port == p->sport && v->frontend_id == frontend_id;
}

static __always_inline void snat_entry(struct snat_key *k, struct snat_value *v, const struct pkt *p,
				       const __u8 *backend, __be16 backend_port, __u32 frontend_id, __u64 now)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memset(v, 0, sizeof(*v));
	__builtin_memcpy(k->addr, backend, 16);
	k->port = backend_port;
	k->proto = p->proto;
	v->last_seen = now;
	__builtin_memcpy(v->client, p->saddr.b, 16);
	v->client_port = p->sport;
	v->frontend_id = frontend_id;
}

/* snat_alloc reserves a NAT port for a new flow: the flow's hash mapped
 * into the range, then the next ports, inserting the reverse entry with
 * BPF_NOEXIST so two flows never share one. A port already held by this
 * same flow (its conntrack entry was evicted) is reused. */
static __always_inline int snat_alloc(const struct pkt *p, const struct backend_value *be, __u32 frontend_id,
				      __u64 now, __be16 *port)
{
	__u32 min = cfg_snat_port_min, max = cfg_snat_port_max;
	struct snat_key k;
	struct snat_value v;
	__u32 range, off;

	if (max < min)
		return -1;
	range = max - min + 1;
	off = flow_hash(p, 0) % range;
	snat_entry(&k, &v, p, be->addr, be->port, frontend_id, now);
#pragma clang loop unroll(disable)
	for (int i = 0; i < WEIR_SNAT_TRIES; i++) {
		struct snat_value *cur;

		k.nat_port = bpf_htons(min + off);
		if (!bpf_map_update_elem(&weir_snat, &k, &v, BPF_NOEXIST)) {
			*port = k.nat_port;
			return 0;
		}
		cur = bpf_map_lookup_elem(&weir_snat, &k);
		if (cur && snat_same_flow(cur, p, frontend_id)) {
			cur->last_seen = now;
			*port = k.nat_port;
			return 0;
		}
		if (++off >= range)
			off = 0;
	}
	return -1;
}

/* snat_refresh keeps an established flow's reverse entry alive (and puts
 * it back if the LRU evicted it). Called once a second per flow; it also
 * drops the replies' cached next hop, so that the next reply looks it up
 * again: a flow the forward path keeps fresh refreshes both ways. */
static __always_inline void snat_refresh(const struct pkt *p, const __u8 *backend, __be16 backend_port, __be16 port,
					 __u32 frontend_id, __u64 now)
{
	struct snat_key k;
	struct snat_value v;
	struct snat_value *cur;

	snat_entry(&k, &v, p, backend, backend_port, frontend_id, now);
	k.nat_port = port;
	cur = bpf_map_lookup_elem(&weir_snat, &k);
	if (cur) {
		if (snat_same_flow(cur, p, frontend_id)) {
			cur->last_seen = now;
			cur->fib.ifindex = 0;
		}
		return;
	}
	bpf_map_update_elem(&weir_snat, &k, &v, BPF_NOEXIST);
}

/* Where nat_rewrite puts a packet. */
struct nat_target {
	union addr saddr;
	union addr daddr;
	__be16 sport;
	__be16 dport;
};

/* nat_rewrite rewrites the addresses and ports of a TCP or UDP packet and
 * updates the IPv4 header and L4 checksums incrementally (RFC 1624). A
 * zero IPv4 UDP checksum (none) stays zero. Returns 0 or -1. A function of
 * its own: inlined twice into a large caller, the compiler rematerialises
 * packet pointers the verifier then no longer knows are checked. */
static __attribute__((noinline)) int nat_rewrite(struct xdp_md *ctx, const struct pkt *p,
						const struct nat_target *t)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = p->l3_off, l4 = p->l4_off;
	__be16 *ports, *check;
	__u64 acc;

	if (l3 > 18 || l4 > WEIR_MAX_L4_OFF)
		return -1;
	if (p->family == 4) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > data_end)
			return -1;
		acc = csum_replace32(0, ip->saddr, t->saddr.w[3]);
		acc = csum_replace32(acc, ip->daddr, t->daddr.w[3]);
		ip->check = csum_fold(acc + (__u16)~ip->check);
		ip->saddr = t->saddr.w[3];
		ip->daddr = t->daddr.w[3];
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		acc = csum_replace_addr(0, &p->saddr, &t->saddr);
		acc = csum_replace_addr(acc, &p->daddr, &t->daddr);
		__builtin_memcpy(&ip6->saddr, t->saddr.b, 16);
		__builtin_memcpy(&ip6->daddr, t->daddr.b, 16);
	}
	acc = csum_replace16(acc, p->sport, t->sport);
	acc = csum_replace16(acc, p->dport, t->dport);
	ports = data + l4;
	if ((void *)(ports + 10) > data_end) /* a TCP header; UDP's is checked below */
		if (p->proto == IPPROTO_TCP || (void *)(ports + 4) > data_end)
			return -1;
	if (p->proto == IPPROTO_TCP)
		check = ports + 8;
	else if (p->proto == IPPROTO_UDP)
		check = ports + 3;
	else
		return -1;
	if ((void *)(check + 1) > data_end)
		return -1;
	ports[0] = t->sport;
	ports[1] = t->dport;
	if (p->proto == IPPROTO_UDP && p->family == 4 && !*check)
		return 0;
	acc = csum_fold(acc + (__u16)~*check);
	if (p->proto == IPPROTO_UDP && !acc)
		acc = 0xffff;
	*check = acc;
	return 0;
}

#endif
