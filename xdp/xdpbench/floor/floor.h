/* floor.h: shared parsing for the floor XDP programs (written for this
 * measurement; no code taken from elsewhere). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* Same size (40 bytes) and layout as Weir's struct ct_key. */
struct flow_key {
	__u8 saddr[16]; /* IPv4-mapped: ::ffff:a.b.c.d */
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* 64-byte value. */
struct flow_val {
	__be32 backend;   /* outer destination for the tunnel */
	__u32 flags;
	__u64 created;
	__u8 rest[48];
};

_Static_assert(sizeof(struct flow_key) == 40, "key size");
_Static_assert(sizeof(struct flow_val) == 64, "value size");

/* Parse Ethernet/IPv4/(TCP|UDP) and fill key. Returns 0 on success, -1
 * for anything else (the caller passes it). On success *ipp points at the
 * IPv4 header. */
static __always_inline int parse_v4(struct xdp_md *ctx, struct flow_key *k, struct iphdr **ipp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 ihl;
	__be16 *ports;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -1;
	ports = (void *)ip + ihl;
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)ports + sizeof(struct tcphdr) > data_end)
			return -1;
	} else if (ip->protocol == IPPROTO_UDP) {
		if ((void *)ports + sizeof(struct udphdr) > data_end)
			return -1;
	} else {
		return -1;
	}

	__builtin_memset(k, 0, sizeof(*k));
	k->saddr[10] = 0xff;
	k->saddr[11] = 0xff;
	__builtin_memcpy(&k->saddr[12], &ip->saddr, 4);
	k->daddr[10] = 0xff;
	k->daddr[11] = 0xff;
	__builtin_memcpy(&k->daddr[12], &ip->daddr, 4);
	k->sport = ports[0];
	k->dport = ports[1];
	k->proto = ip->protocol;
	*ipp = ip;
	return 0;
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* The flow map: LRU hash, 524288 entries, as Weir's conntrack. (The
 * FLOW_MAP_* macros exist only for the diagnostic variants built with -D;
 * the defaults are the programs measured.) */
#ifndef FLOW_MAP_TYPE
#define FLOW_MAP_TYPE BPF_MAP_TYPE_LRU_HASH
#endif
#ifndef FLOW_MAP_SIZE
#define FLOW_MAP_SIZE 524288
#endif
#ifndef FLOW_MAP_FLAGS
#define FLOW_MAP_FLAGS 0
#endif
struct {
	__uint(type, FLOW_MAP_TYPE);
	__uint(max_entries, FLOW_MAP_SIZE);
	__uint(map_flags, FLOW_MAP_FLAGS);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

/* A trivial backend pick for a new flow (no extra map): 4 backends
 * 10.64.0.1-4 picked by the source port. */
static __always_inline __be32 pick_backend(const struct flow_key *k)
{
	return bpf_htonl(0x0a400001 + (bpf_ntohs(k->sport) & 3));
}

/* Find the flow, insert it on a miss. Returns the backend. */
static __always_inline __be32 flow_lookup_or_insert(struct flow_key *k)
{
	struct flow_val *v = bpf_map_lookup_elem(&flows, k);
	struct flow_val nv;

	if (v)
		return v->backend;
	__builtin_memset(&nv, 0, sizeof(nv));
	nv.backend = pick_backend(k);
	bpf_map_update_elem(&flows, k, &nv, BPF_ANY);
	return nv.backend;
}

/* Prefill variant support: on the first packet a program's *_full entry
 * point inserts 2 x max_entries synthetic flows (172.16.0.0/12 sources,
 * never used by the harness) through bpf_loop, so the map is full and its
 * entries recycled before any measured flow is inserted. */
#define FILL_COUNT (2 * FLOW_MAP_SIZE)
volatile __u32 filled = 0;

static long fill_one(__u64 i, void *unused)
{
	struct flow_key k;
	struct flow_val v;
	__u32 a = 0xac100000 + (__u32)(i >> 16);

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memset(&v, 0, sizeof(v));
	k.saddr[10] = 0xff;
	k.saddr[11] = 0xff;
	k.saddr[12] = a >> 24;
	k.saddr[13] = a >> 16;
	k.saddr[14] = a >> 8;
	k.saddr[15] = a;
	k.daddr[10] = 0xff;
	k.daddr[11] = 0xff;
	k.daddr[12] = 10;
	k.daddr[13] = 128;
	k.sport = bpf_htons((__u16)i);
	k.dport = bpf_htons(80);
	k.proto = IPPROTO_UDP;
	v.backend = pick_backend(&k);
	bpf_map_update_elem(&flows, &k, &v, BPF_ANY);
	return 0;
}

static __always_inline void prefill_once(void)
{
	if (filled)
		return;
	filled = 1;
	bpf_loop(FILL_COUNT, fill_one, NULL, 0);
}
