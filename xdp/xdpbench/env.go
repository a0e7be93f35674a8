package xdpbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/xdp"
)

// env is one point of the sweep: the program under test loaded against
// fresh maps holding n services of one family and protocol.
type env struct {
	net   *network
	opts  Options
	t     *target
	svc   *services // nil when the program doesn't use Weir's maps
	n, ip int
	proto uint8
	// tx returns XDP_TX, loaded alike the program under test: the no-op
	// baseline's target.
	tx *ebpf.Program
	// fillTime is how long writing the services took, ctFillTime filling
	// conntrack.
	fillTime, ctFillTime time.Duration
	// nextFlows, nextNewFlow and nextFill are where the flow numbers of
	// the next established scenario, new-flow scenario and conntrack
	// fill start (see the constants below).
	nextFlows             uint32
	nextNewFlow, nextFill uint64
	closer
}

// newEnv builds the environment; on error what it made is gone.
func newEnv(ctx context.Context, net *network, runDir string, o Options, n, ip int, proto uint8) (_ *env, err error) {
	e := &env{net: net, opts: o, n: n, ip: ip, proto: proto, nextNewFlow: newFlowSpan}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()
	dir := filepath.Join(runDir, fmt.Sprintf("s%d-ipv%d-%s", n, ip, protoName(proto)))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	// Removing the pins lets the kernel free the maps once closed.
	e.add(func() error { return os.RemoveAll(dir) })
	if o.Object != "" {
		e.t, err = newObjectTarget(dir, o.Object, o.Program, n, o.Backends)
	} else {
		e.t, err = newWeirTarget(dir, n, o.Backends)
	}
	if err != nil {
		return nil, err
	}
	e.add(e.t.close)
	if e.tx, err = constProg("weir_bench_tx", xdpTX, e.t.attachType, e.t.flags); err != nil {
		return nil, err
	}
	e.add(e.tx.Close)
	if e.t.dp != nil {
		e.svc = &services{dp: e.t.dp, n: n, backends: o.Backends, tableSize: o.TableSize, ip: ip, proto: proto}
		start := time.Now()
		if err := e.svc.fill(ctx); err != nil {
			return nil, fmt.Errorf("write %d services: %w", n, err)
		}
		e.fillTime = time.Since(start)
	}
	if w := e.t.weir; w != nil {
		// The stage scenarios' programs: a pass-through policy stage
		// and an overlay stage that sends the packet as it is.
		policy, err := tailCallProg("weir_bench_pol", w.StageMap(), xdp.LBSlot)
		if err != nil {
			return nil, err
		}
		e.add(policy.Close)
		overlay, err := constProg("weir_bench_ovl", xdpTX, ebpf.AttachXDP, 0)
		if err != nil {
			return nil, err
		}
		e.add(overlay.Close)
		if err := errors.Join(w.SetStageProgram(xdp.StagePolicy, policy), w.SetStageProgram(xdp.StageOverlay, overlay)); err != nil {
			return nil, err
		}
	}
	if e.t.maps != nil {
		// Twice: the first fill takes the map's entries in the order
		// they were allocated, which is no steady state yet.
		start := time.Now()
		for range 2 {
			if err := e.fillConntrack(ctx); err != nil {
				return nil, fmt.Errorf("fill conntrack: %w", err)
			}
		}
		e.ctFillTime = time.Since(start)
	}
	return e, nil
}

// fillConntrack runs as many new flows as conntrack holds through the
// program, so that the scenario measured next meets the steady state of
// a node that has been busy for a while: a full LRU map whose entries
// were allocated at all sorts of times and are scattered over its
// memory. Established flows created in a nearly empty map, or right
// after the previous scenario's, would sit in fewer pages than on any
// real node, and the scenarios would depend on their order: setup calls
// it before every scenario that uses conntrack. Each fill's flows are
// new (they start where the last fill's ended).
func (e *env) fillConntrack(ctx context.Context) error {
	info, err := e.t.maps.CT.Info()
	if err != nil {
		return err
	}
	sc, _ := scenarioByName(ScenarioNewFlow)
	b, err := e.prepare(sc, 0, 1, e.t.prog)
	if err != nil {
		return err
	}
	defer b.close()
	if e.nextFill < fillFlows {
		e.nextFill = fillFlows
	}
	if err := b.counter.Update(uint32(0), e.nextFill, ebpf.UpdateAny); err != nil {
		return err
	}
	e.nextFill += uint64(info.MaxEntries)
	if e.nextFill >= 1<<32 {
		e.nextFill = fillFlows
	}
	return e.net.node.Do(func() error {
		_, err := progRun(ctx, b.prog, runOpts{data: b.tmpl, ifindex: e.net.lbIndex, repeat: info.MaxEntries})
		return err
	})
}

// setup puts the services and stages in the state the scenario needs,
// and conntrack in its steady state when the scenario uses it.
func (e *env) setup(ctx context.Context, sc scenario) error {
	if e.svc != nil {
		if err := e.svc.configure(sc.flags, sc.ranges); err != nil {
			return fmt.Errorf("configure the services for %s: %w", sc.name, err)
		}
	}
	if e.t.maps != nil && sc.encap {
		if err := e.fillConntrack(ctx); err != nil {
			return fmt.Errorf("fill conntrack for %s: %w", sc.name, err)
		}
	}
	if w := e.t.weir; w != nil {
		return errors.Join(
			w.SetStage(xdp.StagePolicy, sc.policyOn),
			w.SetStage(xdp.StageOverlay, sc.overlayOn),
			w.SetStage(xdp.StageSourceRanges, !sc.sourceRangesOff),
		)
	}
	return nil
}

// drops reads Weir's drop counters by reason, summed over CPUs; nil
// without Weir's maps.
func (e *env) drops() (map[bpf.Reason]uint64, error) {
	if e.t.maps == nil {
		return nil, nil
	}
	out := map[bpf.Reason]uint64{}
	var per []bpf.TrafficStats
	for _, r := range bpf.Reasons() {
		if err := e.t.maps.Drops.Lookup(uint32(r), &per); err != nil {
			return nil, fmt.Errorf("read weir_drops[%s]: %w", r, err)
		}
		for _, p := range per {
			out[r] += p.Packets
		}
	}
	return out, nil
}

// checkDrops compares drop counters before and after n packets of sc:
// none may be dropped unless the scenario drops them all, for its reason.
func checkDrops(sc scenario, before, after map[bpf.Reason]uint64, n uint64) error {
	if before == nil || after == nil {
		return nil
	}
	var errs []error
	for r, a := range after {
		d := a - before[r]
		switch {
		case sc.dropReason != 0 && r == sc.dropReason:
			if d < n {
				errs = append(errs, fmt.Errorf("%s: %d of %d packets dropped for %s: the scenario didn't measure what it claims", sc.name, d, n, r))
			}
		case d > 0:
			errs = append(errs, fmt.Errorf("%s: %d packets dropped for %s (the benchmark setup is broken: nothing should be dropped)", sc.name, d, r))
		}
	}
	return errors.Join(errs...)
}

// Flow numbers: the harness makes a packet's 5-tuple from 32 bits of
// its counter, so each source of flows gets a range of its own and no
// scenario meets another's flows: an established scenario cycles through
// its own block of maxFlows (2^24) below newFlowSpan, every new-flow
// scenario of an environment starts at its own multiple of newFlowSpan,
// and the conntrack fills count up from fillFlows.
const (
	newFlowSpan = 1 << 27
	fillFlows   = uint64(1) << 31
)

// bench is one scenario made ready: the measured program, its baseline
// and the frame they run on.
type bench struct {
	sc      scenario
	flows   int // 0: a new flow per packet
	tmpl    []byte
	counter *ebpf.Map
	prog    *ebpf.Program
	base    *ebpf.Program
	// warm packets establish the scenario's flows before measuring.
	warm int
	closer
}

// prepare builds the programs for sc on frames of size bytes over flows
// flows. target is the program the harness hands packets to (the program
// under test in test-run mode; XDP_TX for the live generator).
func (e *env) prepare(sc scenario, size, flows int, target *ebpf.Program) (_ *bench, err error) {
	b := &bench{sc: sc, flows: flows}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.close())
		}
	}()
	dstBase := vipBase4
	if e.ip == 6 {
		dstBase = vipBase6
	}
	if sc.traffic == trafficOther {
		dstBase = otherBase4
		if e.ip == 6 {
			dstBase = otherBase6
		}
	}
	size = max(size, MinFrameSize(e.ip, e.proto))
	if b.tmpl, err = template(e.ip, e.proto, size, dstBase, e.net.peerMAC, e.net.lbMAC); err != nil {
		return nil, err
	}
	counter, err := newCounter()
	if err != nil {
		return nil, err
	}
	b.add(counter.Close)
	b.counter = counter
	if sc.traffic == trafficNew {
		if err := counter.Update(uint32(0), e.nextNewFlow, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("start the flow counter: %w", err)
		}
		// Fifteen ranges below the fill's; past them, start over (a
		// flow seen 15 new-flow scenarios ago is long evicted).
		e.nextNewFlow += newFlowSpan
		if e.nextNewFlow >= fillFlows {
			e.nextNewFlow = newFlowSpan
		}
	}
	spec := harnessSpec{tmpl: b.tmpl, lay: layoutOf(e.ip, e.proto), counter: counter, flows: uint32(flows),
		services: uint32(e.n), dstBase: low32(dstBase), attachType: e.t.attachType, flags: e.t.flags}
	switch sc.traffic {
	case trafficNew:
		spec.flows = 0
		b.flows = 0
		b.warm = 1024
	case trafficNone:
		b.flows = 1
	default:
		b.warm = 2*flows + 64
		spec.flowBase = e.nextFlows
		e.nextFlows = (e.nextFlows + maxFlows) % newFlowSpan
	}
	// The baseline: the same harness handing packets to XDP_TX.
	noopTarget, err := newTarget(e.tx)
	if err != nil {
		return nil, err
	}
	b.add(noopTarget.Close)
	spec.target = noopTarget
	if b.base, err = newHarness(spec); err != nil {
		return nil, err
	}
	b.add(b.base.Close)
	switch {
	case sc.traffic == trafficNone:
		b.prog = e.tx
	case sc.name == ScenarioNoop || target == e.tx:
		b.prog = b.base
	default:
		tgt, err := newTarget(target)
		if err != nil {
			return nil, err
		}
		b.add(tgt.Close)
		spec.target = tgt
		if b.prog, err = newHarness(spec); err != nil {
			return nil, err
		}
		b.add(b.prog.Close)
	}
	return b, nil
}
