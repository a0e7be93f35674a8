package k8s

import (
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/lb"
)

func TestDeliverableMode(t *testing.T) {
	fe := func(port uint16, scope lb.Scope, proto lb.Protocol) lb.Frontend {
		return lb.Frontend{Addr: netip.MustParseAddr("192.0.2.1"), Port: port, Protocol: proto, Scope: scope}
	}
	be := func(port uint16) lb.Backend { return lb.Backend{Addr: netip.MustParseAddr("10.0.0.1"), Port: port} }
	cases := []struct {
		name string
		s    lb.Service
		want lb.Mode
	}{
		{"ports line up", lb.Service{Mode: lb.ModeDSR, Frontends: []lb.Frontend{fe(80, lb.ScopeExternal, lb.TCP)}, Backends: []lb.Backend{be(80)}}, lb.ModeDSR},
		{"target port differs", lb.Service{Mode: lb.ModeDSR, Frontends: []lb.Frontend{fe(80, lb.ScopeExternal, lb.TCP)}, Backends: []lb.Backend{be(8080)}}, lb.ModeSNAT},
		{"NodePort", lb.Service{Mode: lb.ModeDSR, Frontends: []lb.Frontend{fe(80, lb.ScopeInternal, lb.TCP), fe(30080, lb.ScopeExternal, lb.TCP)}, Backends: []lb.Backend{be(80)}}, lb.ModeSNAT},
		{"internal only", lb.Service{Mode: lb.ModeDSR, Frontends: []lb.Frontend{fe(80, lb.ScopeInternal, lb.TCP)}, Backends: []lb.Backend{be(8080)}}, lb.ModeDSR},
		{"hybrid UDP is SNAT anyway", lb.Service{Mode: lb.ModeHybrid, Frontends: []lb.Frontend{fe(53, lb.ScopeExternal, lb.UDP)}, Backends: []lb.Backend{be(5353)}}, lb.ModeHybrid},
		{"hybrid TCP mismatch", lb.Service{Mode: lb.ModeHybrid, Frontends: []lb.Frontend{fe(80, lb.ScopeExternal, lb.TCP)}, Backends: []lb.Backend{be(8080)}}, lb.ModeSNAT},
		{"no backends", lb.Service{Mode: lb.ModeDSR, Frontends: []lb.Frontend{fe(80, lb.ScopeExternal, lb.TCP)}}, lb.ModeDSR},
	}
	for _, c := range cases {
		if got := deliverableMode(&c.s); got != c.want {
			t.Errorf("%s: mode %s, want %s", c.name, got, c.want)
		}
	}
}
