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

/* emit_event writes an event about p, within the rate bound. The event
 * is built in place in the ring buffer: a copy on the stack would take
 * room the load balancer's deepest path needs (the stack of a program
 * and the functions it calls is 512 bytes in all). */
static __attribute__((noinline)) void emit_event(const struct pkt *p, __u8 type, __u8 reason, __u32 service_id,
						 __u32 backend_id)
{
	__u64 now = bpf_ktime_get_ns();
	struct event *ev;

	if (!event_take(now)) {
		event_lost();
		return;
	}
	ev = bpf_ringbuf_reserve(&weir_events, sizeof(*ev), 0);
	if (!ev) {
		event_lost();
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp = now;
	ev->ifindex = p->ifindex;
	ev->service_id = service_id;
	ev->backend_id = backend_id;
	ev->type = type;
	ev->reason = reason;
	ev->proto = p->proto;
	ev->sport = p->sport;
	ev->dport = p->dport;
	__builtin_memcpy(ev->saddr, p->saddr.b, 16);
	__builtin_memcpy(ev->daddr, p->daddr.b, 16);
	bpf_ringbuf_submit(ev, 0);
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
