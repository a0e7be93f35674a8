/* Maps private to the XDP object: not pinned, not shared, recreated with
 * every load. The shared maps are in maps.h. */
#ifndef WEIR_XDP_MAPS_H
#define WEIR_XDP_MAPS_H

#include "common.h"
#include "stages.h"
#include "types.h"

/* The load balancer as a stage program, defined in xdp_lb.c. */
int weir_stage_lb(struct xdp_md *ctx);

/* Tail-call slots of the plug-in stages (WEIR_STAGE_*). WEIR_STAGE_LB
 * always holds the load balancer (filled at load), so a pre-LB stage can
 * hand packets back; the other slots are filled by whoever ships a
 * stage. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, WEIR_STAGE_SLOTS);
	__type(key, __u32);
	__array(values, int(struct xdp_md *));
} weir_stages SEC(".maps") = {
	.values = { [WEIR_STAGE_LB] = (void *)&weir_stage_lb },
};

/* Stages switched on (WEIR_STAGE_BIT of each). A global in .data so the
 * agent flips bits through the mmapped map without reloading anything;
 * the source-range check is on by default. */
__u32 weir_stages_enabled = WEIR_STAGE_BIT(WEIR_STAGE_SOURCE_RANGES);

/* A new flow's conntrack entry while the forward fills in its next hop,
 * before it is written to weir_ct (slot 0, per CPU): the stack has no
 * room for it beside the forward's FIB parameters (512 bytes for the
 * program and the functions it calls). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_value);
} weir_ct_new SEC(".maps");

/* Per-CPU token bucket bounding the event rate. */
struct event_budget {
	__u64 ms; /* the millisecond the tokens belong to */
	__u32 tokens; /* events left in that millisecond */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
} weir_event_budget SEC(".maps");

#endif
