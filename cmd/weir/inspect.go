package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// ServiceView is one programmed frontend as `weir inspect services -o json`
// prints it. The field names are a contract (docs/INSPECT.md).
type ServiceView struct {
	Service  string        `json:"service"`
	Port     string        `json:"port"`
	Frontend string        `json:"frontend"`
	Type     string        `json:"type"`
	Scope    string        `json:"scope"`
	Mode     string        `json:"mode"`
	Backends []BackendView `json:"backends"`
}

// BackendView is one backend of a ServiceView.
type BackendView struct {
	Address string `json:"address"`
	State   string `json:"state"`
	Weight  uint16 `json:"weight"`
	Tunnel  string `json:"tunnel,omitempty"`
}

func runInspect(_ context.Context, args []string) error {
	fs := pflag.NewFlagSet("inspect", pflag.ContinueOnError)
	root := fs.String("bpf-root", "/sys/fs/bpf/weir", "the agent's --bpf-root")
	output := fs.StringP("output", "o", "table", "output format: table or json")
	var ct conntrackOptions
	conntrackFlags(fs, &ct)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: weir inspect services|backends|maglev SERVICE|conntrack|stats|stages [-o json] [--bpf-root DIR]\n"+
			"       weir inspect conntrack [--service S] [--backend B] [--address A] [--count | --flush]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("name what to inspect")
	}
	what := fs.Arg(0)
	if what != "maglev" && fs.NArg() > 1 {
		hint := ""
		if what == "conntrack" {
			hint = ": conntrack filters are flags (--service, --backend, --address)"
		}
		return fmt.Errorf("unexpected arguments %v%s", fs.Args()[1:], hint)
	}
	if what != "conntrack" {
		if f := ct.changed(fs); f != "" {
			return fmt.Errorf("--%s is a flag of `weir inspect conntrack`, not of %s", f, what)
		}
	}
	out := os.Stdout
	if what == "stages" {
		// From the pinned links alone: no maps needed.
		return inspectStages(out, *root, *output == "json")
	}
	maps, err := bpf.LoadPinnedMaps(*root)
	if err != nil {
		return err
	}
	defer maps.Close()
	if what == "stats" {
		return inspectStats(out, maps, *output == "json")
	}
	state, err := bpf.NewDatapath(maps).Dump()
	if err != nil {
		return err
	}
	switch what {
	case "services":
		views := serviceViews(state)
		if *output == "json" {
			return writeJSON(out, views)
		}
		return servicesTable(out, views)
	case "backends":
		views := backendRows(state)
		if *output == "json" {
			return writeJSON(out, views)
		}
		return backendsTable(out, views)
	case "maglev":
		if fs.NArg() != 2 {
			return fmt.Errorf("usage: weir inspect maglev SERVICE (a frontend addr:port/PROTO or a service name)")
		}
		rows, err := maglevShares(state, fs.Arg(1))
		if err != nil {
			return err
		}
		if *output == "json" {
			return writeJSON(out, rows)
		}
		return maglevTable(out, rows)
	case "conntrack":
		return inspectConntrack(out, maps, state, ct, *output == "json")
	default:
		return fmt.Errorf("unknown inspect target %q (want services, backends, maglev, conntrack, stats or stages)", what)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func frontendString(addr netip.Addr, port uint16, proto lb.Protocol) string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(addr, port), proto)
}

// serviceViews lists every programmed frontend in its own scope (an
// external frontend's internal twin, which serves local clients through the
// socket hooks, is not listed separately).
func serviceViews(st *lb.DatapathState) []ServiceView {
	byService := map[lb.ServiceID][]BackendView{}
	ids := make([]lb.BackendID, 0, len(st.Backends))
	for id := range st.Backends {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		b := st.Backends[id]
		v := BackendView{Address: netip.AddrPortFrom(b.Addr, b.Port).String(), State: b.State.String(), Weight: b.Weight}
		if b.Tunnel.IsValid() && b.Tunnel != b.Addr {
			v.Tunnel = b.Tunnel.String()
		}
		byService[b.ServiceID] = append(byService[b.ServiceID], v)
	}
	views := []ServiceView{}
	for key, e := range st.Services {
		fe, ok := st.Frontends[e.FrontendID]
		if !ok || fe.Scope != key.Scope {
			continue
		}
		bs := byService[e.ServiceID]
		sort.Slice(bs, func(i, j int) bool { return bs[i].Address < bs[j].Address })
		if bs == nil {
			bs = []BackendView{}
		}
		views = append(views, ServiceView{
			Service:  fe.Service,
			Port:     fe.PortName,
			Frontend: frontendString(key.Addr, key.Port, key.Protocol),
			Type:     fe.Kind.String(),
			Scope:    key.Scope.String(),
			Mode:     e.Mode.String(),
			Backends: bs,
		})
	}
	sort.Slice(views, func(i, j int) bool {
		if views[i].Service != views[j].Service {
			return views[i].Service < views[j].Service
		}
		return views[i].Frontend < views[j].Frontend
	})
	return views
}

func servicesTable(w io.Writer, views []ServiceView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tPORT\tFRONTEND\tTYPE\tSCOPE\tMODE\tBACKENDS")
	for _, v := range views {
		var bs []string
		for _, b := range v.Backends {
			s := fmt.Sprintf("%s (%s, w=%d)", b.Address, b.State, b.Weight)
			bs = append(bs, s)
		}
		if len(bs) == 0 {
			bs = []string{"<none: clients are rejected>"}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Service, dash(v.Port), v.Frontend, v.Type, v.Scope, v.Mode, strings.Join(bs, ", "))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// BackendRow is one backend entry as `weir inspect backends` prints it.
type BackendRow struct {
	ID      uint32 `json:"id"`
	Service string `json:"service"`
	Address string `json:"address"`
	Tunnel  string `json:"tunnel"`
	State   string `json:"state"`
	Weight  uint16 `json:"weight"`
}

func backendRows(st *lb.DatapathState) []BackendRow {
	names := map[lb.ServiceID]string{}
	for _, fe := range st.Frontends {
		n := fe.Service
		if fe.PortName != "" {
			n += ":" + fe.PortName
		}
		names[fe.ServiceID] = n
	}
	rows := []BackendRow{}
	for id, b := range st.Backends {
		rows = append(rows, BackendRow{
			ID: uint32(id), Service: names[b.ServiceID], Address: netip.AddrPortFrom(b.Addr, b.Port).String(),
			Tunnel: b.Tunnel.String(), State: b.State.String(), Weight: b.Weight,
		})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows
}

func backendsTable(w io.Writer, rows []BackendRow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tADDRESS\tTUNNEL\tSTATE\tWEIGHT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.ID, r.Service, r.Address, r.Tunnel, r.State, r.Weight)
	}
	return tw.Flush()
}

// MaglevShare is one backend's share of a Maglev table against its weight.
type MaglevShare struct {
	Address     string  `json:"address"`
	Weight      uint16  `json:"weight"`
	Slots       int     `json:"slots"`
	Share       float64 `json:"share"`
	WeightShare float64 `json:"weight_share"`
}

// maglevShares finds the external view of the frontend (or named service)
// and counts each backend's slots.
func maglevShares(st *lb.DatapathState, which string) ([]MaglevShare, error) {
	var tid lb.TableID // the live table of the view
	found := false
	for key, e := range st.Services {
		fe := st.Frontends[e.FrontendID]
		name := fe.Service
		if fe.PortName != "" {
			name += ":" + fe.PortName
		}
		if frontendString(key.Addr, key.Port, key.Protocol) == which || name == which || fe.Service == which {
			if !found || key.Scope == lb.ScopeExternal {
				tid, found = e.ServiceID.Table(e.TableGen), true
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("no programmed service matches %q (see `weir inspect services`)", which)
	}
	table := st.Maglev[tid]
	counts := map[lb.BackendID]int{}
	for _, id := range table {
		counts[id]++
	}
	var total float64
	for id := range counts {
		total += float64(st.Backends[id].Weight)
	}
	rows := []MaglevShare{}
	for id, n := range counts {
		b := st.Backends[id]
		rows = append(rows, MaglevShare{
			Address: netip.AddrPortFrom(b.Addr, b.Port).String(), Weight: b.Weight, Slots: n,
			Share: float64(n) / float64(len(table)), WeightShare: float64(b.Weight) / total,
		})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Address < rows[j].Address })
	return rows, nil
}

func maglevTable(w io.Writer, rows []MaglevShare) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tWEIGHT\tSLOTS\tSHARE\tWEIGHT SHARE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f%%\t%.2f%%\n", r.Address, r.Weight, r.Slots, 100*r.Share, 100*r.WeightShare)
	}
	return tw.Flush()
}
