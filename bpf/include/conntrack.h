/* Connection tracking for XDP: the client's 5-tuple as it arrived -> the
 * backend (and SNAT port) its flow uses, so flows survive changes of the
 * backend set. Entries live in an LRU map; an entry idle for longer than
 * the protocol's timeout no longer pins its backend. last_seen is written
 * at most once per second per flow to keep the established path free of
 * cache-line bouncing. */
#ifndef WEIR_CONNTRACK_H
#define WEIR_CONNTRACK_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "xdp_config.h"

/* ct_value.flags */
#define WEIR_CT_F_SNAT 1 /* the flow was source-NATed (nat_port is its port) */

#define WEIR_CT_REFRESH_NS 1000000000ULL

/* lb_now is the clock of the load balancer's idle timers: the coarse
 * monotonic clock (CLOCK_MONOTONIC as of the last tick). Its resolution,
 * a tick (1-4 ms), is far finer than any timer it serves (the 1 s
 * refresh, timeouts of seconds), and it reads no clock source: on this
 * machine class (a KVM guest) the TSC read of bpf_ktime_get_ns was ~3% of
 * a new flow's time in perf. Ages against it are compared signed
 * (lb_age): a time from the precise clock (written by the agent or a
 * test) may be up to a tick ahead of it. */
static __always_inline __u64 lb_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* lb_age is how long before now t was; negative when t is ahead of now. */
static __always_inline __s64 lb_age(__u64 now, __u64 t)
{
	return (__s64)(now - t);
}

static __always_inline void ct_key_from(struct ct_key *k, const struct pkt *p)
{
	__builtin_memcpy(k->saddr, p->saddr.b, 16);
	__builtin_memcpy(k->daddr, p->daddr.b, 16);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->pad[0] = 0;
	k->pad[1] = 0;
	k->pad[2] = 0;
}

static __always_inline __u64 ct_timeout(__u8 proto)
{
	return proto == IPPROTO_TCP ? cfg_ct_timeout_tcp_ns : cfg_ct_timeout_other_ns;
}

/* ct_stale reports whether an entry has been idle past its timeout. */
static __always_inline int ct_stale(const struct ct_value *ct, __u8 proto, __u64 now)
{
	return lb_age(now, ct->last_seen) > (__s64)ct_timeout(proto);
}

/* ct_touch refreshes last_seen when it is more than a second old, and
 * reports whether it did (callers refresh dependent state then too). */
static __always_inline int ct_touch(struct ct_value *ct, __u64 now)
{
	if (lb_age(now, ct->last_seen) < (__s64)WEIR_CT_REFRESH_NS)
		return 0;
	ct->last_seen = now;
	return 1;
}

#endif
