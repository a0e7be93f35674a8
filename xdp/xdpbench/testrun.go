package xdpbench

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// sampleSize is how many single packets are run (and their output
// inspected) before the timed runs.
const sampleSize = 64

// Case is one scenario made ready for test runs in an environment: its
// flows established, a sample of its packets checked. Its methods run in
// the node namespace (the kernel resolves the ingress device, and
// bpf_fib_lookup the routes, in the caller's namespace).
type Case struct {
	e        *env
	b        *bench
	verdicts map[string]int
}

// newCase sets the environment up for sc and prepares it.
func (e *env) newCase(ctx context.Context, sc scenario, size, flows int) (_ *Case, err error) {
	if err := e.setup(ctx, sc); err != nil {
		return nil, err
	}
	b, err := e.prepare(sc, size, flows, e.t.prog)
	if err != nil {
		return nil, err
	}
	c := &Case{e: e, b: b}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if b.warm > 0 {
		if _, err := c.run(ctx, b.prog, b.warm, false); err != nil {
			return nil, err
		}
	}
	if c.verdicts, err = c.sample(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Close releases the case's programs; the environment stays.
func (c *Case) Close() error { return c.b.close() }

// Verdicts are the answers to the sample of single packets.
func (c *Case) Verdicts() map[string]int { return c.verdicts }

// Flows is the number of flows cycled through, 0 for a new flow per
// packet.
func (c *Case) Flows() int { return c.b.flows }

func (c *Case) run(ctx context.Context, p *ebpf.Program, n int, out bool) (r runResult, err error) {
	err = c.e.net.node.Do(func() error {
		r, err = progRun(ctx, p, runOpts{data: c.b.tmpl, ifindex: c.e.net.lbIndex, repeat: uint32(n), wantOut: out})
		return err
	})
	return r, err
}

// Measure runs n packets of the scenario and returns the kernel's ns per
// packet. For Weir's program it checks that the last verdict is the
// scenario's and that no packet was dropped (or, for a dropping
// scenario, every one for its reason).
func (c *Case) Measure(ctx context.Context, n int) (float64, error) {
	sc := c.b.sc
	before, err := c.e.drops()
	if err != nil {
		return 0, err
	}
	r, err := c.run(ctx, c.b.prog, n, false)
	if err != nil {
		return 0, err
	}
	if !c.e.checksVerdicts(sc) {
		return float64(r.nsPerRun), nil
	}
	if r.verdict != sc.verdict {
		return 0, fmt.Errorf("%s: verdict %s, want %s", sc.name, VerdictName(r.verdict), VerdictName(sc.verdict))
	}
	after, err := c.e.drops()
	if err != nil {
		return 0, err
	}
	return float64(r.nsPerRun), checkDrops(sc, before, after, uint64(n))
}

// MeasureBaseline runs n packets through the no-op baseline: the same
// harness, handing the packets to XDP_TX.
func (c *Case) MeasureBaseline(ctx context.Context, n int) (float64, error) {
	r, err := c.run(ctx, c.b.base, n, false)
	if err != nil {
		return 0, err
	}
	if r.verdict != xdpTX {
		return 0, fmt.Errorf("noop baseline: verdict %s, want tx", VerdictName(r.verdict))
	}
	return float64(r.nsPerRun), nil
}

// testRun measures sc in test-run mode: runs x (Packets packets of the
// scenario, then as many through the no-op baseline), alternating, so
// both see the same drift of a shared machine.
func (e *env) testRun(ctx context.Context, sc scenario, size, flows int) (Result, error) {
	c, err := e.newCase(ctx, sc, size, flows)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	res := e.result(sc, ModeTestRun, c.b)
	res.Verdicts = c.verdicts
	var ns, base []float64
	for range e.opts.Runs {
		m, err := c.Measure(ctx, e.opts.Packets)
		if err != nil {
			return Result{}, err
		}
		bl, err := c.MeasureBaseline(ctx, e.opts.Packets)
		if err != nil {
			return Result{}, err
		}
		ns, base = append(ns, m), append(base, bl)
	}
	med, best, bmed := median(ns), slices.Min(ns), median(base)
	res.NsPerPacket, res.NsPerPacketMin = &med, &best
	res.Baseline, res.BaseNs = ScenarioNoop, bmed
	if bmed > 0 {
		res.Ratio = med / bmed
	}
	return res, nil
}

// checksVerdicts: Weir's own program answers as the scenario says, and
// so do the baselines; another program's verdicts are only reported.
func (e *env) checksVerdicts(sc scenario) bool {
	return e.t.weir != nil || sc.name == ScenarioNoop || sc.name == ScenarioXDPTX
}

// sample runs single packets, tallies the verdicts and, where they are
// checked, checks each answer: the verdict, and for the load-balancing
// scenarios a DSR-encapsulated frame.
func (c *Case) sample(ctx context.Context) (map[string]int, error) {
	sc := c.b.sc
	out := map[string]int{}
	for range sampleSize {
		r, err := c.run(ctx, c.b.prog, 1, true)
		if err != nil {
			return nil, err
		}
		out[VerdictName(r.verdict)]++
		if !c.e.checksVerdicts(sc) {
			continue
		}
		if r.verdict != sc.verdict {
			return nil, fmt.Errorf("%s: a sample packet got %s, want %s: the scenario doesn't measure what it claims", sc.name, VerdictName(r.verdict), VerdictName(sc.verdict))
		}
		if sc.encap && !isTunnel(r.out) {
			return nil, fmt.Errorf("%s: a sample packet left without DSR encapsulation (% x)", sc.name, r.out[:min(len(r.out), 64)])
		}
	}
	return out, nil
}

// isTunnel reports whether a frame is IPIP or IPv6-in-IP (either outer
// family).
func isTunnel(f []byte) bool {
	if len(f) < 14+40 {
		return false
	}
	switch uint16(f[12])<<8 | uint16(f[13]) {
	case 0x0800:
		return f[14+9] == 4 || f[14+9] == 41
	case 0x86dd:
		return f[14+6] == 4 || f[14+6] == 41
	}
	return false
}

// result fills what every result of the environment shares.
func (e *env) result(sc scenario, m Mode, b *bench) Result {
	packets := e.opts.Packets
	if m == ModeLive {
		packets = e.opts.LivePackets
	}
	return Result{
		Scenario: sc.name, Mode: m, Program: e.t.name, Services: e.n, Flows: b.flows,
		IP: e.ip, Proto: protoName(e.proto), Size: len(b.tmpl), Packets: packets, Runs: e.opts.Runs,
	}
}

// median of a slice (0 when empty).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
