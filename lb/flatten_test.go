package lb

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/maglev"
)

var testFlatOpts = flatOptions{defaultTableSize: maglev.DefaultTableSize, internalTableSize: DefaultInternalTableSize}

func be(addr string, port uint16, state BackendState, weight uint16, local bool) Backend {
	return Backend{Addr: netip.MustParseAddr(addr), Port: port, State: state, Weight: weight, Local: local}
}

func fe(addr string, port uint16, scope Scope, kind FrontendKind) Frontend {
	return Frontend{Addr: netip.MustParseAddr(addr), Port: port, Protocol: TCP, Scope: scope, Kind: kind}
}

func mustFlatten(t *testing.T, s *Service) *flatService {
	t.Helper()
	f, err := flatten(s, testFlatOpts)
	if err != nil {
		t.Fatalf("flatten %s: %v", s.Name, err)
	}
	return f
}

func addrs(bs []Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.AddrPort().String())
	}
	return out
}

func wantAddrs(t *testing.T, what string, got []Backend, want ...string) {
	t.Helper()
	if g := addrs(got); !slices.Equal(g, want) {
		t.Errorf("%s = %v, want %v", what, g, want)
	}
}

func TestFlattenClusterIPOnly(t *testing.T) {
	f := mustFlatten(t, &Service{
		Name:      ServiceName{Namespace: "default", Name: "web", Port: "http"},
		Frontends: []Frontend{fe("10.96.0.10", 80, ScopeInternal, KindClusterIP)},
		Backends:  []Backend{be("10.0.0.2", 80, BackendActive, 1, false), be("10.0.0.1", 80, BackendActive, 1, false)},
	})
	if f.views[ScopeExternal] != nil {
		t.Error("a service with only internal frontends has an external view")
	}
	in := f.views[ScopeInternal]
	if in == nil {
		t.Fatal("no internal view")
	}
	wantAddrs(t, "internal backends (sorted)", in.backends, "10.0.0.1:80", "10.0.0.2:80")
	wantAddrs(t, "internal usable", in.usable, "10.0.0.1:80", "10.0.0.2:80")
	if in.tableSize != DefaultInternalTableSize || in.flags != 0 {
		t.Errorf("internal view: table %d flags %b, want %d and none", in.tableSize, in.flags, DefaultInternalTableSize)
	}
	if got := f.frontends[0].keyScopes(); !slices.Equal(got, []Scope{ScopeInternal}) {
		t.Errorf("internal frontend key scopes = %v, want [internal]", got)
	}
}

func TestFlattenExternalViewAndKeys(t *testing.T) {
	f := mustFlatten(t, &Service{
		Name: ServiceName{Name: "edge"},
		Frontends: []Frontend{
			fe("192.0.2.10", 443, ScopeExternal, KindEdgeVIP),
			fe("10.96.0.11", 443, ScopeInternal, KindClusterIP),
		},
		Backends:        []Backend{be("10.0.0.1", 8443, BackendActive, 1, false)},
		MaglevTableSize: 1021,
	})
	ext, in := f.views[ScopeExternal], f.views[ScopeInternal]
	if ext == nil || in == nil {
		t.Fatal("want both views")
	}
	if ext.tableSize != 1021 || in.tableSize != DefaultInternalTableSize {
		t.Errorf("table sizes ext=%d int=%d, want 1021 and %d", ext.tableSize, in.tableSize, DefaultInternalTableSize)
	}
	// Frontends are sorted by address: 10.96.0.11 before 192.0.2.10.
	if got := f.frontends[1].keyScopes(); !slices.Equal(got, []Scope{ScopeExternal, ScopeInternal}) {
		t.Errorf("external frontend key scopes = %v, want [external internal]", got)
	}
	if got := f.frontends[0].keyScopes(); !slices.Equal(got, []Scope{ScopeInternal}) {
		t.Errorf("internal frontend key scopes = %v, want [internal]", got)
	}
}

func TestFlattenDefaultTableSize(t *testing.T) {
	s := &Service{
		Name:      ServiceName{Name: "lb"},
		Frontends: []Frontend{fe("192.0.2.10", 80, ScopeExternal, KindLoadBalancer)},
	}
	f, err := flatten(s, flatOptions{defaultTableSize: 4093, internalTableSize: 509})
	if err != nil {
		t.Fatal(err)
	}
	if f.views[ScopeExternal].tableSize != 4093 || f.views[ScopeInternal].tableSize != 509 {
		t.Errorf("sizes %d/%d, want the options' 4093/509", f.views[ScopeExternal].tableSize, f.views[ScopeInternal].tableSize)
	}
	s.MaglevTableSize = 1000
	if _, err := flatten(s, testFlatOpts); err == nil || !strings.Contains(err.Error(), "lb") {
		t.Errorf("table size 1000: err = %v, want an error naming the service", err)
	}
}

func TestFlattenLocalPolicies(t *testing.T) {
	backends := []Backend{
		be("10.0.0.1", 80, BackendActive, 1, true),
		be("10.0.0.2", 80, BackendActive, 1, false),
	}
	for _, tc := range []struct {
		name              string
		extLocal, inLocal bool
		ext, in           []string
	}{
		{"cluster", false, false, []string{"10.0.0.1:80", "10.0.0.2:80"}, []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{"external local", true, false, []string{"10.0.0.1:80"}, []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{"internal local", false, true, []string{"10.0.0.1:80", "10.0.0.2:80"}, []string{"10.0.0.1:80"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFlatten(t, &Service{
				Name:          ServiceName{Name: "np"},
				Frontends:     []Frontend{fe("192.0.2.1", 30080, ScopeExternal, KindNodePort)},
				Backends:      backends,
				ExternalLocal: tc.extLocal,
				InternalLocal: tc.inLocal,
			})
			ext, in := f.views[ScopeExternal], f.views[ScopeInternal]
			wantAddrs(t, "external backends", ext.backends, tc.ext...)
			wantAddrs(t, "internal backends", in.backends, tc.in...)
			if got := ext.flags&FlagLocalOnly != 0; got != tc.extLocal {
				t.Errorf("external FlagLocalOnly = %v, want %v", got, tc.extLocal)
			}
			if got := in.flags&FlagLocalOnly != 0; got != tc.inLocal {
				t.Errorf("internal FlagLocalOnly = %v, want %v", got, tc.inLocal)
			}
		})
	}
}

func TestFlattenUsable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []Backend
		usable   []string
	}{
		{"active only, terminating and quarantined excluded", []Backend{
			be("10.0.0.1", 80, BackendActive, 1, false),
			be("10.0.0.2", 80, BackendTerminating, 1, false),
			be("10.0.0.3", 80, BackendQuarantined, 1, false),
		}, []string{"10.0.0.1:80"}},
		{"terminating fallback when no active", []Backend{
			be("10.0.0.2", 80, BackendTerminating, 1, false),
			be("10.0.0.3", 80, BackendQuarantined, 1, false),
			be("10.0.0.4", 80, BackendTerminating, 0, false),
		}, []string{"10.0.0.2:80"}},
		{"active with weight 0 doesn't count as active", []Backend{
			be("10.0.0.1", 80, BackendActive, 0, false),
			be("10.0.0.2", 80, BackendTerminating, 3, false),
		}, []string{"10.0.0.2:80"}},
		{"quarantined never, even alone", []Backend{
			be("10.0.0.3", 80, BackendQuarantined, 1, false),
		}, nil},
		{"no backends", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFlatten(t, &Service{
				Name:      ServiceName{Name: "u"},
				Frontends: []Frontend{fe("10.96.0.1", 80, ScopeInternal, KindClusterIP)},
				Backends:  tc.backends,
			})
			in := f.views[ScopeInternal]
			wantAddrs(t, "usable", in.usable, tc.usable...)
			if len(in.backends) != len(tc.backends) {
				t.Errorf("view has %d backends, want all %d whatever their state", len(in.backends), len(tc.backends))
			}
		})
	}
}

func TestFlattenSourceRanges(t *testing.T) {
	f := mustFlatten(t, &Service{
		Name:      ServiceName{Name: "sr"},
		Frontends: []Frontend{fe("192.0.2.10", 80, ScopeExternal, KindLoadBalancer)},
		SourceRanges: []netip.Prefix{
			netip.MustParsePrefix("198.51.100.0/24"),
			netip.MustParsePrefix("10.1.2.3/8"), // host bits: masked
			netip.MustParsePrefix("10.0.0.0/8"), // duplicate once masked
			netip.MustParsePrefix("::ffff:203.0.113.0/120"),
		},
	})
	ext, in := f.views[ScopeExternal], f.views[ScopeInternal]
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
	}
	if !slices.Equal(ext.sourceRanges, want) {
		t.Errorf("ranges = %v, want %v", ext.sourceRanges, want)
	}
	if ext.flags&FlagSourceRanges == 0 {
		t.Error("external view lacks FlagSourceRanges")
	}
	if in.flags&FlagSourceRanges != 0 || in.sourceRanges != nil {
		t.Error("internal view has source ranges; they apply to external clients only")
	}
}

func TestFlattenAffinity(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
	}{
		{0, 0},
		{10800 * time.Second, 10800 * time.Second},
		{1500 * time.Millisecond, 2 * time.Second},
		{time.Nanosecond, time.Second},
	} {
		f := mustFlatten(t, &Service{
			Name:            ServiceName{Name: "aff"},
			Frontends:       []Frontend{fe("192.0.2.10", 80, ScopeExternal, KindLoadBalancer)},
			SessionAffinity: tc.in,
		})
		for scope, v := range f.views {
			if v.affinityTimeout != tc.want || (v.flags&FlagAffinity != 0) != (tc.want > 0) {
				t.Errorf("affinity %s, %s view: timeout %s flags %b, want %s", tc.in, Scope(scope), v.affinityTimeout, v.flags, tc.want)
			}
		}
	}
}

func TestFlattenNormalizes(t *testing.T) {
	f := mustFlatten(t, &Service{
		Name:      ServiceName{Name: "n"},
		Frontends: []Frontend{fe("::ffff:10.96.0.1", 80, ScopeInternal, KindClusterIP)},
		Backends: []Backend{
			{Addr: netip.MustParseAddr("::ffff:10.0.0.1"), Port: 80, Weight: 1},
			{Addr: netip.MustParseAddr("10.0.0.2"), Port: 80, Weight: 1, Tunnel: netip.MustParseAddr("192.168.0.2")},
		},
	})
	if a := f.frontends[0].Addr; !a.Is4() {
		t.Errorf("frontend address %s not unmapped", a)
	}
	b := f.views[ScopeInternal].backends
	if !b[0].Addr.Is4() || b[0].Tunnel != b[0].Addr {
		t.Errorf("backend 0: addr %s tunnel %s, want unmapped and the tunnel defaulting to the address", b[0].Addr, b[0].Tunnel)
	}
	if b[1].Tunnel != netip.MustParseAddr("192.168.0.2") {
		t.Errorf("backend 1 tunnel %s, want 192.168.0.2", b[1].Tunnel)
	}
}

func TestFlattenRejectsDuplicates(t *testing.T) {
	dupFE := &Service{
		Name: ServiceName{Name: "d"},
		Frontends: []Frontend{
			fe("10.96.0.1", 80, ScopeInternal, KindClusterIP),
			fe("10.96.0.1", 80, ScopeExternal, KindExternalIP), // same address, port, protocol
		},
	}
	if _, err := flatten(dupFE, testFlatOpts); err == nil || !strings.Contains(err.Error(), "10.96.0.1:80/TCP") {
		t.Errorf("duplicate frontend: err = %v, want one naming it", err)
	}
	dupBE := &Service{
		Name:      ServiceName{Name: "d"},
		Frontends: []Frontend{fe("10.96.0.1", 80, ScopeInternal, KindClusterIP)},
		Backends:  []Backend{be("10.0.0.1", 80, BackendActive, 1, false), be("::ffff:10.0.0.1", 80, BackendActive, 1, false)},
	}
	if _, err := flatten(dupBE, testFlatOpts); err == nil || !strings.Contains(err.Error(), "10.0.0.1:80") {
		t.Errorf("duplicate backend: err = %v, want one naming it", err)
	}
}

func TestEntryNameRoundTrip(t *testing.T) {
	for _, n := range []ServiceName{
		{Namespace: "default", Name: "web", Port: "http"},
		{Name: "edge-vip"},
		{Namespace: "kube-system", Name: "dns"},
	} {
		svc, port := entryName(n)
		if got := parseEntryName(svc, port); got != n {
			t.Errorf("parseEntryName(entryName(%#v)) = %#v", n, got)
		}
	}
}
