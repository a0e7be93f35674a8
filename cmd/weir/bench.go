package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/spf13/pflag"
)

// The `weir bench` subcommands: the XDP benchmarking harness
// (xdp/xdpbench), the control-plane benchmark and the comparison with
// kube-proxy. docs/BENCHMARKS.md has the method and a full run.
func benchCommands() map[string]command {
	return map[string]command{
		"xdp":           {"ns per packet (test-run) and pps (live frames) of weir_xdp or any XDP program, by scenario", runBenchXDP},
		"control-plane": {"time to program N services x M backends into the maps, single-change latency, agent memory", runBenchControlPlane},
		"kube-proxy":    {"Weir against kube-proxy (iptables, nftables) in the same topology: throughput, latency, sync time", runBenchKubeProxy},
	}
}

func runBench(ctx context.Context, args []string) error {
	cmds := benchCommands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		benchUsage(os.Stderr, cmds)
		if len(args) == 0 {
			return errors.New("name a benchmark")
		}
		return pflag.ErrHelp
	}
	cmd, ok := cmds[args[0]]
	if args[0] == "connect-probe" {
		// A helper `bench kube-proxy` starts inside its namespaces.
		cmd, ok = command{run: runConnectProbe}, true
	}
	if !ok {
		benchUsage(os.Stderr, cmds)
		return fmt.Errorf("unknown benchmark %q", args[0])
	}
	return cmd.run(ctx, args[1:])
}

func benchUsage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: weir bench BENCHMARK [flags]\n\nbenchmarks:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nrun 'weir bench BENCHMARK --help' for its flags; docs/BENCHMARKS.md explains the methods")
}

// outputFormat is the shared --json/--csv choice of the benchmarks.
type outputFormat struct{ json, csv bool }

func (o *outputFormat) flags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.json, "json", false, "print one JSON array instead of a table")
	fs.BoolVar(&o.csv, "csv", false, "print CSV (a header row, then one row per result) instead of a table")
}

func (o *outputFormat) check() error {
	if o.json && o.csv {
		return errors.New("--json and --csv exclude each other")
	}
	return nil
}
