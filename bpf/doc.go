// Package bpf owns what every Weir program shares: the C headers under
// bpf/include (tunables, types, maps), the maps object compiled from
// maps.c by bpf2go, the pinned maps themselves, the Go mirrors of every map
// key and value, and Datapath, the real lb.Datapath.
//
// Maps. OpenMaps creates the maps pinned under a bpffs root or reopens the
// pins an earlier agent left, so state survives restarts; Maps.LoadAndAssign
// hands them to each program object (xdp, sockmap) in place of the object's
// own copies.
//
// Mirrors. types.go holds one Go struct per C struct of types.h, with the
// same size and field offsets (types_test.go checks them against the
// object's BTF), explicit padding, addresses as Addr (16 bytes, IPv4
// stored IPv4-mapped) and ports as Port (network byte order). consts.go
// and reasons.go mirror consts.h; their tests parse the header so the
// numbers can't drift. Pass pointers to the mirrors to cilium/ebpf: they
// reach the kernel without copying.
//
// Datapath. Writes are idempotent (update-or-insert) and deleting a missing
// key succeeds. Every service has two Maglev tables in weir_maglev, at key
// ServiceID<<1 | generation (lb.TableID); the service entry's table_gen
// picks one. A new or resized table is a new inner map, filled through a
// memory mapping, then swapped in with one outer-map write, which costs a
// kernel RCU grace period (~10 ms); UpsertMaglevs and DeleteMaglevs
// (lb.MaglevBatcher) pay it once per batch. A table of unchanged size is
// rewritten in place through its memory mapping, with no outer-map write
// and no wait: the caller does that only to a table no entry uses, then
// flips table_gen. Dump reads everything back, for restoring after a
// restart.
//
// Errors name the object and the map. Input the maps can't hold (no
// address, a name longer than its C array, an empty Maglev table) is
// refused before any write. A write refused because the map is full is a
// *MapFullError naming the agent flag that sizes the map; the entries
// already in the map are untouched.
package bpf
