// Command weir is Weir's one binary: the agent, inspection, the benchmark
// harness and the demo, as subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/spf13/pflag"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

func commands() map[string]command {
	return map[string]command{
		"agent":   {"run the load balancer (XDP, socket hooks, control plane)", runAgent},
		"inspect": {"read the pinned maps: services, backends, maglev, conntrack, stats, stages", runInspect},
		"observe": {"stream drop and sampled new-flow events from the datapath", runObserve},
		"cleanup": {"detach every program and remove every pin under --bpf-root", runCleanup},
		"demo":    {"build a namespace topology, load-balance HTTP with DSR, show failover, clean up", runDemo},
		"bench":   {"benchmarks: the XDP datapath (or any XDP program), the control plane, kube-proxy", runBench},
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: weir COMMAND [flags]\n\ncommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nrun 'weir COMMAND --help' for a command's flags")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands()[os.Args[1]]
	if !ok {
		if hidden, ok := hiddenCommands()[os.Args[1]]; ok {
			cmd = hidden
		} else {
			fmt.Fprintf(os.Stderr, "weir: unknown command %q\n\n", os.Args[1])
			usage()
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, os.Args[2:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "weir %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// hiddenCommands are helpers the demo and the tests start inside their
// namespaces; they are not part of the user-facing interface.
func hiddenCommands() map[string]command {
	return map[string]command{
		"demo-backend": {"", runDemoBackend},
	}
}
