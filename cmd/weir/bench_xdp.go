package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/weir-lb/weir/xdp/xdpbench"
)

func runBenchXDP(ctx context.Context, args []string) error {
	return benchXDP(ctx, args, os.Stdout, os.Stderr)
}

// benchXDP is `weir bench xdp`: results to out, progress to log.
func benchXDP(ctx context.Context, args []string, out, log io.Writer) error {
	fs := pflag.NewFlagSet("bench xdp", pflag.ContinueOnError)
	fs.SetOutput(log)
	var (
		o         xdpbench.Options
		mode      string
		format    outputFormat
		plot      string
		po        xdpbench.PlotOptions
		quiet     bool
		list      bool
		from      string
		protos    []string
		scenarios []string
	)
	fs.StringVar(&mode, "mode", string(xdpbench.ModeTestRun), "test-run (BPF_PROG_TEST_RUN, ns per packet), live (live-frames generator into the attached program, pps at a sink) or both")
	fs.StringSliceVar(&scenarios, "scenarios", nil, "run only these scenarios (default: every one the mode and program allow; --list-scenarios names them)")
	fs.IntSliceVar(&o.Services, "services", xdpbench.DefaultServices, "service counts to sweep")
	fs.IntSliceVar(&o.Flows, "flows", xdpbench.DefaultFlows, "established flows cycled through (flow f goes to service f mod N); new-flow scenarios make every packet a new flow")
	fs.IntSliceVar(&o.Sizes, "sizes", xdpbench.DefaultSizes, "frame sizes in bytes, Ethernet header included (raised to a family's headers when smaller)")
	fs.IntSliceVar(&o.IPs, "ip", xdpbench.DefaultIPs, "IP families: 4, 6")
	fs.StringSliceVar(&protos, "proto", xdpbench.DefaultProtos, "protocols: tcp, udp")
	fs.IntVar(&o.Backends, "backends", xdpbench.DefaultBackends, "backends per service")
	fs.IntVar(&o.TableSize, "table-size", xdpbench.DefaultTableSize, "Maglev table slots per service")
	fs.IntVar(&o.Packets, "packets", xdpbench.DefaultPackets, "packets per test-run measurement")
	fs.IntVar(&o.LivePackets, "live-packets", xdpbench.DefaultLivePackets, "frames per live measurement")
	fs.IntVar(&o.Runs, "runs", xdpbench.DefaultRuns, "runs per measurement, alternated with the baseline's; the median counts")
	fs.IntVar(&o.BatchSize, "batch-size", xdpbench.DefaultBatchSize, "live-frames batch size")
	fs.StringVar(&o.Object, "object", "", "benchmark this XDP object file instead of Weir's weir_xdp (with --program)")
	fs.StringVar(&o.Program, "program", "", "the XDP program of --object to benchmark")
	format.flags(fs)
	fs.StringVar(&plot, "plot", "", "also draw the results to FILE.svg or FILE.png")
	fs.StringVar(&po.X, "plot-x", "services", "plot x axis: services or flows")
	fs.StringVar(&po.Y, "plot-y", "", "plot y axis: ns (test-run) or pps (live); default ns when there are test-run results")
	fs.BoolVarP(&quiet, "quiet", "q", false, "no progress lines on stderr")
	fs.BoolVar(&list, "list-scenarios", false, "list the scenarios and exit")
	fs.StringVar(&from, "from", "", "run nothing: read the results of an earlier --json run from FILE and print (or plot) them")
	fs.Usage = func() {
		fmt.Fprintln(log, "usage: weir bench xdp [--mode test-run|live|both] [--scenarios a,b] [--services N,...] [--json|--csv] [--plot FILE.svg|png]\n"+
			"       weir bench xdp --object FILE.o --program NAME ...   (another XDP program, the same scenarios)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if list {
		for _, n := range xdpbench.ScenarioNames() {
			fmt.Fprintf(out, "%-19s %s\n", n, xdpbench.ScenarioAbout(n))
		}
		return nil
	}
	if err := format.check(); err != nil {
		return err
	}
	m, err := xdpbench.ParseMode(mode)
	if err != nil {
		return err
	}
	o.Mode, o.Protos = m, protos
	for _, s := range scenarios {
		if s = strings.TrimSpace(s); s != "" {
			o.Scenarios = append(o.Scenarios, s)
		}
	}
	if !quiet {
		o.Progress = log
	}
	var (
		results []xdpbench.Result
		runErr  error
	)
	if from != "" {
		results, runErr = readResults(from)
	} else {
		results, runErr = xdpbench.Run(ctx, o)
	}
	if len(results) == 0 && runErr != nil {
		return runErr
	}
	var werr error
	switch {
	case format.json:
		werr = xdpbench.WriteJSON(out, results)
	case format.csv:
		werr = xdpbench.WriteCSV(out, results)
	default:
		werr = xdpbench.WriteTable(out, results)
	}
	if plot != "" && werr == nil {
		werr = xdpbench.PlotFile(plot, results, po)
	}
	if runErr != nil {
		return fmt.Errorf("stopped after %d results: %w", len(results), runErr)
	}
	return werr
}

func readResults(path string) ([]xdpbench.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return xdpbench.ReadJSON(f)
}
