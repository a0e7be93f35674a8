//go:build ignore

/* The east-west socket load balancer: cgroup v2 hooks that translate a
 * service address to a backend when a socket connects (or an unconnected
 * UDP socket sends), and translate back where the kernel shows the peer
 * to the application (UDP recvmsg, getpeername). No packet is ever
 * rewritten: the socket itself talks to the backend.
 *
 * Verdicts: 1 lets the syscall go on (translated or untouched); 0 fails it
 * with the errno set by bpf_set_retval (ECONNREFUSED for a service without
 * backends, EADDRINUSE for a bind to a service address).
 *
 * Counters: every translation adds one to weir_service_stats[service] and
 * weir_backend_stats[backend] (packets only, bytes stay 0: the hooks see
 * connections and datagrams, not traffic); every refused connect or send
 * adds one to weir_drops[reason]. A refused bind counts nowhere: it is the
 * application's error, reported to it as EADDRINUSE. */
#include "common.h"
#include "maps.h"
#include "sock.h"

/* Per-node switches, set by the loader (sockmap.Config). */

/* Network namespace cookie the hooks act in; 0 acts in every namespace.
 * Set to the host's to leave pods with their own network namespace to
 * another datapath (kube-proxy style "host network namespace only"). */
volatile const __u64 host_netns_cookie = 0;

/* Non-zero when weir_sock_skip_cgroups may hold entries; saves the walk up
 * the cgroup tree on every connect when nothing is skipped. */
volatile const __u32 skip_cgroups = 0;

/* Non-zero to record, per TCP connection, the service address it was
 * dialled through, so getpeername shows it (a write to
 * weir_sock_peer_slots); without it getpeername on a TCP socket shows the
 * backend. UDP always records: resolvers check the source address of
 * replies. */
volatile const __u32 tcp_peer_name = 1;

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

static __always_inline int sock_skip_cgroup(void)
{
	/* The caller's cgroup and each ancestor up to the root's child: a
	 * skipped cgroup covers its whole subtree, as the hooks themselves
	 * are inherited by the subtree. Level 0 is the root, never skipped. */
	for (int level = 1; level <= WEIR_SOCK_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&weir_sock_skip_cgroups, &id))
			return 1;
	}
	return 0;
}

/* Whether this socket is outside the load balancer's reach. */
static __always_inline int sock_ignored(void *ctx)
{
	if (host_netns_cookie && bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return 1;
	if (skip_cgroups && sock_skip_cgroup())
		return 1;
	return 0;
}

static __always_inline int sock_reject(__u32 reason, int err)
{
	sock_count(&weir_drops, reason);
	bpf_set_retval(-err);
	return 0;
}

/* Forward translation shared by connect and sendmsg of both families.
 * key holds the destination as the application gave it (IPv4-mapped for
 * AF_INET); client is the socket's bound address or zero. */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, struct service_key *key,
					  const __u8 *client, int family, int connect)
{
	struct service_value *svc;
	struct backend_value *be;
	__u32 backend_id = 0;

	svc = bpf_map_lookup_elem(&weir_services, key);
	if (!svc) {
		/* A UDP socket may connect again, elsewhere: forget what its
		 * previous translated peer was. */
		if (connect && key->proto == IPPROTO_UDP)
			bpf_sk_storage_delete(&weir_sock_peer, ctx->sk);
		return 1;
	}
	if (!svc->backends)
		return sock_reject(WEIR_REASON_NO_BACKEND, WEIR_ECONNREFUSED);
	be = sock_select_backend(ctx, svc, client, &backend_id);
	if (!be)
		return sock_reject(WEIR_REASON_NO_BACKEND, WEIR_ECONNREFUSED);

	if (family == AF_INET) {
		/* An AF_INET socket can't reach an IPv6 backend. */
		if (!sock_addr_is_v4(be->addr))
			return sock_reject(WEIR_REASON_UNSUPPORTED, WEIR_ECONNREFUSED);
		ctx->user_ip4 = sock_addr_v4(be->addr);
	} else {
		/* An IPv4 backend stays IPv4-mapped: the kernel then takes the
		 * IPv4 path of the IPv6 socket. */
		sock_addr_to_ctx6(ctx, be->addr);
	}
	ctx->user_port = (__u32)be->port;

	if (!connect)
		sock_revnat_store(ctx, be, key, svc->frontend_id);
	else if (key->proto != IPPROTO_TCP)
		sock_peer_store(ctx, be, key, svc->frontend_id);
	else if (tcp_peer_name)
		sock_peer_slot_store(ctx, be, key, svc->frontend_id);
	sock_count(&weir_service_stats, svc->service_id);
	sock_count(&weir_backend_stats, backend_id);
	return 1;
}

static __always_inline int sock_fwd4(struct bpf_sock_addr *ctx, int connect)
{
	struct service_key key = {};
	__u8 client[16];
	struct bpf_sock *sk;

	if (sock_ignored(ctx))
		return 1;
	sock_addr_from_v4(key.addr, ctx->user_ip4);
	key.port = (__be16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	key.scope = WEIR_SCOPE_INTERNAL;

	__builtin_memset(client, 0, sizeof(client));
	sk = ctx->sk;
	if (sk && sk->src_ip4)
		sock_addr_from_v4(client, sk->src_ip4);
	return sock_xlate_fwd(ctx, &key, client, AF_INET, connect);
}

static __always_inline int sock_fwd6(struct bpf_sock_addr *ctx, int connect)
{
	struct service_key key = {};
	struct sock_addr6 client = {};
	struct bpf_sock *sk;

	if (sock_ignored(ctx))
		return 1;
	/* IPv4-mapped destinations need nothing special: the keys of IPv4
	 * services are IPv4-mapped already. */
	sock_addr_from_ctx6(key.addr, ctx);
	key.port = (__be16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	key.scope = WEIR_SCOPE_INTERNAL;

	sk = ctx->sk;
	if (sk) {
		client.w[0] = sk->src_ip6[0];
		client.w[1] = sk->src_ip6[1];
		client.w[2] = sk->src_ip6[2];
		client.w[3] = sk->src_ip6[3];
	}
	return sock_xlate_fwd(ctx, &key, (const __u8 *)&client, AF_INET6, connect);
}

/* Reverse translation: the peer the kernel reports is a backend this
 * socket was sent to by sock_xlate_fwd; find the service address it stands
 * for, in the socket's storage or slot (connected) or weir_sock_revnat
 * (datagrams sent unconnected; only UDP has those). No netns or cgroup
 * check: entries exist only for sockets that were translated. */
static __always_inline int sock_rev_find(struct bpf_sock_addr *ctx, const __u8 *addr, __be16 port,
					 __u8 *frontend, __be16 *frontend_port)
{
	struct sock_revnat_value *rv;
	struct sock_peer peer;
	int tcp = ctx->protocol == IPPROTO_TCP;

	if (sock_peer_find(ctx, addr, port, tcp && tcp_peer_name, &peer)) {
		__builtin_memcpy(frontend, peer.frontend, 16);
		*frontend_port = peer.frontend_port;
		return 1;
	}
	if (ctx->protocol != IPPROTO_UDP)
		return 0;
	rv = sock_revnat_lookup(ctx, addr, port);
	if (!rv)
		return 0;
	__builtin_memcpy(frontend, rv->addr, 16);
	*frontend_port = rv->port;
	return 1;
}

static __always_inline int sock_rev4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16], frontend[16];
	__be16 port = 0;

	sock_addr_from_v4(addr, ctx->user_ip4);
	if (sock_rev_find(ctx, addr, (__be16)ctx->user_port, frontend, &port) && sock_addr_is_v4(frontend)) {
		ctx->user_ip4 = sock_addr_v4(frontend);
		ctx->user_port = (__u32)port;
	}
	return 1;
}

static __always_inline int sock_rev6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16], frontend[16];
	__be16 port = 0;

	sock_addr_from_ctx6(addr, ctx);
	if (sock_rev_find(ctx, addr, (__be16)ctx->user_port, frontend, &port)) {
		sock_addr_to_ctx6(ctx, frontend);
		ctx->user_port = (__u32)port;
	}
	return 1;
}

/* A bind to a specific address and port that a service owns would steal
 * or shadow the service's traffic; the wildcard address is allowed (it is
 * how node servers listen). Both scopes count: an external-only frontend
 * (a LoadBalancer IP handled by XDP) is as much the service's. */
static __always_inline int sock_bind_check(struct service_key *key)
{
	if (sock_addr_is_any(key->addr) || (sock_addr_is_v4(key->addr) && !sock_addr_v4(key->addr)))
		return 1;
	key->scope = WEIR_SCOPE_INTERNAL;
	if (bpf_map_lookup_elem(&weir_services, key))
		goto refuse;
	key->scope = WEIR_SCOPE_EXTERNAL;
	if (bpf_map_lookup_elem(&weir_services, key))
		goto refuse;
	return 1;
refuse:
	/* Not a drop: no weir_drops count, the application sees the errno. */
	bpf_set_retval(-WEIR_EADDRINUSE);
	return 0;
}

SEC("cgroup/connect4")
int weir_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_fwd4(ctx, 1);
}

SEC("cgroup/connect6")
int weir_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock_fwd6(ctx, 1);
}

SEC("cgroup/sendmsg4")
int weir_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_fwd4(ctx, 0);
}

SEC("cgroup/sendmsg6")
int weir_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_fwd6(ctx, 0);
}

SEC("cgroup/recvmsg4")
int weir_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_rev4(ctx);
}

SEC("cgroup/recvmsg6")
int weir_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_rev6(ctx);
}

SEC("cgroup/getpeername4")
int weir_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_rev4(ctx);
}

SEC("cgroup/getpeername6")
int weir_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_rev6(ctx);
}

SEC("cgroup/post_bind4")
int weir_sock_post_bind4(struct bpf_sock *ctx)
{
	struct service_key key = {};

	if (sock_ignored(ctx))
		return 1;
	sock_addr_from_v4(key.addr, ctx->src_ip4);
	key.port = bpf_htons((__u16)ctx->src_port); /* host order in bpf_sock */
	key.proto = (__u8)ctx->protocol;
	return sock_bind_check(&key);
}

SEC("cgroup/post_bind6")
int weir_sock_post_bind6(struct bpf_sock *ctx)
{
	struct service_key key = {};
	struct sock_addr6 a;

	if (sock_ignored(ctx))
		return 1;
	a.w[0] = ctx->src_ip6[0];
	a.w[1] = ctx->src_ip6[1];
	a.w[2] = ctx->src_ip6[2];
	a.w[3] = ctx->src_ip6[3];
	__builtin_memcpy(key.addr, &a, sizeof(a));
	key.port = bpf_htons((__u16)ctx->src_port);
	key.proto = (__u8)ctx->protocol;
	return sock_bind_check(&key);
}

char __license[] SEC("license") = "Dual MIT/GPL";
