/* ClientIP session affinity for XDP: (service, client address) -> the
 * backend its last new flow used, valid for the service's timeout and as
 * long as that backend still takes new flows. */
#ifndef WEIR_AFFINITY_H
#define WEIR_AFFINITY_H

#include "common.h"
#include "conntrack.h"
#include "maps.h"
#include "parse.h"

#define WEIR_NSEC_PER_SEC 1000000000ULL

static __always_inline void affinity_key_from(struct affinity_key *k, const struct service_value *svc,
					      const struct pkt *p)
{
	k->netns_cookie = 0;
	k->service_id = svc->service_id;
	k->pad = 0;
	__builtin_memcpy(k->client, p->saddr.b, 16);
}

/* affinity_get returns the client's backend, or 0 when it has none, it
 * expired, or the backend no longer takes new flows. */
static __always_inline __u32 affinity_get(const struct service_value *svc, const struct pkt *p, __u64 now)
{
	struct affinity_key k;
	struct affinity_value *v;
	struct backend_value *be;
	__u32 id;

	affinity_key_from(&k, svc, p);
	v = bpf_map_lookup_elem(&weir_affinity, &k);
	if (!v)
		return 0;
	if (lb_age(now, v->last_used) > (__s64)((__u64)svc->affinity_timeout * WEIR_NSEC_PER_SEC))
		return 0;
	id = v->backend_id;
	be = bpf_map_lookup_elem(&weir_backends, &id);
	if (!be || be->state != WEIR_BACKEND_ACTIVE || be->service_id != svc->service_id)
		return 0;
	return id;
}

static __always_inline void affinity_put(const struct service_value *svc, const struct pkt *p, __u32 backend_id,
					 __u64 now)
{
	struct affinity_key k;
	struct affinity_value v = { .last_used = now, .backend_id = backend_id };

	affinity_key_from(&k, svc, p);
	bpf_map_update_elem(&weir_affinity, &k, &v, BPF_ANY);
}

#endif
