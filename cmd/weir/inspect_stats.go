package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/weir-lb/weir/bpf"
)

// inspectStats prints the datapath's counters, summed over CPUs: the
// same numbers as the agent's metrics, read while it may be down. The
// JSON is a statsSnapshot (docs/OBSERVABILITY.md).
func inspectStats(w io.Writer, maps *bpf.Maps, asJSON bool) error {
	snap, errs := readStats(maps)
	if len(errs) > 0 {
		names := make([]string, 0, len(errs))
		for n, err := range errs {
			names = append(names, fmt.Sprintf("%s: %v", n, err))
		}
		sort.Strings(names)
		return fmt.Errorf("read counters: %s", strings.Join(names, "; "))
	}
	if asJSON {
		return writeJSON(w, snap)
	}
	return statsTable(w, snap)
}

func statsTable(w io.Writer, s *statsSnapshot) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSCOPE\tPACKETS\tBYTES")
	for _, r := range s.Services {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", dash(r.Service), r.Scope, r.Packets, r.Bytes)
	}
	fmt.Fprintln(tw, "\nBACKEND\tSERVICE\tSCOPE\tPACKETS\tBYTES")
	for _, r := range s.Backends {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", r.Backend, dash(r.Service), r.Scope, r.Packets, r.Bytes)
	}
	fmt.Fprintln(tw, "\nDROP REASON\tPACKETS\tBYTES")
	for _, r := range s.Drops {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", r.Reason, r.Packets, r.Bytes)
	}
	fmt.Fprintf(tw, "\nevents lost: %d\n", s.EventsLost)
	return tw.Flush()
}
