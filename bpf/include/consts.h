/* Tunables. Every value can be overridden with -D at build time; per-node
 * settings that change without a rebuild are volatile consts in the
 * programs instead. Map sizes here are defaults: the agent resizes maps
 * from its flags before loading. */
#ifndef WEIR_CONSTS_H
#define WEIR_CONSTS_H

#ifndef WEIR_MAX_SERVICES
#define WEIR_MAX_SERVICES 65536 /* service keys and service IDs */
#endif
#ifndef WEIR_MAX_FRONTENDS
#define WEIR_MAX_FRONTENDS 65536
#endif
#ifndef WEIR_MAX_BACKENDS
#define WEIR_MAX_BACKENDS 262144
#endif
#ifndef WEIR_MAX_SOURCE_RANGES
#define WEIR_MAX_SOURCE_RANGES 16384
#endif
#ifndef WEIR_CT_SIZE
#define WEIR_CT_SIZE 524288
#endif
#ifndef WEIR_AFFINITY_SIZE
#define WEIR_AFFINITY_SIZE 65536
#endif
#ifndef WEIR_SNAT_SIZE
#define WEIR_SNAT_SIZE 262144
#endif
#ifndef WEIR_SOCK_REVNAT_SIZE
#define WEIR_SOCK_REVNAT_SIZE 262144
#endif
#ifndef WEIR_EVENTS_SIZE
#define WEIR_EVENTS_SIZE (1 << 20) /* ring buffer bytes */
#endif

/* Maglev slots per element of the slab array: a cache line each. */
#define WEIR_MAGLEV_SLOTS_PER_ELEM 16

#define WEIR_NAME_LEN 128
#define WEIR_PORT_NAME_LEN 32

/* Scope of a service key: which datapath looks it up. */
#define WEIR_SCOPE_EXTERNAL 0
#define WEIR_SCOPE_INTERNAL 1

/* Load-balancing mode of a service entry. */
#define WEIR_MODE_DSR 0
#define WEIR_MODE_SNAT 1
#define WEIR_MODE_HYBRID 2

/* Service flags. */
#define WEIR_SVC_SOURCE_RANGES (1 << 0)
#define WEIR_SVC_AFFINITY (1 << 1)
#define WEIR_SVC_LOCAL_ONLY (1 << 2)

/* Backend states. */
#define WEIR_BACKEND_ACTIVE 0
#define WEIR_BACKEND_TERMINATING 1
#define WEIR_BACKEND_QUARANTINED 2
/* The bits of a backend's word (weir_backend_words) that hold its state. */
#define WEIR_BACKEND_WORD_STATE 3

/* Drop (and reject) reasons. Every reason is a metric and an event; keep
 * the Go names in bpf/reasons.go in step. */
#define WEIR_REASON_NONE 0
#define WEIR_REASON_MALFORMED 1
#define WEIR_REASON_NO_BACKEND 2
#define WEIR_REASON_SOURCE_RANGE 3
#define WEIR_REASON_FRAG_NEEDED 4
#define WEIR_REASON_NO_ROUTE 5
#define WEIR_REASON_ENCAP_FAILED 6
#define WEIR_REASON_SNAT_NO_PORT 7
#define WEIR_REASON_POLICY 8
#define WEIR_REASON_UNSUPPORTED 9
#define WEIR_REASON_MAX 32

/* Socket load balancer (bpf/sock_lb.c). */
#ifndef WEIR_SOCK_SKIP_CGROUPS_SIZE
#define WEIR_SOCK_SKIP_CGROUPS_SIZE 1024 /* cgroups the socket hooks ignore */
#endif
/* Deepest cgroup level the skip check walks; deeper cgroups are still
 * skipped when one of their first WEIR_SOCK_MAX_CGROUP_DEPTH ancestors is. */
#define WEIR_SOCK_MAX_CGROUP_DEPTH 32

/* XDP datapath (bpf/xdp_lb.c). */
#ifndef WEIR_MAX_NODE_ADDRS
#define WEIR_MAX_NODE_ADDRS 256 /* this node's addresses: DSR decap targets */
#endif

#endif
