package xdpbench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// Run benchmarks the program (Weir's weir_xdp, or Options.Object's) over
// the sweep of Options and returns one Result per measurement, test-run
// results first. Everything it creates (namespaces, links, programs,
// pins) is removed before it returns, also when ctx is cancelled; it
// then returns the results so far with ctx's error.
func Run(ctx context.Context, o Options) (results []Result, err error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the XDP benchmark creates network namespaces and loads BPF programs: run it as root")
	}
	weirMaps, stages := true, true
	if o.Object != "" {
		spec, err := objectSpec(o.Object, o.Program)
		if err != nil {
			return nil, err
		}
		weirMaps, stages = usesWeirMaps(spec), false
	}
	modes := o.Mode.modes()
	selected := map[Mode][]scenario{}
	for _, m := range modes {
		sel, err := selectScenarios(o.Scenarios, m, weirMaps, stages, o.Mode != ModeBoth)
		if err != nil {
			return nil, err
		}
		selected[m] = sel
	}

	net, err := newNetwork()
	if err != nil {
		return nil, fmt.Errorf("create the benchmark's namespaces: %w", err)
	}
	defer func() { err = errors.Join(err, net.close()) }()
	runDir, removeDir, err := bpffsDir()
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, removeDir()) }()
	var s *sink
	if len(selected[ModeLive]) > 0 {
		if s, err = newSink(net); err != nil {
			return nil, err
		}
		defer func() { err = errors.Join(err, s.close()) }()
	}

	for _, n := range slices.Sorted(slices.Values(o.Services)) {
		for _, ip := range o.IPs {
			for _, ps := range o.Protos {
				proto, _ := parseProto(ps)
				rs, err := runEnv(ctx, net, s, runDir, o, selected, n, ip, proto)
				results = append(results, rs...)
				if err != nil {
					return sortResults(results), err
				}
			}
		}
	}
	return sortResults(results), nil
}

// runEnv runs every selected measurement of one environment.
func runEnv(ctx context.Context, net *network, s *sink, runDir string, o Options, selected map[Mode][]scenario, n, ip int, proto uint8) (results []Result, err error) {
	o.progress("ipv%d/%s, %d services: loading", ip, protoName(proto), n)
	e, err := newEnv(ctx, net, runDir, o, n, ip, proto)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, e.close()) }()
	if e.svc != nil {
		o.progress("ipv%d/%s: %d services written in %s, conntrack filled in %s", ip, protoName(proto), n,
			e.fillTime.Round(time.Millisecond), e.ctFillTime.Round(time.Millisecond))
	}
	for _, m := range o.Mode.modes() {
		var a *attachment
		if m == ModeLive && len(selected[m]) > 0 {
			if a, err = e.attach(); err != nil {
				return results, err
			}
		}
		for _, size := range o.Sizes {
			for _, sc := range selected[m] {
				flows := o.Flows
				if sc.traffic == trafficNew || sc.traffic == trafficNone {
					flows = flows[:1] // the flow count doesn't apply
				}
				for _, f := range flows {
					if err := ctx.Err(); err != nil {
						return results, errors.Join(err, closeAttachment(a))
					}
					var r Result
					if m == ModeLive {
						r, err = e.live(ctx, s, a, sc, size, f)
					} else {
						r, err = e.testRun(ctx, sc, size, f)
					}
					if err != nil {
						return results, errors.Join(fmt.Errorf("%s %s (ipv%d/%s, %d services, %d flows, %d bytes): %w", m, sc.name, ip, protoName(proto), n, f, size, err), closeAttachment(a))
					}
					o.progress("%s", r.line())
					results = append(results, r)
				}
			}
		}
		if err := closeAttachment(a); err != nil {
			return results, err
		}
	}
	return results, nil
}

func closeAttachment(a *attachment) error {
	if a == nil {
		return nil
	}
	return a.close()
}

func (o Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// line is a one-line summary for progress output.
func (r Result) line() string {
	fig := ""
	if r.NsPerPacket != nil {
		fig = fmt.Sprintf("%.1f ns/pkt", *r.NsPerPacket)
	} else if r.PPS != nil {
		fig = fmt.Sprintf("%.3f Mpps", *r.PPS/1e6)
	}
	return fmt.Sprintf("%-9s %-19s ipv%d/%s %4dB services=%-6d flows=%-6d %s  x%.2f %s", r.Mode, r.Scenario, r.IP, r.Proto, r.Size, r.Services, r.Flows, fig, r.Ratio, r.Baseline)
}

// sortResults puts test-run results before live ones, keeping the run
// order within each.
func sortResults(rs []Result) []Result {
	slices.SortStableFunc(rs, func(a, b Result) int {
		return cmp.Compare(modeOrder(a.Mode), modeOrder(b.Mode))
	})
	return rs
}

func modeOrder(m Mode) int {
	if m == ModeLive {
		return 1
	}
	return 0
}
