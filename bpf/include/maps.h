/* Every map Weir's programs use, declared once. All are pinned by name under
 * the agent's bpffs root; the agent creates them (bpf.OpenMaps) and hands
 * them to each program object, so every program sees the same maps. */
#ifndef WEIR_MAPS_H
#define WEIR_MAPS_H

#include "types.h"

/* Frontend (address, port, protocol, scope) -> service entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_services SEC(".maps");

/* Backend ID -> backend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_backends SEC(".maps");

/* Maglev tables. Every table of every service lives in one array of
 * slots, the slab: weir_maglev's only element. A table is a run of
 * consecutive slots, found through weir_maglev_index by its lb.TableID
 * (service ID << 1 | generation): its first slot and its size, one 64-bit
 * word that the agent stores atomically and programs read once, so a
 * packet sees a whole old table or a whole new one. Every service has two
 * tables: the live one, named by the table_gen of its service entries, and
 * a spare the agent rewrites in place and then switches the entries to.
 *
 * Compared with an inner map per table, a first sync of 10k services
 * creates no maps and makes no syscall per table: the agent fills the
 * slab through one memory mapping (BPF_F_MMAPABLE). The slab grows by
 * replacing weir_maglev's element with a larger copy (one RCU grace
 * period); regions a table left are reused only after a grace period. */
struct weir_maglev_slab {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32[WEIR_MAGLEV_SLOTS_PER_ELEM]);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct weir_maglev_slab);
} weir_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * WEIR_MAX_SERVICES + 2); /* two per service ID, from 1 */
	__type(key, __u32);
	__type(value, struct maglev_loc);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_maglev_index SEC(".maps");

/* The weir_maglev_index key of the table a service entry uses. */
static __always_inline __u32 weir_table_key(const struct service_value *svc)
{
	return (svc->service_id << 1) | (svc->table_gen & 1);
}

/* Backend ID -> its word: a hash of what the datapath uses of the backend
 * (service, address, port, tunnel) in the upper 30 bits, its state in the
 * lower 2; 0 for no backend. Conntrack copies the word with the backend's
 * address, so an established packet checks this small array, not the
 * backend hash map. The agent stores words atomically (BPF_F_MMAPABLE);
 * a new backend's word after its entry, a deleted one's zero before. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_MAX_BACKENDS + 1); /* IDs from 1 */
	__type(key, __u32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_backend_words SEC(".maps");

/* Frontend ID -> the frontend a client dialled (reverse NAT). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct frontend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_frontends SEC(".maps");

/* (service ID, client prefix) allow-list for services with source ranges. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_MAX_SOURCE_RANGES);
	__type(key, struct source_range_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_source_ranges SEC(".maps");

/* Client 5-tuple -> chosen backend, so flows survive backend-set changes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_CT_SIZE);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct SEC(".maps");

/* ClientIP session affinity. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_AFFINITY_SIZE);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_affinity SEC(".maps");

/* SNAT replies: (backend, NAT port) -> the client to restore. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_SNAT_SIZE);
	__type(key, struct snat_key);
	__type(value, struct snat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_snat SEC(".maps");

/* Socket cookie + backend -> service address, for UDP recvmsg and
 * getpeername. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_SOCK_REVNAT_SIZE);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_revnat SEC(".maps");

/* Per-CPU counters, indexed by service ID, backend ID and drop reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct traffic_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct traffic_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_REASON_MAX);
	__type(key, __u32);
	__type(value, struct traffic_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_drops SEC(".maps");

/* Drop and sampled flow events for `weir observe`. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_EVENTS_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_events SEC(".maps");

/* cgroup v2 ID -> 1: sockets of tasks in these cgroups (or below them)
 * are left alone by the socket load balancer. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_SOCK_SKIP_CGROUPS_SIZE);
	__type(key, __u64);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_skip_cgroups SEC(".maps");

/* This node's addresses (IPv4-mapped for IPv4) -> 1: IPIP and IPv6-in-IPv6
 * packets to one of them are DSR traffic that XDP decapsulates. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_NODE_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_node_addrs SEC(".maps");

/* Events not written to weir_events (rate bound or ring buffer full), per
 * CPU, in slot 0. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_events_lost SEC(".maps");

/* Socket local storage: the reverse NAT of connected sockets, for
 * getpeername and recvmsg (unconnected UDP uses weir_sock_revnat). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_peer SEC(".maps");

#endif
