/* Per-node settings of the XDP program: volatile consts that the loader
 * (xdp.Config) sets in the object before it is loaded, so one compiled
 * object serves every node. Addresses and masks are in network byte order
 * as they appear in packets; ports and counts in host order. Only
 * bpf/xdp_lb.c includes this header. */
#ifndef WEIR_XDP_CONFIG_H
#define WEIR_XDP_CONFIG_H

#include "common.h"

/* SNAT source addresses. A zero address means "no SNAT for this family":
 * SNAT flows of that family are dropped with WEIR_REASON_UNSUPPORTED. */
volatile const __be32 cfg_snat4 = 0;
volatile const __be32 cfg_snat6[4] = { 0, 0, 0, 0 };

/* SNAT source ports are allocated in [min, max]. */
volatile const __u16 cfg_snat_port_min = 32768;
volatile const __u16 cfg_snat_port_max = 60999;

/* Outer source of DSR packets: net | (hash(client addr, port) & hostmask).
 * A per-flow source spreads the flows over the receivers' RSS queues.
 * Defaults: 172.16.0.0/16 and fd00:77:65:69:72::/80 (hash in the last 32
 * bits). */
volatile const __be32 cfg_encap4_net = __bpf_constant_htonl(0xac100000);
volatile const __be32 cfg_encap4_hostmask = __bpf_constant_htonl(0x0000ffff);
volatile const __be32 cfg_encap6_net[4] = {
	__bpf_constant_htonl(0xfd000077), __bpf_constant_htonl(0x00650069),
	__bpf_constant_htonl(0x00720000), 0,
};
volatile const __be32 cfg_encap6_hostmask = 0xffffffff;

/* Idle time after which a conntrack entry no longer pins its backend. */
volatile const __u64 cfg_ct_timeout_tcp_ns = 21600ULL * 1000000000ULL;
volatile const __u64 cfg_ct_timeout_other_ns = 60ULL * 1000000000ULL;

/* At most this many events per millisecond per CPU reach the ring buffer;
 * the rest are counted in weir_events_lost. */
volatile const __u32 cfg_events_per_ms = 32;

/* One new flow in cfg_new_flow_sample emits WEIR_EVENT_NEW_FLOW; 0 = off. */
volatile const __u32 cfg_new_flow_sample = 0;

#endif
