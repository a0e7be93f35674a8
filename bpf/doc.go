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
// key succeeds. Every service has two Maglev tables (lb.TableID:
// ServiceID<<1 | generation); the service entry's table_gen picks one.
// Every table is a run of slots in one array, the slab (weir_maglev's only
// element), and weir_maglev_index holds each table's offset and size in one
// 64-bit word. A new or resized table goes into a free run, written
// through a memory mapping, and is published with an atomic store of its
// word; the run it left is reused only after an RCU grace period. A table
// of unchanged size is rewritten in place: the caller does that only to a
// table no entry uses, then flips table_gen. Dump reads everything back,
// for restoring after a restart.
//
// Errors name the object and the map. Input the maps can't hold (no
// address, a name longer than its C array, an empty Maglev table) is
// refused before any write. A write refused because the map is full is a
// *MapFullError naming the agent flag that sizes the map; the entries
// already in the map are untouched.
package bpf
