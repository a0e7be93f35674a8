// Package xdpbench is the XDP benchmarking harness behind `weir bench
// xdp`: it measures Weir's north-south program weir_xdp, or any other XDP
// program, scenario by scenario, and reports every figure next to a
// baseline measured in the same run.
//
// # Modes
//
// Test-run mode (BPF_PROG_TEST_RUN with a repeat count) reports the
// kernel's ns per packet: the kernel times the repeat loop itself and
// stops the clock while the thread is rescheduled, so other load on the
// machine is not charged to the program. The baseline is noop, the same
// harness handing every packet to XDP_TX; ratio is ns_per_packet / noop.
//
// Live mode attaches the program under test in native mode to lb0, one
// end of a veth pair between two namespaces it creates, and drives it
// with the kernel's live-frames generator (BPF_F_TEST_XDP_LIVE_FRAMES) on
// the other end, c0, where an XDP sink counts what comes back. It
// reports pps at the sink, frames lost on the way, and the ratio to a
// plain XDP_TX hairpin swapped into the same link, alternating run by
// run.
//
// # The harness
//
// The kernel reruns a test on the same buffer, and the live generator
// recycles pages as the last program left them: a program that
// encapsulates would measure itself on its own output. Every measured
// program is therefore reached through a small harness (harness.go) that
// restores the frame's headers from the template and writes the
// packet's flow (client address and port, service VIP) from a counter,
// then tail calls the program. The baselines go through the same
// harness, so ratios compare like with like; the xdp-tx scenario, a bare
// XDP_TX program, shows what the harness itself costs.
//
// # State
//
// Conntrack is a 512k-entry LRU map, as an agent's. Before every scenario
// that uses it, the program runs as many new flows as it holds (twice when
// the environment is new), and each scenario establishes flows no earlier
// scenario used: every scenario meets a full map whose entries are
// scattered over its memory, the steady state of a busy node, whatever
// ran before it. (Flows established into an empty map, or that outlived
// an earlier scenario, measured up to 2.5x apart on this machine class.)
//
// # Scenarios
//
// ScenarioNames lists them; scenarios.go says what each measures. The
// scenarios that configure services (affinity, source ranges, stages)
// need Weir's shared maps: another object gets them when it declares
// weir_services (a Weir built differently), otherwise it runs the packet
// scenarios (noop, xdp-tx, pass-non-service, established, new-flow) and
// its verdicts are reported instead of checked. For Weir's own program
// every scenario is checked before it is timed: a sample of single
// packets must get the scenario's verdict (and leave DSR-encapsulated
// where the scenario load-balances), the last verdict of every timed run
// must match, and no packet may be dropped unless the scenario drops
// them all for its reason. A check that fails is an error, never a
// number.
//
// # Cleanup and errors
//
// Run and NewSetup create two network namespaces (weir-bench-<random>-
// node and -cl), a directory of pins under /sys/fs/bpf/weir-bench-
// <random>, programs, maps and links, and remove all of them before
// returning, also on error and when the context is cancelled (Run then
// returns the results so far with the context's error). They need root.
// Errors name the scenario, the point of the sweep and what went wrong.
package xdpbench
