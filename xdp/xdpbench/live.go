package xdpbench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/weir-lb/weir/xdp"
)

// Live mode. The in-kernel live-frames generator (BPF_PROG_TEST_RUN with
// BPF_F_TEST_XDP_LIVE_FRAMES) runs the harness on c0 in the client
// namespace: it writes each frame's flow and returns XDP_TX, which the
// kernel turns into a transmit on c0. The frames cross the veth pair to
// lb0, where the program under test is attached in native mode as the
// agent attaches it (xdp.Program.Attach, a pinned bpf_link); what it
// sends back out of lb0 (XDP_TX) reaches c0 again, whose XDP program
// (the sink) counts every frame, and the DSR-encapsulated ones apart,
// and drops them. Native XDP_TX on veth only delivers to a peer that
// runs an XDP program, which the sink is.
//
// The baseline is a plain XDP_TX hairpin: the same generator, with a
// program that returns XDP_TX swapped into lb0's link in place of the
// program under test (bpf_link update, as an agent upgrade does). The
// two alternate run by run.
//
// The harness is needed here too: the generator's pages are recycled
// with whatever the last program wrote into them (the DSR header
// overwrote the Ethernet and part of the IP header), and the harness
// restores them.
//
// Everything runs on the generator's CPU: the veth pair hands frames to
// the peer's NAPI, scheduled on the sending CPU, and the generator's
// batch loop runs the pending softirqs when it re-enables them, so a
// frame's whole path (generate, cross, program under test, cross back,
// sink) is serial work on one CPU inside the kernel's timed loop. pps is
// therefore frames at the sink per second of that CPU's time, as the
// kernel's test-run timer counts it (it stops while the thread is
// rescheduled): what one CPU forwards, whatever else the machine runs.
// Wall-clock pps is reported too; on a loaded machine it is the
// scheduler's share of that.

// sink is the counting program on c0, attached for the whole run.
type sink struct {
	counters *ebpf.Map
	prog     *ebpf.Program
	link     link.Link
}

func newSink(n *network) (_ *sink, err error) {
	s := &sink{}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	if s.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weir_bench_snk", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2}); err != nil {
		return nil, fmt.Errorf("create the sink's counters: %w", err)
	}
	if s.prog, err = sinkProg(s.counters); err != nil {
		return nil, err
	}
	err = n.client.Do(func() error {
		var err error
		s.link, err = link.AttachXDP(link.XDPOptions{Program: s.prog, Interface: n.peerIndex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach the sink to %s in native mode: %w", peerDev, err)
	}
	return s, nil
}

func (s *sink) close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	if s.counters != nil {
		errs = append(errs, s.counters.Close())
	}
	return errors.Join(errs...)
}

// read returns every frame and the tunnel frames counted so far.
func (s *sink) read() (all, tunnel uint64, err error) {
	var per []uint64
	if err := s.counters.Lookup(uint32(sinkAll), &per); err != nil {
		return 0, 0, fmt.Errorf("read the sink's counters: %w", err)
	}
	for _, v := range per {
		all += v
	}
	if err := s.counters.Lookup(uint32(sinkTunnel), &per); err != nil {
		return 0, 0, fmt.Errorf("read the sink's counters: %w", err)
	}
	for _, v := range per {
		tunnel += v
	}
	return all, tunnel, nil
}

// settled reads the counters once they stop moving: frames still in the
// veth rings when the generator returns arrive within microseconds.
func (s *sink) settled() (all, tunnel uint64, err error) {
	all, tunnel, err = s.read()
	for i := 0; err == nil && i < 100; i++ {
		time.Sleep(2 * time.Millisecond)
		var a, t uint64
		if a, t, err = s.read(); err == nil && a == all && t == tunnel {
			break
		}
		all, tunnel = a, t
	}
	return all, tunnel, err
}

// attachment is the program under test on lb0, swappable for the
// baseline.
type attachment struct {
	link   link.Link
	detach func() error
}

// attach attaches the program under test to lb0 in native mode: Weir's
// through its own Attach (pinned link under the environment's maps
// root), another program with a plain link.
func (e *env) attach() (*attachment, error) {
	a := &attachment{}
	err := e.net.node.Do(func() error {
		if w := e.t.weir; w != nil {
			if err := w.Attach(lbDev, xdp.Native); err != nil {
				return err
			}
			a.detach = func() error { return e.net.node.Do(func() error { return w.Detach(lbDev) }) }
			l, err := link.LoadPinnedLink(xdp.LinkPin(e.t.root, lbDev), nil)
			if err != nil {
				return errors.Join(fmt.Errorf("open Weir's pinned link on %s: %w", lbDev, err), a.detach())
			}
			a.link = l
			return nil
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: e.t.prog, Interface: e.net.lbIndex, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attach %s to %s in native mode: %w", e.t.name, lbDev, err)
		}
		a.link = l
		a.detach = func() error { return nil }
		return nil
	})
	return a, err
}

func (a *attachment) close() error {
	return errors.Join(a.link.Close(), a.detach())
}

// live measures sc in live mode, alternating runs with the XDP_TX
// hairpin.
func (e *env) live(ctx context.Context, s *sink, a *attachment, sc scenario, size, flows int) (Result, error) {
	if err := e.setup(ctx, sc); err != nil {
		return Result{}, err
	}
	b, err := e.prepare(sc, size, flows, e.tx)
	if err != nil {
		return Result{}, err
	}
	defer b.close()
	measured := e.t.prog
	if sc.traffic == trafficNone {
		measured = e.tx
	}
	res := e.result(sc, ModeLive, b)
	// use puts p on lb0 and sends n frames through it; it returns the
	// frames at the sink per second of the generator CPU's time and per
	// second of wall time, and the frames lost.
	use := func(p *ebpf.Program, n int, check bool) (pps, wall float64, lost uint64, err error) {
		if err := a.link.Update(p); err != nil {
			return 0, 0, 0, fmt.Errorf("swap the program on %s: %w", lbDev, err)
		}
		all0, tun0, err := s.settled()
		if err != nil {
			return 0, 0, 0, err
		}
		var r runResult
		start := time.Now()
		err = e.net.client.Do(func() error {
			var err error
			r, err = progRun(ctx, b.base, runOpts{data: b.tmpl, ifindex: e.net.peerIndex, repeat: uint32(n),
				flags: flagLiveFrames, batchSize: uint32(e.opts.BatchSize)})
			return err
		})
		elapsed := time.Since(start)
		if err != nil {
			return 0, 0, 0, err
		}
		all1, tun1, err := s.settled()
		if err != nil {
			return 0, 0, 0, err
		}
		got, tun := all1-all0, tun1-tun0
		if got == 0 {
			return 0, 0, uint64(n), fmt.Errorf("%s: none of %d frames reached the sink on %s (is native XDP working on veth?)", sc.name, n, peerDev)
		}
		if check && sc.encap && float64(tun) < 0.99*float64(got) {
			return 0, 0, 0, fmt.Errorf("%s: only %d of %d frames at the sink were DSR-encapsulated: the scenario doesn't measure what it claims", sc.name, tun, got)
		}
		if r.nsPerRun == 0 {
			return 0, 0, 0, fmt.Errorf("%s: the kernel reported no time for %d frames", sc.name, n)
		}
		cpu := float64(r.nsPerRun) * float64(n) / 1e9
		return float64(got) / cpu, float64(got) / elapsed.Seconds(), uint64(max(int64(n)-int64(got), 0)), nil
	}
	if b.warm > 0 {
		if _, _, _, err := use(measured, b.warm, false); err != nil {
			return Result{}, err
		}
	}
	before, err := e.drops()
	if err != nil {
		return Result{}, err
	}
	var pps, wall, base, lost []float64
	for range e.opts.Runs {
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		p, w, l, err := use(measured, e.opts.LivePackets, e.checksVerdicts(sc))
		if err != nil {
			return Result{}, err
		}
		bp, _, _, err := use(e.tx, e.opts.LivePackets, false)
		if err != nil {
			return Result{}, err
		}
		pps, wall, base, lost = append(pps, p), append(wall, w), append(base, bp), append(lost, float64(l))
	}
	after, err := e.drops()
	if err != nil {
		return Result{}, err
	}
	if e.checksVerdicts(sc) {
		if err := checkDrops(sc, before, after, uint64(e.opts.Runs*e.opts.LivePackets)); err != nil {
			return Result{}, err
		}
	}
	med, wmed, bmed, drops := median(pps), median(wall), median(base), uint64(median(lost))
	res.PPS, res.WallPPS, res.Drops = &med, &wmed, &drops
	res.Baseline, res.BasePPS = ScenarioXDPTX, bmed
	if bmed > 0 {
		res.Ratio = med / bmed
	}
	return res, nil
}
