// Package sockmap loads and attaches Weir's east-west socket load balancer:
// cgroup v2 hooks (bpf/sock_lb.c) that send a socket dialling a service
// address straight to a backend, so pod-to-service and host-to-service
// traffic needs no packet rewriting at all.
//
// # What the hooks do
//
//   - connect4/6 and sendmsg4/6 (unconnected UDP) look the destination up
//     as an internal-scope service key (IPv4 as IPv4-mapped, protocol from
//     the socket). A miss leaves the socket alone. A service with no
//     backend fails the call with ECONNREFUSED at once. Otherwise a backend
//     is chosen (ClientIP affinity first, then a uniformly random slot of
//     the service's Maglev table, which the control plane fills with the
//     eligible backends in proportion to their weights) and the destination
//     is rewritten. IPv4-mapped destinations on IPv6 sockets work as is.
//   - recvmsg4/6 (UDP, when the caller asks for the source address) and
//     getpeername4/6 show the service address instead of the backend's.
//     A connected UDP socket keeps its translation in its own local
//     storage (weir_sock_peer, freed with the socket). A TCP connect writes
//     its translation into the slot of its socket cookie in
//     weir_sock_peer_slots (an array: no allocation, no lock), and its
//     first getpeername copies the slot into weir_sock_peer. Datagrams
//     sent unconnected record theirs in weir_sock_revnat, an LRU keyed by
//     socket cookie and backend.
//   - post_bind4/6 refuse, with EADDRINUSE, a bind to a specific address
//     and port that is a service frontend of either scope. Wildcard binds
//     are allowed.
//
// Socket local storage costs two slab allocations per socket, more than
// the rest of a translated connect; that is why TCP connects write a slot
// instead, and pay for the storage only if they ask for their peer.
// Config.NoTCPPeerName skips the slot write too, for TCP, where only
// getpeername() needs it; UDP always records, since resolvers drop replies
// whose source is not the server they asked.
//
// Affinity is keyed by network namespace cookie plus the socket's bound
// address (zero for an unbound socket, the usual case): the source address
// isn't chosen yet at connect time, so, as in Cilium's socket LB, all
// unbound sockets of one network namespace (one pod) share a backend.
//
// Every translation counts one packet (zero bytes) in weir_service_stats and
// weir_backend_stats; every refused connect or send counts one in
// weir_drops under its reason.
//
// What the hooks deliberately leave to the control plane: which backends
// are eligible (internalTrafficPolicy Local, terminating and quarantined
// backends) is decided by what it writes into the internal view's table.
//
// # Limits
//
//   - An unconnected UDP socket that sends to two service addresses sharing
//     a backend sees that backend's replies as coming from the address it
//     sent to last; one that sends to a service and also straight to one
//     of its backends sees that backend's replies as the service's.
//     Forgetting on every untranslated datagram would tax all UDP sends.
//   - weir_sock_revnat is an LRU: under pressure an idle unconnected UDP
//     socket may lose its entry and then see replies from the backend's
//     address.
//   - A TCP socket's slot is taken over once the kernel has handed out
//     WEIR_SOCK_PEER_SLOTS (262144) more socket cookies on the node; a
//     socket that had not called getpeername by then sees its backend's
//     address (one that had keeps the service's). Clients that ask right
//     after connecting (Go's net.Dial does) are not affected.
//   - A TCP socket disconnected (connect with AF_UNSPEC) from a service
//     and connected straight to one of its backends keeps showing the
//     service: forgetting would tax every untranslated connect.
//   - Affinity only returns a client to an ACTIVE backend; when a service
//     falls back to terminating backends, each connect picks afresh.
//
// # Scope
//
// The hooks act on sockets created by tasks in the cgroup subtree they are
// attached to. Two switches narrow that: Config.HostNetnsOnly leaves every
// socket outside the host network namespace alone (another datapath serves
// pods), and Config.SkipCgroups leaves the sockets of tasks in the given
// cgroup subtrees alone (checked against the calling task's cgroup, through
// the pinned weir_sock_skip_cgroups map).
//
// # Lifetime
//
// Attach pins one bpf_link per hook under <maps root>/links; the programs
// stay attached when the agent exits, so service traffic keeps working
// while it restarts. A restarted agent calls Load and Attach again: the
// pinned links are reopened and switched to the new programs atomically
// (bpf_link update), with no moment without a program. Close releases
// file descriptors only; Detach removes the links and their pins. Load
// pins weir_sock_peer_slots, the one map that is the socket load
// balancer's own, beside the shared maps (or reopens it), so TCP
// connections made before a restart keep their reverse NAT.
//
// # Safety
//
// Attaching to a cgroup changes how every process below it connects. The
// agent never attaches unless given an explicit --cgroup-root (which may be
// "auto", resolved by ResolveCgroupRoot); tests attach only to cgroups they
// create themselves.
//
// # Errors
//
// Load fails when the shared maps lack weir_sock_skip_cgroups or
// weir_sock_peer (pins made by an older agent: remove them), when a
// pinned weir_sock_peer_slots has another layout (remove that pin), when
// a skip cgroup is not a cgroup v2 directory, or when the kernel refuses a
// program (the verifier's log is in the error). Attach fails, naming the path and the fix, when the path is
// not a cgroup v2 directory; it undoes the links it created in that call.
package sockmap
