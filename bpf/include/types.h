/* Keys and values of the maps shared by all programs. Addresses are 16
 * bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so one layout serves
 * both families and IPv4-mapped IPv6 sockets need no translation. Ports are
 * in network byte order. Every struct has a Go mirror in bpf/types.go. */
#ifndef WEIR_TYPES_H
#define WEIR_TYPES_H

#include "consts.h"

struct service_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 scope;
};

struct service_value {
	__u32 service_id;
	__u32 frontend_id;
	__u32 backends; /* backends that take new flows; 0 rejects */
	__u32 table_size; /* slots in the live table, for inspection (programs read weir_maglev_index) */
	__u32 affinity_timeout; /* seconds */
	__u16 flags;
	__u8 mode;
	/* Which of the service's two Maglev tables is live (bit 0): see
	 * weir_table_key. One update of the entry switches tables; the
	 * table's offset and size come from its index word. */
	__u8 table_gen;
};

/* Where a Maglev table is in the slab (weir_maglev_index): size slots
 * from slot offset. Size 0: no table. */
struct maglev_loc {
	__u32 offset;
	__u32 size;
};

struct backend_value {
	__u8 addr[16];
	__u8 tunnel[16]; /* outer destination for DSR */
	__be16 port;
	__u16 weight;
	__u32 service_id;
	__u8 state;
	__u8 pad[3];
};

/* Reverse NAT: what a client dialled, plus names for inspection. */
struct frontend_value {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 scope;
	__u8 kind;
	__u8 pad[3];
	__u32 service_id;
	char name[WEIR_NAME_LEN];
	char port_name[WEIR_PORT_NAME_LEN];
};

/* LPM key: prefixlen counts the 32 bits of service_id plus the address
 * bits (an IPv4 range also counts the 96 bits of the mapped prefix). */
struct source_range_key {
	__u32 prefixlen;
	__u32 service_id;
	__u8 addr[16];
};

struct affinity_key {
	__u64 netns_cookie; /* 0 for XDP */
	__u32 service_id;
	__u32 pad;
	__u8 client[16];
};

struct affinity_value {
	__u64 last_used; /* CLOCK_MONOTONIC ns (XDP: the coarse clock) */
	__u32 backend_id;
	__u32 pad;
};

struct traffic_stats {
	__u64 packets;
	__u64 bytes;
};

/* A flow's next hop, cached by the XDP datapath so that its packets skip
 * the FIB lookup; refreshed with the entry's last_seen. */
struct fib_cache {
	__u32 ifindex; /* egress device; 0: nothing cached */
	__u16 len; /* largest L3 length checked against the MTU */
	__u8 dmac[6];
	__u8 smac[6];
	__u8 pad[6];
};

/* Connection tracking, keyed by the client's packet as it arrived. */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_value {
	__u64 last_seen; /* CLOCK_MONOTONIC ns, coarse (bpf_ktime_get_coarse_ns) */
	__u32 backend_id;
	__u32 frontend_id;
	__u32 service_id;
	__be16 nat_port; /* SNAT source port; 0 for DSR */
	__u8 flags;
	__u8 pad;
	struct fib_cache fib; /* towards the backend */
	/* What the flow's packets need of the backend, copied with the
	 * backend's word (weir_backend_words): while the word is the same, an
	 * established packet needs no backend lookup. backend_dst is the
	 * DSR outer destination, or the backend's address for SNAT. */
	__u32 backend_word;
	__be16 backend_port;
	__u8 pad2[2];
	__u8 backend_dst[16];
};

/* SNAT reverse entry, keyed by a reply from a backend to the node. */
struct snat_key {
	__u8 addr[16]; /* backend */
	__be16 port; /* backend port */
	__be16 nat_port;
	__u8 proto;
	__u8 pad[3];
};

struct snat_value {
	__u64 last_seen;
	__u8 client[16];
	__be16 client_port;
	__u8 pad[2];
	__u32 frontend_id;
	struct fib_cache fib; /* towards the client */
};

/* Socket-level reverse NAT for unconnected UDP and getpeername. */
struct sock_revnat_key {
	__u64 cookie;
	__u8 addr[16]; /* backend */
	__be16 port;
	__u8 pad[6];
};

struct sock_revnat_value {
	__u8 addr[16]; /* frontend */
	__be16 port;
	__u8 pad[2];
	__u32 frontend_id;
};

/* An entry of the events ring buffer. */
struct event {
	__u64 timestamp;
	__u32 ifindex;
	__u32 service_id;
	__u32 backend_id;
	__u8 type; /* WEIR_EVENT_* */
	__u8 reason; /* WEIR_REASON_* */
	__u8 proto;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u32 pad2;
};

#define WEIR_EVENT_DROP 1
#define WEIR_EVENT_NEW_FLOW 2

/* Reverse NAT of one connected socket, kept in the socket's local storage
 * (freed with the socket): the backend the socket was sent to and the
 * service address the application dialled. */
struct sock_peer {
	__u8 backend[16];
	__u8 frontend[16];
	__be16 backend_port;
	__be16 frontend_port;
	__u32 frontend_id;
};

#endif
