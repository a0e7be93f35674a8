/* Counters and events of the XDP program. Counters are per-CPU (no
 * atomics); events go to the shared ring buffer through a per-CPU token
 * bucket so a flood of drops can't flood the agent: what doesn't fit is
 * counted in weir_events_lost. */
#ifndef WEIR_STATS_H
#define WEIR_STATS_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "xdp_config.h"
#include "xdp_maps.h"

#define WEIR_NSEC_PER_MSEC 1000000ULL

static __always_inline void stats_add(void *map, __u32 id, __u32 bytes)
{
	struct traffic_stats *s = bpf_map_lookup_elem(map, &id);

	if (s) {
		s->packets++;
		s->bytes += bytes;
	}
}

/* event_take takes one token of this CPU's bucket. */
static __always_inline int event_take(__u64 now)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&weir_event_budget, &zero);
	__u64 ms = now / WEIR_NSEC_PER_MSEC;

	if (!b)
		return 0;
	if (b->ms != ms) {
		b->ms = ms;
		b->tokens = cfg_events_per_ms;
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

static __always_inline void event_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&weir_events_lost, &zero);

	if (n)
		(*n)++;
}

/* emit_event writes an event about p, within the rate bound. */
static __attribute__((noinline)) void emit_event(const struct pkt *p, __u8 type, __u8 reason, __u32 service_id,
						 __u32 backend_id)
{
	__u64 now = bpf_ktime_get_ns();
	struct event ev = {
		.timestamp = now,
		.ifindex = p->ifindex,
		.service_id = service_id,
		.backend_id = backend_id,
		.type = type,
		.reason = reason,
		.proto = p->proto,
		.sport = p->sport,
		.dport = p->dport,
	};

	if (!event_take(now)) {
		event_lost();
		return;
	}
	__builtin_memcpy(ev.saddr, p->saddr.b, 16);
	__builtin_memcpy(ev.daddr, p->daddr.b, 16);
	if (bpf_ringbuf_output(&weir_events, &ev, sizeof(ev), 0))
		event_lost();
}

/* count_drop counts a dropped (or rejected) packet under reason and reports it.
 * It returns verdict, so callers can `return count_drop(...)`. */
static __always_inline int count_drop(const struct pkt *p, __u8 reason, __u32 service_id, int verdict)
{
	stats_add(&weir_drops, reason, p->len);
	emit_event(p, WEIR_EVENT_DROP, reason, service_id, 0);
	return verdict;
}

/* new_flow_event reports a new flow, one in cfg_new_flow_sample. */
static __always_inline void new_flow_event(const struct pkt *p, __u32 service_id, __u32 backend_id)
{
	__u32 n = cfg_new_flow_sample;

	if (n && bpf_get_prandom_u32() % n == 0)
		emit_event(p, WEIR_EVENT_NEW_FLOW, WEIR_REASON_NONE, service_id, backend_id);
}

#endif
