//go:build ignore

/* The north-south XDP datapath: weir_xdp is attached to the node's
 * devices. It runs the pre-LB stage when switched on (a tail call that
 * comes back through weir_stage_lb), otherwise the load balancer inline.
 * The logic is in include/lb.h and the headers it pulls in. */
#include "common.h"
#include "lb.h"

SEC("xdp")
int weir_stage_lb(struct xdp_md *ctx)
{
	return lb_process(ctx);
}

SEC("xdp")
int weir_xdp(struct xdp_md *ctx)
{
	if (weir_stages_enabled & WEIR_STAGE_BIT(WEIR_STAGE_POLICY))
		bpf_tail_call(ctx, &weir_stages, WEIR_STAGE_POLICY);
	return lb_process(ctx);
}

char __license[] SEC("license") = "Dual MIT/GPL";
