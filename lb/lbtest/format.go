package lbtest

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/weir-lb/weir/lb"
)

// Format renders a datapath state as text, one entry per line, sorted, so
// that equal states give equal text (golden files) and an empty state
// gives "". Maglev tables are summarized by their size and the slots each
// backend holds.
//
//	service 10.96.0.10:80/TCP internal: svc=1 fe=1 backends=2 table=251 gen=0 mode=dsr flags=affinity affinity=10s
//	frontend 1: svc=1 10.96.0.10:80/TCP internal ClusterIP default/web port=http
//	backend 1: svc=1 10.0.0.1:8080 weight=1 active
//	maglev 1/0: size=251 1:126 2:125
//	source-range 2: 192.168.0.0/16
//
// A maglev line names the table by service ID and generation (TableID).
func Format(s *lb.DatapathState) string {
	var b strings.Builder
	for _, k := range slices.SortedFunc(maps.Keys(s.Services), compareKey) {
		e := s.Services[k]
		fmt.Fprintf(&b, "service %s %s: svc=%d fe=%d backends=%d table=%d gen=%d mode=%s flags=%s",
			frontendString(k.Addr, k.Port, k.Protocol), k.Scope, e.ServiceID, e.FrontendID, e.Backends, e.TableSize, e.TableGen, e.Mode, flagsString(e.Flags))
		if e.AffinityTimeout != 0 {
			fmt.Fprintf(&b, " affinity=%s", e.AffinityTimeout)
		}
		b.WriteByte('\n')
	}
	for _, id := range slices.Sorted(maps.Keys(s.Frontends)) {
		e := s.Frontends[id]
		fmt.Fprintf(&b, "frontend %d: svc=%d %s %s %s %s", id, e.ServiceID, frontendString(e.Addr, e.Port, e.Protocol), e.Scope, e.Kind, e.Service)
		if e.PortName != "" {
			fmt.Fprintf(&b, " port=%s", e.PortName)
		}
		b.WriteByte('\n')
	}
	for _, id := range slices.Sorted(maps.Keys(s.Backends)) {
		e := s.Backends[id]
		fmt.Fprintf(&b, "backend %d: svc=%d %s", id, e.ServiceID, netip.AddrPortFrom(e.Addr, e.Port))
		if e.Tunnel.IsValid() && e.Tunnel != e.Addr {
			fmt.Fprintf(&b, " via=%s", e.Tunnel)
		}
		fmt.Fprintf(&b, " weight=%d %s\n", e.Weight, e.State)
	}
	for _, id := range slices.Sorted(maps.Keys(s.Maglev)) {
		t := s.Maglev[id]
		counts := map[lb.BackendID]int{}
		for _, be := range t {
			counts[be]++
		}
		fmt.Fprintf(&b, "maglev %s: size=%d", id, len(t))
		for _, be := range slices.Sorted(maps.Keys(counts)) {
			fmt.Fprintf(&b, " %d:%d", be, counts[be])
		}
		b.WriteByte('\n')
	}
	for _, id := range slices.Sorted(maps.Keys(s.SourceRanges)) {
		rs := slices.Clone(s.SourceRanges[id])
		if len(rs) == 0 {
			continue
		}
		slices.SortFunc(rs, func(a, b netip.Prefix) int {
			return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
		})
		fmt.Fprintf(&b, "source-range %d:", id)
		for _, p := range rs {
			fmt.Fprintf(&b, " %s", p)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func frontendString(a netip.Addr, port uint16, p lb.Protocol) string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(a, port), p)
}

func compareKey(a, b lb.ServiceKey) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Scope, b.Scope))
}

var flagNames = []struct {
	f    lb.ServiceFlags
	name string
}{
	{lb.FlagSourceRanges, "source-ranges"},
	{lb.FlagAffinity, "affinity"},
	{lb.FlagLocalOnly, "local-only"},
}

func flagsString(f lb.ServiceFlags) string {
	var names []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			names = append(names, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint16(f)))
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ",")
}

// CheckState reports every reference a datapath lookup could follow that
// doesn't resolve:
//   - a service key whose frontend entry is missing;
//   - a key with Backends > 0 whose Maglev table (its ServiceID's table
//     of generation TableGen) is missing or shorter than the key's
//     TableSize (the datapath would pick slots past its end), or whose
//     table has a slot naming a missing backend or a backend of another
//     service ID;
//   - a key with FlagSourceRanges but no source range for its service ID.
//
// A table no key with Backends > 0 points at is unreachable, so it may
// refer to backends already deleted (a view being torn down). A
// make-before-break writer keeps all of this true after every write.
func CheckState(s *lb.DatapathState) error {
	var errs []error
	reachable := map[lb.TableID]bool{}
	for _, k := range slices.SortedFunc(maps.Keys(s.Services), compareKey) {
		e := s.Services[k]
		name := fmt.Sprintf("service key %s %s", frontendString(k.Addr, k.Port, k.Protocol), k.Scope)
		if _, ok := s.Frontends[e.FrontendID]; !ok {
			errs = append(errs, fmt.Errorf("%s: frontend %d is missing", name, e.FrontendID))
		}
		if e.Backends > 0 {
			tid := e.ServiceID.Table(e.TableGen)
			switch t, ok := s.Maglev[tid]; {
			case e.TableGen > 1:
				errs = append(errs, fmt.Errorf("%s: table generation %d (want 0 or 1)", name, e.TableGen))
			case !ok:
				errs = append(errs, fmt.Errorf("%s: %d backends but Maglev table %s is missing", name, e.Backends, tid))
			case uint32(len(t)) < e.TableSize:
				errs = append(errs, fmt.Errorf("%s: table size %d but Maglev table %s has %d slots", name, e.TableSize, tid, len(t)))
			}
			reachable[tid] = true
		}
		if e.Flags&lb.FlagSourceRanges != 0 && len(s.SourceRanges[e.ServiceID]) == 0 {
			errs = append(errs, fmt.Errorf("%s: flag source-ranges but service ID %d has no range", name, e.ServiceID))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(reachable)) {
		bad := map[lb.BackendID]string{}
		for _, be := range s.Maglev[id] {
			switch e, ok := s.Backends[be]; {
			case !ok:
				bad[be] = "missing"
			case e.ServiceID != id.Service():
				bad[be] = fmt.Sprintf("of service ID %d", e.ServiceID)
			}
		}
		for _, be := range slices.Sorted(maps.Keys(bad)) {
			errs = append(errs, fmt.Errorf("maglev table %s: slot backend %d is %s", id, be, bad[be]))
		}
	}
	return errors.Join(errs...)
}
