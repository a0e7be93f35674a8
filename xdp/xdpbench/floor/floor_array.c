//go:build ignore

/* floor_array: parse, one array lookup indexed by (source port & 1023),
 * swap MACs, XDP_TX. No hash. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct slot {
	__be32 backend;
	__u32 flags;
	__u8 rest[56];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

SEC("xdp")
int floor_array(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__be16 *ports;
	struct slot *s;
	__u32 ihl, idx;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return XDP_PASS;
	ports = (void *)ip + ihl;
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)ports + sizeof(struct tcphdr) > data_end)
			return XDP_PASS;
	} else if (ip->protocol == IPPROTO_UDP) {
		if ((void *)ports + sizeof(struct udphdr) > data_end)
			return XDP_PASS;
	} else {
		return XDP_PASS;
	}

	idx = bpf_ntohs(ports[0]) & 1023;
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!s)
		return XDP_ABORTED;
	if (s->flags) /* use the value */
		return XDP_DROP;

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
	return XDP_TX;
}
