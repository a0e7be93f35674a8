/* Maglev backend selection: a service's live table in the slab (see
 * weir_maglev in maps.h). Shared by XDP (slot by flow hash) and the socket
 * hooks (a random slot). */
#ifndef WEIR_MAGLEV_H
#define WEIR_MAGLEV_H

#include "common.h"
#include "maps.h"

/* maglev_pick returns the backend ID in slot (hash mod size) of the
 * service's live table, or 0 when the service has no table. */
static __always_inline __u32 maglev_pick(const struct service_value *svc, __u32 hash)
{
	__u32 key = weir_table_key(svc), zero = 0, slot, elem;
	__u32 *ids;
	struct maglev_loc *loc;
	__u64 word;
	void *slab;

	loc = bpf_map_lookup_elem(&weir_maglev_index, &key);
	if (!loc)
		return 0;
	/* Offset and size in one load: the agent moves a table by storing
	 * both at once. */
	word = *(volatile __u64 *)loc;
	if (!(word >> 32))
		return 0;
	slab = bpf_map_lookup_elem(&weir_maglev, &zero);
	if (!slab)
		return 0;
	slot = (__u32)word + hash % (__u32)(word >> 32);
	elem = slot / WEIR_MAGLEV_SLOTS_PER_ELEM;
	ids = bpf_map_lookup_elem(slab, &elem);
	if (!ids)
		return 0;
	return ids[slot % WEIR_MAGLEV_SLOTS_PER_ELEM];
}

#endif
