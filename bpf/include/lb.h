/* The load balancer proper: service lookup result -> source-range check,
 * conntrack, backend selection (affinity, Maglev), and the forward in the
 * service's mode (DSR encapsulation or SNAT), plus the SNAT reverse path
 * and rejects. Every function returns an XDP verdict; drops and rejects
 * are counted under their reason, forwarded packets in the service and
 * backend counters. */
#ifndef WEIR_LB_H
#define WEIR_LB_H

#include "common.h"
#include "affinity.h"
#include "conntrack.h"
#include "encap.h"
#include "fib.h"
#include "icmp.h"
#include "hash.h"
#include "maglev.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"
#include "stages.h"
#include "stats.h"
#include "xdp_maps.h"

static __always_inline void count_forward(const struct pkt *p, __u32 service_id, __u32 backend_id)
{
	stats_add(&weir_service_stats, service_id, p->len);
	stats_add(&weir_backend_stats, backend_id, p->len);
}

/* too_big answers a packet that won't fit the egress MTU with ICMP
 * fragmentation needed / packet too big carrying mtu, the largest packet
 * the client may send. */
static __always_inline int too_big(struct xdp_md *ctx, const struct pkt *p, __u32 mtu, __u32 service_id)
{
	count_drop(p, WEIR_REASON_FRAG_NEEDED, service_id, 0);
	if (p->family == 4)
		return icmp4_reply(ctx, p, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu);
	if (mtu < WEIR_IPV6_MIN_MTU)
		mtu = WEIR_IPV6_MIN_MTU;
	return icmp6_reply(ctx, p, ICMPV6_PKT_TOOBIG, 0, mtu);
}

/* reject refuses a new flow of a service without backends: TCP RST,
 * otherwise ICMP port unreachable. */
static __always_inline int reject(struct xdp_md *ctx, const struct pkt *p, __u32 service_id)
{
	count_drop(p, WEIR_REASON_NO_BACKEND, service_id, 0);
	if (p->proto == IPPROTO_TCP)
		return tcp_reset(ctx, p);
	if (p->family == 4)
		return icmp4_reply(ctx, p, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0);
	return icmp6_reply(ctx, p, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0);
}

/* fib_failed answers a packet whose next hop can't be used: too big for
 * the egress MTU (ICMP back to the sender), or no route (dropped). */
static __always_inline int fib_failed(struct xdp_md *ctx, const struct pkt *p, int rc,
				      const struct bpf_fib_lookup *fib, __u32 overhead, __u32 service_id)
{
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return too_big(ctx, p, fib->mtu_result - overhead, service_id);
	return count_drop(p, WEIR_REASON_NO_ROUTE, service_id, XDP_DROP);
}

/* flow_fib resolves the next hop of a flow's packet: from the flow's
 * cache (in its conntrack or SNAT entry) when it holds a result checked
 * for a packet at least this large and no refresh is due, otherwise with
 * a FIB lookup whose success is cached there. A new flow's entry (refresh
 * set) is filled before it is written, so its next packets find the next
 * hop. */
static __always_inline int flow_fib(struct xdp_md *ctx, struct fib_cache *c, int refresh,
				    struct bpf_fib_lookup *fib, const union addr *src, const union addr *dst,
				    __u8 l4proto, __u32 tot_len)
{
	int rc;

	if (!refresh && c->ifindex && tot_len <= c->len) {
		fib->ifindex = c->ifindex;
		__builtin_memcpy(fib->dmac, c->dmac, ETH_ALEN);
		__builtin_memcpy(fib->smac, c->smac, ETH_ALEN);
		return BPF_FIB_LKUP_RET_SUCCESS;
	}
	rc = fib_lookup(ctx, fib, src, dst, l4proto, tot_len);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		c->ifindex = 0;
		return rc;
	}
	/* The MTU check passed for tot_len: a refresh starts over, a
	 * larger packet raises the size known to fit. */
	if (refresh || !c->ifindex || c->ifindex != fib->ifindex || tot_len > c->len)
		c->len = tot_len;
	c->ifindex = fib->ifindex;
	__builtin_memcpy(c->dmac, fib->dmac, ETH_ALEN);
	__builtin_memcpy(c->smac, fib->smac, ETH_ALEN);
	return rc;
}

/* ct_commit writes a new flow's conntrack entry (new_key set) once the
 * forward has resolved its next hop into it; an established flow's entry
 * was updated in place. */
static __always_inline void ct_commit(const struct ct_key *new_key, const struct ct_value *ct)
{
	if (new_key)
		bpf_map_update_elem(&weir_ct, new_key, ct, BPF_ANY);
}

/* dsr_forward encapsulates the client's packet to the backend's node.
 * A backend on this node (the tunnel address is one of the node's
 * addresses) gets the packet through the stack unchanged. With the next hop's neighbour unresolved,
 * the encapsulated packet is passed to the stack, which forwards it and
 * resolves the neighbour. */
static __always_inline int dsr_forward(struct xdp_md *ctx, const struct pkt *p, struct ct_value *ct,
				       const struct ct_key *new_key, int refresh, __u32 service_id, __u32 backend_id)
{
	struct bpf_fib_lookup fib;
	union addr src, dst;
	__u32 olen;
	int outer4, rc;

	__builtin_memcpy(dst.b, ct->backend_dst, 16);
	outer4 = addr_is4(&dst);
	olen = outer4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	encap_source(&src, p, outer4);
	rc = flow_fib(ctx, &ct->fib, refresh, &fib, &src, &dst, p->family == 4 ? IPPROTO_IPIP : IPPROTO_IPV6,
		      p->l3_len + olen);
	ct_commit(new_key, ct);
	/* Not forwarded: a local address (the backend is on this node), or
	 * no route at all. */
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED && bpf_map_lookup_elem(&weir_node_addrs, dst.b)) {
		count_forward(p, service_id, backend_id);
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return fib_failed(ctx, p, rc, &fib, olen, service_id);
	if (encap_push(ctx, p, &src, &dst, bpf_ntohl(src.w[3])))
		return count_drop(p, WEIR_REASON_ENCAP_FAILED, service_id, XDP_DROP);
	count_forward(p, service_id, backend_id);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XDP_PASS;
	return fwd_out(ctx, &fib);
}

/* snat_forward sends the client's packet to the backend from the node's
 * SNAT address and the flow's NAT port. */
static __always_inline int snat_forward(struct xdp_md *ctx, const struct pkt *p, struct ct_value *ct,
					const struct ct_key *new_key, int refresh, __u32 service_id, __u32 backend_id)
{
	struct bpf_fib_lookup fib;
	struct nat_target t;
	int rc;

	if (snat_addr(&t.saddr, p->family))
		return count_drop(p, WEIR_REASON_UNSUPPORTED, service_id, XDP_DROP);
	__builtin_memcpy(t.daddr.b, ct->backend_dst, 16);
	t.sport = ct->nat_port;
	t.dport = ct->backend_port;
	rc = flow_fib(ctx, &ct->fib, refresh, &fib, &t.saddr, &t.daddr, p->proto, p->l3_len);
	ct_commit(new_key, ct);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return fib_failed(ctx, p, rc, &fib, 0, service_id);
	if (nat_rewrite(ctx, p, &t))
		return count_drop(p, WEIR_REASON_MALFORMED, service_id, XDP_DROP);
	count_forward(p, service_id, backend_id);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XDP_PASS;
	return fwd_out(ctx, &fib);
}

/* snat_reverse handles a backend's reply to a SNAT flow: it returns a
 * verdict, or -1 when the packet is not one (the caller goes on). */
static __always_inline int snat_reverse(struct xdp_md *ctx, const struct pkt *p)
{
	struct bpf_fib_lookup fib;
	struct frontend_value *fe;
	struct snat_value *v;
	struct nat_target t;
	union addr local;
	struct snat_key k;
	__u16 port = bpf_ntohs(p->dport);
	__u32 fe_id, sid;
	int rc, refresh;
	__u64 now;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	if (port < cfg_snat_port_min || port > cfg_snat_port_max)
		return -1;
	if (snat_addr(&local, p->family) || !addr_eq(&local, &p->daddr))
		return -1;
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.addr, p->saddr.b, 16);
	k.port = p->sport;
	k.nat_port = p->dport;
	k.proto = p->proto;
	v = bpf_map_lookup_elem(&weir_snat, &k);
	if (!v)
		return -1;
	fe_id = v->frontend_id;
	fe = bpf_map_lookup_elem(&weir_frontends, &fe_id);
	if (!fe)
		return -1;
	sid = fe->service_id;
	__builtin_memcpy(t.saddr.b, fe->addr, 16);
	__builtin_memcpy(t.daddr.b, v->client, 16);
	t.sport = fe->port;
	t.dport = v->client_port;
	now = lb_now();
	refresh = lb_age(now, v->last_seen) >= (__s64)WEIR_CT_REFRESH_NS;
	if (refresh)
		v->last_seen = now;
	rc = flow_fib(ctx, &v->fib, refresh, &fib, &t.saddr, &t.daddr, p->proto, p->l3_len);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return fib_failed(ctx, p, rc, &fib, 0, sid);
	if (nat_rewrite(ctx, p, &t))
		return count_drop(p, WEIR_REASON_MALFORMED, sid, XDP_DROP);
	stats_add(&weir_service_stats, sid, p->len);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XDP_PASS;
	return fwd_out(ctx, &fib);
}

static __always_inline int source_allowed(const struct service_value *svc, const struct pkt *p)
{
	struct source_range_key k = {
		.prefixlen = 32 + 128,
		.service_id = svc->service_id,
	};

	__builtin_memcpy(k.addr, p->saddr.b, 16);
	return bpf_map_lookup_elem(&weir_source_ranges, &k) != NULL;
}

/* backend_word returns a backend's word (weir_backend_words), 0 for no
 * backend. */
static __always_inline __u32 backend_word(__u32 id)
{
	__u32 *w = bpf_map_lookup_elem(&weir_backend_words, &id);

	return w ? *(volatile __u32 *)w : 0;
}

/* ct_set_backend copies into a flow's entry what its packets need of its
 * backend, with the backend's word; the next hop is looked up again. */
static __always_inline void ct_set_backend(struct ct_value *ct, const struct backend_value *be, __u32 word, int snat)
{
	union addr dst;

	__builtin_memcpy(dst.b, be->tunnel, 16);
	if (snat || !(dst.d[0] | dst.d[1])) /* SNAT, or no tunnel address: the backend's own */
		__builtin_memcpy(dst.b, be->addr, 16);
	__builtin_memcpy(ct->backend_dst, dst.b, 16);
	ct->backend_port = be->port;
	ct->backend_word = word;
	ct->fib.ifindex = 0;
}

/* lb_service load-balances a packet addressed to a service frontend. */
static __always_inline int lb_service(struct xdp_md *ctx, const struct pkt *p, const struct service_value *svc)
{
	__u32 sid = svc->service_id, fid = svc->frontend_id, be_id, word;
	struct backend_value *be;
	struct ct_value *ct;
	struct ct_key ck, *new_key = NULL;
	__u32 zero = 0;
	__be16 nat_port = 0;
	int snat, refresh = 0;
	__u64 now;

	if ((svc->flags & WEIR_SVC_SOURCE_RANGES) &&
	    (weir_stages_enabled & WEIR_STAGE_BIT(WEIR_STAGE_SOURCE_RANGES)) && !source_allowed(svc, p))
		return count_drop(p, WEIR_REASON_SOURCE_RANGE, sid, XDP_DROP);

	now = lb_now();
	ct_key_from(&ck, p);
	ct = bpf_map_lookup_elem(&weir_ct, &ck);
	if (ct && ct->service_id == sid && !ct_stale(ct, p->proto, now)) {
		/* Established: keep the backend while it exists, also when it
		 * is terminating (draining is what terminating means); but not
		 * when its health check quarantined it: it is dead, and its
		 * flows are better off on a live backend. While the backend's
		 * word is the one the entry copied, the entry has all the
		 * packet needs: no backend lookup. */
		if (ct_tcp_reopens(ct, p))
			goto new_flow;
		be_id = ct->backend_id;
		word = backend_word(be_id);
		if (!word || (word & WEIR_BACKEND_WORD_STATE) == WEIR_BACKEND_QUARANTINED)
			goto new_flow;
		snat = ct->flags & WEIR_CT_F_SNAT;
		if ((word ^ ct->backend_word) & ~WEIR_BACKEND_WORD_STATE) {
			/* The ID names another backend now, or this one moved. */
			be = bpf_map_lookup_elem(&weir_backends, &be_id);
			if (!be || be->service_id != sid)
				goto new_flow;
			ct_set_backend(ct, be, word, snat);
		}
		nat_port = ct->nat_port;
		refresh = ct_touch(ct, now);
		if (refresh && snat)
			snat_refresh(p, ct->backend_dst, ct->backend_port, nat_port, fid, now);
		goto forward;
	}

new_flow:
	if (!svc->backends)
		return reject(ctx, p, sid);
	be_id = 0;
	if (svc->flags & WEIR_SVC_AFFINITY)
		be_id = affinity_get(svc, p, now);
	if (!be_id)
		be_id = maglev_pick(svc, flow_hash(p, svc->flags & WEIR_SVC_AFFINITY));
	be = bpf_map_lookup_elem(&weir_backends, &be_id);
	if (!be_id || !be)
		return reject(ctx, p, sid);
	snat = svc->mode == WEIR_MODE_SNAT || (svc->mode == WEIR_MODE_HYBRID && p->proto != IPPROTO_TCP);
	if (snat) {
		union addr unused;

		if (p->proto == IPPROTO_SCTP || snat_addr(&unused, p->family))
			return count_drop(p, WEIR_REASON_UNSUPPORTED, sid, XDP_DROP);
		if (snat_alloc(p, be, fid, now, &nat_port))
			return count_drop(p, WEIR_REASON_SNAT_NO_PORT, sid, XDP_DROP);
	}
	/* The entry is written by the forward, with the next hop it
	 * resolves. */
	ct = bpf_map_lookup_elem(&weir_ct_new, &zero);
	if (!ct) /* never: slot 0 of a per-CPU array */
		return XDP_ABORTED;
	__builtin_memset(ct, 0, sizeof(*ct));
	ct->last_seen = now;
	ct->backend_id = be_id;
	ct->frontend_id = fid;
	ct->service_id = sid;
	ct->nat_port = nat_port;
	ct->flags = snat ? WEIR_CT_F_SNAT : 0;
	ct_set_backend(ct, be, backend_word(be_id), snat);
	new_key = &ck;
	refresh = 1;
	if (svc->flags & WEIR_SVC_AFFINITY)
		affinity_put(svc, p, be_id, now);
	new_flow_event(p, sid, be_id);

forward:
	if (snat)
		return snat_forward(ctx, p, ct, new_key, refresh, sid, be_id);
	return dsr_forward(ctx, p, ct, new_key, refresh, sid, be_id);
}

/* lb_process is the whole XDP datapath after the pre-LB stages: parse,
 * decapsulate, SNAT replies, then services. Anything else passes. */
static __always_inline int lb_process(struct xdp_md *ctx)
{
	struct service_value *svc;
	struct service_key sk;
	struct pkt p = {};
	int r;

	p.ifindex = ctx->ingress_ifindex;
	r = parse(ctx, &p);
	if (r == P_PASS)
		return XDP_PASS;
	if (r == P_MALFORMED)
		return count_drop(&p, WEIR_REASON_MALFORMED, 0, XDP_DROP);
	if (r == P_TUNNEL)
		return decap(ctx, &p);
	r = snat_reverse(ctx, &p);
	if (r >= 0)
		return r;
	__builtin_memcpy(sk.addr, p.daddr.b, 16);
	sk.port = p.dport;
	sk.proto = p.proto;
	sk.scope = WEIR_SCOPE_EXTERNAL;
	svc = bpf_map_lookup_elem(&weir_services, &sk);
	if (!svc)
		return XDP_PASS;
	return lb_service(ctx, &p, svc);
}

#endif
