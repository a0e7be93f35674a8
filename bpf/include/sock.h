/* Helpers of the socket load balancer (bpf/sock_lb.c): address
 * conversion, backend selection, reverse NAT bookkeeping and counters.
 * Only sock_lb.c includes this header. Its one map of its own,
 * weir_sock_peer_slots, is pinned by sockmap.Load beside the shared maps
 * of maps.h (no other program uses it). */
#ifndef WEIR_SOCK_H
#define WEIR_SOCK_H

#include "common.h"
#include "maglev.h"
#include "maps.h"

/* Errors the hooks hand to the caller through bpf_set_retval (negated).
 * Defined here because the UAPI errno headers drag in libc ones. */
#define WEIR_ECONNREFUSED 111
#define WEIR_EADDRINUSE 98

#define WEIR_NSEC_PER_SEC 1000000000ULL

/* Slots of weir_sock_peer_slots: a power of two, the index is the socket
 * cookie's low bits. 262144 slots of 48 bytes: 12 MiB. */
#ifndef WEIR_SOCK_PEER_SLOTS
#define WEIR_SOCK_PEER_SLOTS 262144
#endif

/* A TCP connection's reverse NAT at the slot of its socket cookie;
 * cookie says whose it is (0: being written). */
struct sock_peer_slot {
	__u64 cookie;
	struct sock_peer peer;
};

/* TCP connections' reverse NAT, for getpeername, at slot cookie mod size:
 * a connect writes here rather than allocating socket storage (two slab
 * allocations, most of a translated connect's cost), and the socket's
 * first getpeername copies its slot into weir_sock_peer. A slot is taken
 * over once the kernel has handed out WEIR_SOCK_PEER_SLOTS more socket
 * cookies: a socket that had not asked by then sees its backend. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_SOCK_PEER_SLOTS);
	__type(key, __u32);
	__type(value, struct sock_peer_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_peer_slots SEC(".maps");

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
	return maglev_pick(svc, bpf_get_prandom_u32());
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

static __always_inline void sock_peer_fill(struct sock_peer *sp, const struct backend_value *be,
					   const struct service_key *key, __u32 frontend_id)
{
	__builtin_memcpy(sp->backend, be->addr, sizeof(sp->backend));
	__builtin_memcpy(sp->frontend, key->addr, sizeof(sp->frontend));
	sp->backend_port = be->port;
	sp->frontend_port = key->port;
	sp->frontend_id = frontend_id;
}

/* A connected UDP socket keeps its reverse NAT in its own local storage
 * (recvmsg reads it for every datagram): nothing left behind when it
 * closes. Rewritten when the socket connects again. */
static __always_inline void sock_peer_store(struct bpf_sock_addr *ctx, const struct backend_value *be,
					    const struct service_key *key, __u32 frontend_id)
{
	struct sock_peer *sp;

	sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (sp)
		sock_peer_fill(sp, be, key, frontend_id);
}

/* Keeps the compiler from moving memory accesses across it. */
#define sock_barrier() __asm__ __volatile__("" ::: "memory")

static __always_inline struct sock_peer_slot *sock_peer_slot(__u64 cookie)
{
	__u32 idx = (__u32)cookie & (WEIR_SOCK_PEER_SLOTS - 1);

	return bpf_map_lookup_elem(&weir_sock_peer_slots, &idx);
}

/* A TCP socket's reverse NAT goes into its cookie's slot: a plain array
 * write, where socket storage would cost two slab allocations per
 * connection, most of a translated connect's cost. The slot's cookie is 0
 * while it is written, so a reader that races with a socket taking the
 * slot over sees the change (stores and loads keep their order on x86;
 * sock_barrier keeps the compiler's). A socket connecting again (TCP after
 * a disconnect) may already have socket storage: it is kept current. */
static __always_inline void sock_peer_slot_store(struct bpf_sock_addr *ctx, const struct backend_value *be,
						 const struct service_key *key, __u32 frontend_id)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_peer_slot *slot = sock_peer_slot(cookie);
	struct sock_peer *sp;

	if (slot) {
		slot->cookie = 0;
		sock_barrier();
		sock_peer_fill(&slot->peer, be, key, frontend_id);
		sock_barrier();
		slot->cookie = cookie;
	}
	sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, 0);
	if (sp)
		sock_peer_fill(sp, be, key, frontend_id);
}

/* Copies the socket's slot into out if the slot is still the socket's
 * (checked before and after the copy). */
static __always_inline int sock_peer_slot_read(void *ctx, struct sock_peer *out)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_peer_slot *slot = sock_peer_slot(cookie);

	if (!slot || slot->cookie != cookie)
		return 0;
	sock_barrier();
	__builtin_memcpy(out, &slot->peer, sizeof(*out));
	sock_barrier();
	return slot->cookie == cookie;
}

static __always_inline int sock_peer_is(const struct sock_peer *sp, const __u8 *addr, __be16 port)
{
	return sp->backend_port == port && sock_addr_eq(sp->backend, addr);
}

/* The reverse NAT of a connected socket into out, if addr:port is the
 * backend it was sent to: from its socket storage, or, when slots is set
 * (TCP), from its cookie's slot. A slot found is copied into socket
 * storage, so that the answer outlives the slot. */
static __always_inline int sock_peer_find(struct bpf_sock_addr *ctx, const __u8 *addr, __be16 port,
					  int slots, struct sock_peer *out)
{
	struct sock_peer *sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, 0);

	if (sp) {
		if (!sock_peer_is(sp, addr, port))
			return 0;
		__builtin_memcpy(out, sp, sizeof(*out));
		return 1;
	}
	if (!slots || !sock_peer_slot_read(ctx, out) || !sock_peer_is(out, addr, port))
		return 0;
	sp = bpf_sk_storage_get(&weir_sock_peer, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (sp)
		__builtin_memcpy(sp, out, sizeof(*sp));
	return 1;
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
