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
	return now - ct->last_seen > ct_timeout(proto);
}

/* ct_touch refreshes last_seen when it is more than a second old, and
 * reports whether it did (callers refresh dependent state then too). */
static __always_inline int ct_touch(struct ct_value *ct, __u64 now)
{
	if (now - ct->last_seen < WEIR_CT_REFRESH_NS)
		return 0;
	ct->last_seen = now;
	return 1;
}

#endif
