package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// ctFlagSNAT and ctFlagClosing are WEIR_CT_F_SNAT and WEIR_CT_F_CLOSING
// of bpf/include/conntrack.h: the flow was source-NATed and nat_port is
// its port; the TCP client sent a FIN or RST.
const (
	ctFlagSNAT    = 1
	ctFlagClosing = 2
)

// conntrackOptions are the flags of `weir inspect conntrack`.
type conntrackOptions struct {
	services, backends, addresses []string
	count, flush                  bool
}

var conntrackFlagNames = []string{"service", "backend", "address", "count", "flush"}

func conntrackFlags(fs *pflag.FlagSet, o *conntrackOptions) {
	fs.StringSliceVar(&o.services, "service", nil, "conntrack: only flows of these services (name, namespace/name[:port], or a frontend addr:port/PROTO)")
	fs.StringSliceVar(&o.backends, "backend", nil, "conntrack: only flows to these backends (addr or addr:port)")
	fs.StringSliceVar(&o.addresses, "address", nil, "conntrack: only flows whose client, frontend or backend address is this address or in this CIDR")
	fs.BoolVar(&o.count, "count", false, "conntrack: print how many entries match instead of listing them")
	fs.BoolVar(&o.flush, "flush", false, "conntrack: delete the matching entries (needs --service or --backend); their next packet is load-balanced afresh")
}

// changed names the first conntrack flag set on the command line, or "".
func (o conntrackOptions) changed(fs *pflag.FlagSet) string {
	for _, n := range conntrackFlagNames {
		if fs.Changed(n) {
			return n
		}
	}
	return ""
}

// CTEntryView is one connection-tracking entry as `weir inspect
// conntrack -o json` prints it. The field names are a contract
// (docs/OBSERVABILITY.md).
type CTEntryView struct {
	Proto    string `json:"proto"`
	Client   string `json:"client"`   // addr:port
	Frontend string `json:"frontend"` // addr:port/PROTO, as in `weir inspect services`
	Service  string `json:"service"`
	Backend  string `json:"backend"` // addr:port; "backend#N" when removed since
	Mode     string `json:"mode"`    // dsr or snat
	// SNATPort is the node's source port toward the backend (SNAT only).
	SNATPort uint16 `json:"snat_port,omitempty"`
	// AgeSeconds is the time since the flow's last packet, to the second
	// (the datapath refreshes it once a second).
	AgeSeconds float64 `json:"age_seconds"`
	// Closing: the TCP client sent a FIN or RST; the entry expires 10 s
	// after the last packet, and a new SYN is balanced afresh.
	Closing bool `json:"closing,omitempty"`

	key                       bpf.CTKey
	client, frontend, backend netip.Addr
	backendPort               uint16
}

// ctNames resolves the IDs of conntrack entries from a dump.
type ctNames struct {
	services map[lb.ServiceID]string
	backends map[lb.BackendID]netip.AddrPort
}

func newCTNames(st *lb.DatapathState) ctNames {
	n := ctNames{services: map[lb.ServiceID]string{}, backends: map[lb.BackendID]netip.AddrPort{}}
	for _, fe := range st.Frontends {
		name := fe.Service
		if fe.PortName != "" {
			name += ":" + fe.PortName
		}
		n.services[fe.ServiceID] = name
	}
	for id, b := range st.Backends {
		n.backends[id] = netip.AddrPortFrom(b.Addr, b.Port)
	}
	return n
}

// ctView decodes one entry; now is the monotonic clock.
func ctView(k *bpf.CTKey, v *bpf.CTValue, names ctNames, now time.Duration) CTEntryView {
	proto := lb.Protocol(k.Proto)
	e := CTEntryView{
		Proto:    proto.String(),
		client:   k.Saddr.IP(),
		frontend: k.Daddr.IP(),
		Service:  names.services[lb.ServiceID(v.ServiceID)],
		Mode:     "dsr",
		key:      *k,
	}
	e.Client = addrPortString(e.client, k.Sport.Host())
	e.Frontend = frontendString(e.frontend, k.Dport.Host(), proto)
	if b, ok := names.backends[lb.BackendID(v.BackendID)]; ok {
		e.Backend, e.backend, e.backendPort = b.String(), b.Addr(), b.Port()
	} else {
		e.Backend = fmt.Sprintf("backend#%d", v.BackendID)
	}
	if v.Flags&ctFlagSNAT != 0 {
		e.Mode, e.SNATPort = "snat", v.NatPort.Host()
	}
	e.Closing = v.Flags&ctFlagClosing != 0
	if age := now - time.Duration(v.LastSeen); age > 0 {
		e.AgeSeconds = age.Round(time.Second).Seconds()
	}
	return e
}

// ctFilter keeps the entries the flags ask for: any value of one flag,
// all the flags.
type ctFilter struct {
	services  map[string]bool
	backends  []netip.AddrPort // port 0: any port
	addresses []netip.Prefix
}

func newCTFilter(o conntrackOptions) (*ctFilter, error) {
	f := &ctFilter{}
	if len(o.services) > 0 {
		f.services = map[string]bool{}
		for _, s := range o.services {
			f.services[s] = true
		}
	}
	for _, b := range o.backends {
		if ap, err := netip.ParseAddrPort(b); err == nil {
			f.backends = append(f.backends, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			continue
		}
		a, err := netip.ParseAddr(b)
		if err != nil {
			return nil, fmt.Errorf("--backend %q: want addr or addr:port ([v6]:port)", b)
		}
		f.backends = append(f.backends, netip.AddrPortFrom(a.Unmap(), 0))
	}
	for _, a := range o.addresses {
		p, err := parseAddrOrPrefix(a)
		if err != nil {
			return nil, fmt.Errorf("--address: %w", err)
		}
		f.addresses = append(f.addresses, p)
	}
	return f, nil
}

func (f *ctFilter) match(e *CTEntryView) bool {
	if f.services != nil && !matchService(f.services, e.Service) && !f.services[e.Frontend] {
		return false
	}
	if f.backends != nil {
		hit := false
		for _, b := range f.backends {
			hit = hit || (e.backend == b.Addr() && (b.Port() == 0 || b.Port() == e.backendPort))
		}
		if !hit {
			return false
		}
	}
	if f.addresses != nil {
		hit := false
		for _, p := range f.addresses {
			for _, a := range []netip.Addr{e.client, e.frontend, e.backend} {
				hit = hit || (a.IsValid() && p.Contains(a))
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// matchingCT lists the entries of the conntrack map that f keeps.
func matchingCT(m *ebpf.Map, names ctNames, f *ctFilter) ([]CTEntryView, error) {
	if m == nil {
		return nil, errors.New("no conntrack map (weir_ct) pinned: the agent there runs no XDP datapath")
	}
	now := monotonicNow()
	out := []CTEntryView{}
	err := walkCT(m, func(k *bpf.CTKey, v *bpf.CTValue) {
		if e := ctView(k, v, names, now); f.match(&e) {
			out = append(out, e)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Frontend != b.Frontend {
			return a.Frontend < b.Frontend
		}
		return a.Client < b.Client
	})
	return out, err
}

// deleteCT deletes keys in batches. A key gone already (expired, or
// deleted by someone else) is skipped; where batches are unsupported the
// keys go one by one. It returns how many entries it deleted.
func deleteCT(m *ebpf.Map, keys []bpf.CTKey) (int, error) {
	deleted := 0
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), batchSize)]
		n, err := m.BatchDelete(chunk, nil)
		deleted += n
		if err == nil {
			keys = keys[len(chunk):]
			continue
		}
		// The batch stopped at chunk[n]: delete that one alone.
		if n >= len(chunk) {
			return deleted, fmt.Errorf("delete conntrack entries: %w", err)
		}
		if err := m.Delete(&chunk[n]); err == nil {
			deleted++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return deleted, fmt.Errorf("delete conntrack entry of %s -> %s: %w", netip.AddrPortFrom(chunk[n].Saddr.IP(), chunk[n].Sport.Host()),
				netip.AddrPortFrom(chunk[n].Daddr.IP(), chunk[n].Dport.Host()), err)
		}
		keys = keys[n+1:]
	}
	return deleted, nil
}

func inspectConntrack(w io.Writer, maps *bpf.Maps, st *lb.DatapathState, o conntrackOptions, asJSON bool) error {
	if o.flush && o.count {
		return errors.New("--count and --flush: pick one")
	}
	if o.flush && len(o.services) == 0 && len(o.backends) == 0 {
		return errors.New("--flush needs --service or --backend: flushing every flow would move established connections of every service")
	}
	f, err := newCTFilter(o)
	if err != nil {
		return err
	}
	entries, err := matchingCT(maps.CT, newCTNames(st), f)
	if err != nil {
		return err
	}
	switch {
	case o.count:
		if asJSON {
			return writeJSON(w, map[string]int{"count": len(entries)})
		}
		_, err := fmt.Fprintln(w, len(entries))
		return err
	case o.flush:
		keys := make([]bpf.CTKey, len(entries))
		for i := range entries {
			keys[i] = entries[i].key
		}
		n, err := deleteCT(maps.CT, keys)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(w, map[string]int{"flushed": n})
		}
		_, err = fmt.Fprintf(w, "flushed %d conntrack entries\n", n)
		return err
	case asJSON:
		return writeJSON(w, entries)
	}
	return conntrackTable(w, entries)
}

func conntrackTable(w io.Writer, entries []CTEntryView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tCLIENT\tFRONTEND\tSERVICE\tBACKEND\tMODE\tSNAT PORT\tIDLE")
	for _, e := range entries {
		snat := "-"
		if e.Mode == "snat" {
			snat = fmt.Sprint(e.SNATPort)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Proto, e.Client, e.Frontend, dash(e.Service), e.Backend, e.Mode, snat,
			time.Duration(e.AgeSeconds*float64(time.Second)))
	}
	return tw.Flush()
}
