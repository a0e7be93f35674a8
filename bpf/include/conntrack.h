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
#define WEIR_CT_F_CLOSING 2 /* TCP: the client sent a FIN or RST */

/* How long a closing TCP flow's entry outlives its last packet, instead
 * of the TCP timeout (hours): long enough for the last retransmissions,
 * short enough that closed connections don't fill the table. */
#define WEIR_CT_CLOSING_NS (10ULL * 1000000000ULL)

#define WEIR_TCP_FIN 0x01
#define WEIR_TCP_SYN 0x02
#define WEIR_TCP_RST 0x04
#define WEIR_TCP_ACK 0x10

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

static __always_inline __u64 ct_timeout(const struct ct_value *ct, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return cfg_ct_timeout_other_ns;
	return ct->flags & WEIR_CT_F_CLOSING ? WEIR_CT_CLOSING_NS : cfg_ct_timeout_tcp_ns;
}

/* ct_stale reports whether an entry has been idle past its timeout. */
static __always_inline int ct_stale(const struct ct_value *ct, __u8 proto, __u64 now)
{
	return lb_age(now, ct->last_seen) > (__s64)ct_timeout(ct, proto);
}

/* ct_tcp_reopens marks a flow closing when its client sends a FIN or RST
 * (DSR shows the load balancer only the client's half), and reports
 * whether the packet opens a new connection on a closing flow's 4-tuple
 * instead: a SYN without ACK after the close, which a client reusing its
 * port sends, and which must be balanced afresh (its old backend may be
 * terminating) rather than follow the old connection. */
static __always_inline int ct_tcp_reopens(struct ct_value *ct, const struct pkt *p)
{
	if (p->proto != IPPROTO_TCP)
		return 0;
	if (ct->flags & WEIR_CT_F_CLOSING)
		return (p->tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN;
	if (p->tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))
		ct->flags |= WEIR_CT_F_CLOSING;
	return 0;
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
