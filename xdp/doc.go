// Package xdp loads, configures and attaches Weir's north-south datapath:
// the XDP program weir_xdp (bpf/xdp_lb.c) on a node's devices.
//
// What the program does with a packet arriving on an attached device:
//
//   - IPIP / IPv6-in-IPv6 (and the mixed 4in6 / 6in4) addressed to one of
//     the node's addresses (SetNodeAddrs) is decapsulated and passed: this
//     is the backend half of DSR, and it works on a node with no services.
//   - A backend's reply to a SNAT flow (to the SNAT address and a port of
//     the SNAT range) is rewritten back to frontend -> client and forwarded.
//   - A packet to an external service frontend (address, port, protocol)
//     is load-balanced: source ranges, conntrack (an established flow keeps
//     its backend while the backend exists, whatever its state), ClientIP
//     affinity, Maglev; then DSR (encapsulated to the backend's tunnel
//     address; the backend answers the client directly) or SNAT (rewritten
//     to come from the node, replies come back through it) as the service's
//     mode says (hybrid: TCP DSR, other protocols SNAT). A new flow to a
//     service without backends is refused in place: TCP RST, ICMP port
//     unreachable otherwise. A packet that would exceed the egress MTU once
//     encapsulated is answered with ICMP fragmentation needed / packet too
//     big. DSR leaves the inner packet untouched, so the backend must serve
//     the frontend's address and port (the VIP on its lo).
//   - Everything else passes untouched, at the cost of a parse and one
//     hash lookup.
//
// Next hops come from the kernel FIB (bpf_fib_lookup): the node must have
// IP forwarding enabled, and the kernel forwards what XDP passes while a
// neighbour is unresolved. An established flow caches its next hop in its
// conntrack entry and looks it up again once a second (so a neighbour or
// route change reaches it within a second), or at once when a packet is
// larger than the cached result was checked for against the MTU. A DSR backend on this node itself (its tunnel
// address is local) gets the original packet through the stack. VLAN
// tagged packets (one 802.1Q/802.1ad tag) are parsed; encapsulated packets
// leave untagged, replies and SNAT packets keep the tag.
//
// Drops and rejects are counted per reason (weir_drops) and reported as
// events on weir_events, at most Config.EventsPerMillisecond per CPU; the
// rest are counted in weir_events_lost. Forwarded packets are counted per
// service and backend.
//
// Stages: the program has plug-in stages switched per node at run time
// without reloading anything (SetStage): a pre-LB policy stage and a
// post-LB overlay stage reached by tail calls when their programs are
// installed (SetStageProgram), and the source-range check, on by default.
// A stage that is off costs a load and a branch; ReadStages reads the
// switches through a pinned link, without a Program (for inspection).
// The stage slots live in a program array owned by the Program: the
// kernel empties it when the last Program holding it closes, so stage
// programs must be installed again by the next agent (the load balancer
// itself keeps running).
//
// Lifecycle: Load creates the program against the shared maps (bpf.Maps);
// Attach links it to a device with a bpf_link pinned under
// <maps root>/links/xdp_<ifname>, so traffic keeps flowing while the agent
// is down. A later Load + Attach (agent restart or upgrade) swaps the new
// program into the pinned link atomically. Close releases the agent's file
// descriptors only; Detach removes a device's link.
//
// Attach and Detach act on the network namespace of the calling thread:
// call them from the namespace the device lives in.
//
// Errors name the object and the fix: a missing kernel feature names the
// feature, an unknown device names the device.
package xdp
