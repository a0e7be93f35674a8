/* Helpers of the socket load balancer (bpf/sock_lb.c): address
 * conversion, backend selection, reverse NAT bookkeeping and counters.
 * Only sock_lb.c includes this header; it owns no maps of its own (every
 * map is in maps.h so the agent creates and pins it). */
#ifndef WEIR_SOCK_H
#define WEIR_SOCK_H

#include "common.h"
#include "maps.h"

/* Errors the hooks hand to the caller through bpf_set_retval (negated).
 * Defined here because the UAPI errno headers drag in libc ones. */
#define WEIR_ECONNREFUSED 111
#define WEIR_EADDRINUSE 98

#define WEIR_NSEC_PER_SEC 1000000000ULL

/* An address as four 32-bit words, the shape bpf_sock_addr exposes it in.
 * The maps store the same 16 bytes as __u8[16]. */
struct sock_addr6 {
	__u32 w[4];
};

static __always_inline void sock_addr_from_v4(__u8 *dst, __u32 ip4)
{
	struct sock_addr6 a = { .w = { 0, 0, bpf_htonl(0xffff), ip4 } };

	__builtin_memcpy(dst, &a, sizeof(a));
}

static __always_inline int sock_addr_is_v4(const __u8 *addr)
{
	struct sock_addr6 a;

	__builtin_memcpy(&a, addr, sizeof(a));
	return a.w[0] == 0 && a.w[1] == 0 && a.w[2] == bpf_htonl(0xffff);
}

static __always_inline __u32 sock_addr_v4(const __u8 *addr)
{
	struct sock_addr6 a;

	__builtin_memcpy(&a, addr, sizeof(a));
	return a.w[3];
}

static __always_inline int sock_addr_eq(const __u8 *x, const __u8 *y)
{
	struct sock_addr6 a, b;

	__builtin_memcpy(&a, x, sizeof(a));
	__builtin_memcpy(&b, y, sizeof(b));
	return ((a.w[0] ^ b.w[0]) | (a.w[1] ^ b.w[1]) | (a.w[2] ^ b.w[2]) | (a.w[3] ^ b.w[3])) == 0;
}

static __always_inline int sock_addr_is_any(const __u8 *addr)
{
	struct sock_addr6 a;

	__builtin_memcpy(&a, addr, sizeof(a));
	return (a.w[0] | a.w[1] | a.w[2] | a.w[3]) == 0;
}

/* bpf_sock_addr only allows 4-byte accesses to user_ip6, one word at a
 * time; these copy between the context and a 16-byte map address. */
static __always_inline void sock_addr_from_ctx6(__u8 *dst, const struct bpf_sock_addr *ctx)
{
	struct sock_addr6 a;

	a.w[0] = ctx->user_ip6[0];
	a.w[1] = ctx->user_ip6[1];
	a.w[2] = ctx->user_ip6[2];
	a.w[3] = ctx->user_ip6[3];
	__builtin_memcpy(dst, &a, sizeof(a));
}

static __always_inline void sock_addr_to_ctx6(struct bpf_sock_addr *ctx, const __u8 *src)
{
	struct sock_addr6 a;

	__builtin_memcpy(&a, src, sizeof(a));
	ctx->user_ip6[0] = a.w[0];
	ctx->user_ip6[1] = a.w[1];
	ctx->user_ip6[2] = a.w[2];
	ctx->user_ip6[3] = a.w[3];
}

static __always_inline void sock_count(void *stats, __u32 id)
{
	struct traffic_stats *s = bpf_map_lookup_elem(stats, &id);

	/* Per-CPU: no other CPU writes this slot, a plain add is exact. */
	if (s)
		s->packets++;
}

/* The backend a client reused within the affinity timeout, or 0. Only an
 * ACTIVE backend of the same service counts: a terminating or replaced
 * backend makes the client pick again. A hit refreshes the entry in place
 * (no map update: concurrent refreshes of one client write the same). */
static __always_inline __u32 sock_affinity_lookup(const struct affinity_key *ak,
						  const struct service_value *svc,
						  __u64 now)
{
	struct affinity_value *av = bpf_map_lookup_elem(&weir_affinity, ak);
	struct backend_value *be;
	__u32 id;

	if (!av)
		return 0;
	if (now - av->last_used > (__u64)svc->affinity_timeout * WEIR_NSEC_PER_SEC)
		return 0;
	id = av->backend_id;
	be = bpf_map_lookup_elem(&weir_backends, &id);
	if (!be || be->state != WEIR_BACKEND_ACTIVE || be->service_id != svc->service_id)
		return 0;
	av->last_used = now;
	return id;
}

/* A random slot of the service's table. The control plane builds the
 * internal view's table from the weights, with only eligible backends, so
 * a uniform slot is a weighted backend choice. */
static __always_inline __u32 sock_table_pick(const struct service_value *svc)
{
	/* Table and size are read once each: they change together. */
	__u32 key = weir_table_key(svc);
	__u32 size = svc->table_size;
	__u32 slot, *id;
	void *table;

	if (!size)
		return 0;
	table = bpf_map_lookup_elem(&weir_maglev, &key);
	if (!table)
		return 0;
	slot = bpf_get_prandom_u32() % size;
	id = bpf_map_lookup_elem(table, &slot);
	return id ? *id : 0;
}

/* Chooses a backend for a new connection (or datagram). client is the
 * socket's bound address, zero when unbound: at connect time the source
 * address is not chosen yet, so affinity is keyed like Cilium's socket LB,
 * by network namespace (plus the bound address when there is one). */
static __always_inline struct backend_value *
sock_select_backend(void *ctx, const struct service_value *svc, const __u8 *client,
		    __u32 *backend_id)
{
	struct affinity_key ak = {};
	struct backend_value *be;
	__u64 now = 0;
	__u32 id = 0;
	int fresh = 0;

	if (svc->flags & WEIR_SVC_AFFINITY) {
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		ak.service_id = svc->service_id;
		__builtin_memcpy(ak.client, client, sizeof(ak.client));
		now = bpf_ktime_get_ns();
		id = sock_affinity_lookup(&ak, svc, now);
	}
	if (!id) {
		id = sock_table_pick(svc);
		fresh = 1;
	}
	if (!id)
		return 0;
	be = bpf_map_lookup_elem(&weir_backends, &id);
	if (!be)
		return 0;
	if ((svc->flags & WEIR_SVC_AFFINITY) && fresh) {
		struct affinity_value av = { .last_used = now, .backend_id = id };

		bpf_map_update_elem(&weir_affinity, &ak, &av, BPF_ANY);
	}
	*backend_id = id;
	return be;
}

/* Remembers, per socket, which service address a backend stands for, so
 * recvmsg and getpeername can show the client what it dialled. Writes
 * only when the entry is new or changed: an unconnected UDP socket calls
 * this for every datagram. */
static __always_inline void sock_revnat_store(void *ctx, const struct backend_value *be,
					      const struct service_key *key, __u32 frontend_id)
{
	struct sock_revnat_key rk = {};
	struct sock_revnat_value rv = {};
	struct sock_revnat_value *old;

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	rk.port = be->port;
	__builtin_memcpy(rv.addr, key->addr, sizeof(rv.addr));
	rv.port = key->port;
	rv.frontend_id = frontend_id;

	old = bpf_map_lookup_elem(&weir_sock_revnat, &rk);
	if (old && old->frontend_id == frontend_id && old->port == rv.port &&
	    sock_addr_eq(old->addr, rv.addr))
		return;
	bpf_map_update_elem(&weir_sock_revnat, &rk, &rv, BPF_ANY);
}

/* A connected socket keeps its reverse NAT in its own local storage: no
 * hash map write per connection, and nothing left behind when it closes.
 * The write is skipped when unchanged (a UDP socket connecting again). */
static __always_inline void sock_peer_store(struct bpf_sock_addr *ctx, const struct backend_value *be,
					    const struct service_key *key, __u32 frontend_id)
{
	struct sock_peer *sp;

	sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sp)
		return;
	__builtin_memcpy(sp->backend, be->addr, sizeof(sp->backend));
	__builtin_memcpy(sp->frontend, key->addr, sizeof(sp->frontend));
	sp->backend_port = be->port;
	sp->frontend_port = key->port;
	sp->frontend_id = frontend_id;
}

/* The service address a connected socket dialled, if addr:port is the
 * backend it was sent to. */
static __always_inline struct sock_peer *sock_peer_lookup(struct bpf_sock_addr *ctx, const __u8 *addr,
							  __be16 port)
{
	struct sock_peer *sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, 0);

	if (sp && sp->backend_port == port && sock_addr_eq(sp->backend, addr))
		return sp;
	return 0;
}

static __always_inline struct sock_revnat_value *sock_revnat_lookup(void *ctx, const __u8 *addr,
								     __be16 port)
{
	struct sock_revnat_key rk = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, addr, sizeof(rk.addr));
	rk.port = port;
	return bpf_map_lookup_elem(&weir_sock_revnat, &rk);
}

#endif
