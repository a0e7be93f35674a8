package main

// `weir observe`: streams the datapath's drop and sampled new-flow events
// from the pinned ring buffer weir_events. The ring buffer has one
// consumer position: two `weir observe` at once split the events between
// them, and the agent never reads it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// EventView is one event as `weir observe -o json` prints it, one JSON
// object per line. The field names are a contract (docs/OBSERVABILITY.md).
type EventView struct {
	Time time.Time `json:"time"`
	// Type is "drop", "new_flow", or "lost" (Lost events were not
	// delivered since the last report: rate bound or full ring buffer).
	Type   string `json:"type"`
	Reason string `json:"reason,omitempty"` // drops: the reason label of weir_drops_total
	Proto  string `json:"proto,omitempty"`
	Src    string `json:"src,omitempty"` // the client's addr:port as the packet arrived
	Dst    string `json:"dst,omitempty"` // the frontend's addr:port (what the client sent to)
	// Device is the interface the packet arrived on, as named in the
	// network namespace `weir observe` runs in.
	Device  string `json:"device,omitempty"`
	Ifindex uint32 `json:"ifindex,omitempty"`
	// Service is "namespace/name:port" (Kubernetes) or the edge service's
	// name, as the metrics label it; empty when the packet matched none.
	Service string `json:"service,omitempty"`
	Backend string `json:"backend,omitempty"` // new flows: the chosen backend's addr:port
	Lost    uint64 `json:"lost,omitempty"`
	// With --kubeconfig: the pods behind the client and the backend.
	ClientPod  *PodRef `json:"client_pod,omitempty"`
	BackendPod *PodRef `json:"backend_pod,omitempty"`

	// For the filters.
	src, dst, backend netip.Addr
}

// eventNames resolves the IDs an event carries.
type eventNames interface {
	service(id uint32) (string, bool)
	backend(id uint32) (netip.AddrPort, bool)
	device(ifindex uint32) string
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return lb.Protocol(p).String()
}

func eventTypeName(t uint8) string {
	switch t {
	case bpf.EventDrop:
		return "drop"
	case bpf.EventNewFlow:
		return "new_flow"
	}
	return fmt.Sprintf("type_%d", t)
}

func addrPortString(a netip.Addr, port uint16) string {
	if !a.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(a, port).String()
}

// eventView decodes an event; at is its wall-clock time.
func eventView(ev *bpf.Event, at time.Time, names eventNames) EventView {
	v := EventView{
		Time:    at,
		Type:    eventTypeName(ev.Type),
		Proto:   protoName(ev.Proto),
		Ifindex: ev.Ifindex,
		src:     ev.Saddr.IP(),
		dst:     ev.Daddr.IP(),
	}
	if ev.Type == bpf.EventDrop {
		v.Reason = bpf.ReasonName(ev.Reason)
	}
	v.Src = addrPortString(v.src, ev.Sport.Host())
	v.Dst = addrPortString(v.dst, ev.Dport.Host())
	if ev.Ifindex != 0 {
		v.Device = names.device(ev.Ifindex)
	}
	if ev.ServiceID != 0 {
		if n, ok := names.service(ev.ServiceID); ok {
			v.Service = n
		} else {
			v.Service = fmt.Sprintf("service#%d", ev.ServiceID) // removed since
		}
	}
	if ev.BackendID != 0 {
		if b, ok := names.backend(ev.BackendID); ok {
			v.Backend, v.backend = b.String(), b.Addr()
		} else {
			v.Backend = fmt.Sprintf("backend#%d", ev.BackendID)
		}
	}
	return v
}

// eventFilter keeps the events the flags ask for: any of the values of
// one flag, all of the flags.
type eventFilter struct {
	services  map[string]bool
	reasons   map[string]bool
	types     map[string]bool
	addresses []netip.Prefix
}

func newEventFilter(services, reasons, types, addresses []string) (*eventFilter, error) {
	f := &eventFilter{}
	if len(services) > 0 {
		f.services = map[string]bool{}
		for _, s := range services {
			f.services[s] = true
		}
	}
	if len(reasons) > 0 {
		known := map[string]bool{}
		var names []string
		for _, r := range bpf.Reasons()[1:] {
			known[r.String()] = true
			names = append(names, r.String())
		}
		f.reasons = map[string]bool{}
		for _, r := range reasons {
			if !known[r] {
				return nil, fmt.Errorf("--reason %q: want one of %s", r, strings.Join(names, ", "))
			}
			f.reasons[r] = true
		}
	}
	if len(types) > 0 {
		f.types = map[string]bool{}
		for _, t := range types {
			switch t {
			case "drop":
				f.types["drop"] = true
			case "new-flow", "new_flow":
				f.types["new_flow"] = true
			default:
				return nil, fmt.Errorf("--type %q: want drop or new-flow", t)
			}
		}
	}
	for _, a := range addresses {
		p, err := parseAddrOrPrefix(a)
		if err != nil {
			return nil, fmt.Errorf("--address: %w", err)
		}
		f.addresses = append(f.addresses, p)
	}
	return f, nil
}

// parseAddrOrPrefix accepts an address (a /32 or /128) or a CIDR.
func parseAddrOrPrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// matchService reports whether a service filter value names svc
// ("namespace/name:port"): the whole name, or the name without its port.
func matchService(want map[string]bool, svc string) bool {
	if svc == "" {
		return false
	}
	if want[svc] {
		return true
	}
	base, _, _ := strings.Cut(svc, ":")
	return want[base]
}

func (f *eventFilter) match(v *EventView) bool {
	if f.types != nil && !f.types[v.Type] {
		return false
	}
	if f.reasons != nil && !f.reasons[v.Reason] {
		return false
	}
	if f.services != nil && !matchService(f.services, v.Service) {
		return false
	}
	if f.addresses != nil {
		hit := false
		for _, p := range f.addresses {
			for _, a := range []netip.Addr{v.src, v.dst, v.backend} {
				hit = hit || (a.IsValid() && p.Contains(a))
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// eventPrinter writes events as a table or JSON lines.
type eventPrinter struct {
	w      io.Writer
	json   bool
	header bool
}

const eventRowFormat = "%-15s  %-8s  %-12s  %-6s  %-22s  %-22s  %-8s  %-20s  %s\n"

func (p *eventPrinter) print(v *EventView) error {
	if p.json {
		return json.NewEncoder(p.w).Encode(v)
	}
	if !p.header {
		p.header = true
		if _, err := fmt.Fprintf(p.w, eventRowFormat, "TIME", "TYPE", "REASON", "PROTO", "SOURCE", "DESTINATION", "DEVICE", "SERVICE", "BACKEND"); err != nil {
			return err
		}
	}
	if v.Type == "lost" {
		_, err := fmt.Fprintf(p.w, "%-15s  lost      %d events (over the rate bound, or the ring buffer was full)\n", v.Time.Format("15:04:05.000000"), v.Lost)
		return err
	}
	_, err := fmt.Fprintf(p.w, eventRowFormat, v.Time.Format("15:04:05.000000"), v.Type, dash(v.Reason), v.Proto,
		dash(v.Src), dash(v.Dst), dash(v.Device), dash(v.Service), dash(v.Backend))
	return err
}

// monotonicNow is the clock bpf_ktime_get_ns() reads.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// mapNames resolves IDs from the pinned maps, cached; a miss reloads the
// maps at most once a second, so a flood of events about removed
// services costs no flood of map reads.
type mapNames struct {
	maps     *bpf.Maps
	services map[uint32]serviceName
	backends map[uint32]netip.AddrPort
	devices  map[uint32]string
	loaded   time.Time
}

func newMapNames(m *bpf.Maps) *mapNames {
	n := &mapNames{maps: m, devices: map[uint32]string{}}
	n.reload()
	return n
}

func (n *mapNames) reload() {
	n.loaded = time.Now()
	if s, err := readServiceNames(n.maps); err == nil {
		n.services = s
	}
	bes := map[uint32]netip.AddrPort{}
	var (
		id uint32
		bv bpf.BackendValue
	)
	it := n.maps.Backends.Iterate()
	for it.Next(&id, &bv) {
		bes[id] = netip.AddrPortFrom(bv.Addr.IP(), bv.Port.Host())
	}
	if it.Err() == nil {
		n.backends = bes
	}
}

func (n *mapNames) reloadOnMiss() {
	if time.Since(n.loaded) >= time.Second {
		n.reload()
	}
}

func (n *mapNames) service(id uint32) (string, bool) {
	s, ok := n.services[id]
	if !ok {
		n.reloadOnMiss()
		s, ok = n.services[id]
	}
	return s.Name, ok
}

func (n *mapNames) backend(id uint32) (netip.AddrPort, bool) {
	b, ok := n.backends[id]
	if !ok {
		n.reloadOnMiss()
		b, ok = n.backends[id]
	}
	return b, ok
}

func (n *mapNames) device(ifindex uint32) string {
	if d, ok := n.devices[ifindex]; ok {
		return d
	}
	d := fmt.Sprintf("if%d", ifindex) // not in this network namespace
	if iface, err := net.InterfaceByIndex(int(ifindex)); err == nil {
		d = iface.Name
	}
	n.devices[ifindex] = d
	return d
}

type observeOptions struct {
	root                                string
	output                              string
	services, reasons, types, addresses []string
	count                               int
	timeout                             time.Duration
	backlog                             bool
	kubeconfig                          string
}

func observeFlags(o *observeOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("observe", pflag.ContinueOnError)
	fs.StringVar(&o.root, "bpf-root", "/sys/fs/bpf/weir", "the agent's --bpf-root")
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table or json (one object per line)")
	fs.StringSliceVar(&o.services, "service", nil, "only events of these services (namespace/name, namespace/name:port, or an edge name)")
	fs.StringSliceVar(&o.reasons, "reason", nil, "only drops for these reasons (e.g. source_range, no_backend)")
	fs.StringSliceVar(&o.types, "type", nil, "only these event types: drop, new-flow")
	fs.StringSliceVar(&o.addresses, "address", nil, "only events whose client, frontend or backend address is this address or in this CIDR")
	fs.IntVar(&o.count, "count", 0, "exit after this many events (0: until interrupted)")
	fs.DurationVar(&o.timeout, "timeout", 0, "exit after this long (0: until interrupted)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "label events with the client's and backend's pods, from this cluster's Pods")
	fs.BoolVar(&o.backlog, "backlog", false, "also print the events buffered before weir observe started (the ring buffer keeps them until read)")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: weir observe [--service S] [--reason R] [--type drop|new-flow] [--address A] [-o json] [--bpf-root DIR]\n\n"+
			"New-flow events need the agent's --new-flow-sample. Two weir observe at once split the events between them.")
		fs.PrintDefaults()
	}
	return fs
}

func runObserve(ctx context.Context, args []string) error {
	var o observeOptions
	fs := observeFlags(&o)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("-o %q: want table or json", o.output)
	}
	filter, err := newEventFilter(o.services, o.reasons, o.types, o.addresses)
	if err != nil {
		return err
	}
	maps, err := bpf.LoadPinnedMaps(o.root)
	if err != nil {
		return err
	}
	defer maps.Close()
	if maps.Events == nil {
		return fmt.Errorf("no events ring buffer (weir_events) pinned under %s: the agent there is older than weir observe", o.root)
	}
	rd, err := ringbuf.NewReader(maps.Events)
	if err != nil {
		return fmt.Errorf("read the ring buffer %s/weir_events: %w", o.root, err)
	}
	defer rd.Close()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	go func() {
		<-ctx.Done()
		_ = rd.Close() // interrupts Read
	}()
	var pods *podIndex
	if o.kubeconfig != "" {
		cfg, err := kubeRESTConfig(o.kubeconfig)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		pods = newPodIndex()
		if err := pods.watchPods(ctx, client); err != nil {
			return err
		}
	}
	ob := &observer{
		pods:    pods,
		rd:      rd,
		lost:    maps.EventsLost,
		names:   newMapNames(maps),
		filter:  filter,
		out:     &eventPrinter{w: os.Stdout, json: o.output == "json"},
		count:   o.count,
		backlog: o.backlog,
	}
	return ob.run()
}

// observer is one run of `weir observe`.
type observer struct {
	pods    *podIndex // nil without --kubeconfig
	rd      *ringbuf.Reader
	lost    *ebpf.Map // weir_events_lost; nil from an older agent
	names   eventNames
	filter  *eventFilter
	out     *eventPrinter
	count   int
	backlog bool
}

// lostReportPeriod is how often lost events are checked for and reported.
const lostReportPeriod = time.Second

func (o *observer) run() error {
	// The kernel stamps events with the monotonic clock; wall = boot + ts.
	mono := monotonicNow()
	boot := time.Now().Add(-mono)
	lastLost := o.readLost()
	nextLost := time.Now().Add(lostReportPeriod)
	printed := 0
	var rec ringbuf.Record
	for {
		o.rd.SetDeadline(nextLost)
		err := o.rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed):
			return nil // interrupted, or --timeout
		case err != nil:
			return fmt.Errorf("read the events ring buffer: %w", err)
		default:
			ev, err := bpf.UnmarshalEvent(rec.RawSample)
			if err != nil {
				return err
			}
			if !o.backlog && time.Duration(ev.Timestamp) < mono {
				continue // buffered before we started
			}
			v := eventView(&ev, boot.Add(time.Duration(ev.Timestamp)), o.names)
			if o.pods != nil {
				o.pods.annotate(&v)
			}
			if !o.filter.match(&v) {
				continue
			}
			if err := o.out.print(&v); err != nil {
				return err
			}
			if printed++; o.count > 0 && printed >= o.count {
				return nil
			}
		}
		if now := time.Now(); !now.Before(nextLost) {
			nextLost = now.Add(lostReportPeriod)
			if n := o.readLost(); n > lastLost {
				if err := o.out.print(&EventView{Time: now, Type: "lost", Lost: n - lastLost}); err != nil {
					return err
				}
				lastLost = n
			}
		}
	}
}

// readLost sums weir_events_lost; 0 when it can't be read (an older
// agent).
func (o *observer) readLost() uint64 {
	if o.lost == nil {
		return 0
	}
	n, _ := sumEventsLost(o.lost)
	return n
}
