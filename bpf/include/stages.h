/* Plug-in stages of the XDP program. A stage is switched on or off per
 * node at run time by one bit of weir_stages_enabled (a global in .data,
 * written by the agent through the mmapped map); the entry reads it with
 * a plain load, so a switched-off stage costs one load and a branch.
 *
 * Slots (tail calls through weir_stages):
 *   WEIR_STAGE_POLICY   before load balancing. Its program ends with a
 *                       tail call to WEIR_STAGE_LB (or returns a verdict).
 *   WEIR_STAGE_LB       the load balancer itself (weir_stage_lb), always
 *                       present so a pre-LB stage can hand over.
 *   WEIR_STAGE_OVERLAY  after load balancing, on a packet ready to leave
 *                       (rewritten, MACs set): it may re-encapsulate and
 *                       returns the verdict.
 * Flags (no slot, checked inline):
 *   WEIR_STAGE_SOURCE_RANGES  enforce services' source ranges (on by
 *                             default). */
#ifndef WEIR_STAGES_H
#define WEIR_STAGES_H

#define WEIR_STAGE_POLICY 0
#define WEIR_STAGE_LB 1
#define WEIR_STAGE_OVERLAY 2
#define WEIR_STAGE_SLOTS 3
#define WEIR_STAGE_SOURCE_RANGES 3

#define WEIR_STAGE_BIT(s) (1U << (s))

#endif
