//go:build ignore

/* No programs: this object carries the map definitions (and their BTF) that
 * the agent creates and pins, and that bpf/types.go mirrors. */
#include "common.h"
#include "maps.h"

/* Types only reached through pointers need an anchor to reach the BTF. */
const struct event *unused_event __attribute__((unused));

char __license[] SEC("license") = "Dual MIT/GPL";
