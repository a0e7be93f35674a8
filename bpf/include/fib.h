/* Next-hop resolution with bpf_fib_lookup and the final forward: MACs from
 * the FIB, XDP_TX when the egress device is the ingress one, a redirect
 * otherwise. The lookup is a forwarding lookup, so the node must have IP
 * forwarding enabled on its devices (it also forwards what XDP passes
 * when the neighbour is not resolved yet). */
#ifndef WEIR_FIB_H
#define WEIR_FIB_H

#include "common.h"
#include "parse.h"
#include "stages.h"
#include "xdp_maps.h"

#define WEIR_AF_INET 2
#define WEIR_AF_INET6 10

/* fib_lookup resolves dst (from src) for an L3 packet of tot_len bytes.
 * It returns a BPF_FIB_LKUP_RET_* code (or a negative error). */
static __always_inline int fib_lookup(struct xdp_md *ctx, struct bpf_fib_lookup *fib, const union addr *src,
				      const union addr *dst, __u8 l4proto, __u32 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = l4proto;
	fib->tot_len = tot_len;
	if (addr_is4(dst)) {
		fib->family = WEIR_AF_INET;
		fib->ipv4_src = src->w[3];
		fib->ipv4_dst = dst->w[3];
	} else {
		fib->family = WEIR_AF_INET6;
		__builtin_memcpy(fib->ipv6_src, src->b, 16);
		__builtin_memcpy(fib->ipv6_dst, dst->b, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* fwd_out sets the MACs of a rewritten packet and sends it. With the
 * overlay stage on, the stage gets the packet and returns the verdict. */
static __always_inline int fwd_out(struct xdp_md *ctx, const struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (weir_stages_enabled & WEIR_STAGE_BIT(WEIR_STAGE_OVERLAY))
		bpf_tail_call(ctx, &weir_stages, WEIR_STAGE_OVERLAY);
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}

#endif
