package sockmap

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

func TestAffinityKeepsBackend(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.30:80")
	svc := service("sticky", vip, lb.TCP, backends4...)
	svc.SessionAffinity = 30 * time.Second
	apply(t, tp.rec, svc)
	c := tp.newClient(t)

	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 50}).Results)
	if len(got) != 1 {
		t.Fatalf("50 connects from one namespace with ClientIP affinity reached %v, want one backend", got)
	}
	// UDP datagrams of the same namespace stick too (their own service).
	uvip := netip.MustParseAddrPort("10.96.0.30:53")
	usvc := service("sticky-udp", uvip, lb.UDP, backends4...)
	usvc.SessionAffinity = 30 * time.Second
	apply(t, tp.rec, usvc)
	if got := ids(t, c.do(request{Op: "sendto", Net: "udp4", Addr: uvip.String(), Count: 30}).Results); len(got) != 1 {
		t.Fatalf("30 datagrams with affinity reached %v, want one backend", got)
	}
}

func TestAffinityMovesOffRemovedBackend(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.31:80")
	svc := service("sticky", vip, lb.TCP, backends4[0], backends4[1])
	svc.SessionAffinity = 30 * time.Second
	apply(t, tp.rec, svc)
	c := tp.newClient(t)
	first := c.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()}).ID

	// Keep only the other backend: affinity must not hold on to a
	// backend that left the service.
	other := backends4[0]
	if first == ap(backends4[0], backendPort) {
		other = backends4[1]
	}
	svc = service("sticky", vip, lb.TCP, other)
	svc.SessionAffinity = 30 * time.Second
	apply(t, tp.rec, svc)
	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 10}).Results)
	if len(got) != 1 || got[ap(other, backendPort)] != 10 {
		t.Fatalf("after the sticky backend %s left: reached %v, want only %s", first, got, ap(other, backendPort))
	}
}

func TestBackendChangeKeepsOpenConnection(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.40:80")
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4[0]))
	c := tp.newClient(t)

	open := c.do(request{Op: "open", Net: "tcp4", Addr: vip.String()})
	if r := open.Results[0]; r.Err != "" || r.ID != ap(backends4[0], backendPort) {
		t.Fatalf("open: %+v", r)
	}
	// A rolling update: the new backends join, then the old one leaves.
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4...))
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4[1], backends4[2]))

	// The open connection is a plain socket to its backend: untouched.
	r := c.one(request{Op: "talk", Handle: open.Handle})
	if r.Err != "" || r.ID != ap(backends4[0], backendPort) {
		t.Fatalf("open connection after the change: %+v, want answers from %s", r, ap(backends4[0], backendPort))
	}
	// New connections only reach the new set.
	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 20}).Results)
	if got[ap(backends4[0], backendPort)] != 0 || len(got) != 2 {
		t.Errorf("new connections after the change reached %v, want both new backends only", got)
	}
	c.do(request{Op: "close", Handle: open.Handle})
}

func TestIPv6AndMappedIPv4(t *testing.T) {
	tp := newTopo(t, Config{})
	vip6 := netip.MustParseAddrPort("[fd96::10]:80")
	vip4 := netip.MustParseAddrPort("10.96.0.10:80")
	apply(t, tp.rec,
		service("web6", vip6, lb.TCP, backends6...),
		service("dns6", netip.AddrPortFrom(vip6.Addr(), 53), lb.UDP, backends6...),
		service("web4", vip4, lb.TCP, backends4[0]),
		service("dns4", netip.AddrPortFrom(vip4.Addr(), 53), lb.UDP, backends4[0]))
	c := tp.newClient(t)
	want6 := map[string]bool{ap(backends6[0], backendPort): true, ap(backends6[1], backendPort): true}

	for _, r := range c.do(request{Op: "dial", Net: "tcp6", Addr: vip6.String(), Count: 10}).Results {
		if r.Err != "" || !want6[r.ID] || r.Peer != vip6.String() {
			t.Errorf("tcp6 %s: %+v", vip6, r)
		}
	}
	for _, req := range []request{
		{Op: "dial", Net: "udp6", Addr: "[fd96::10]:53"},
		{Op: "sendto", Net: "udp6", Addr: "[fd96::10]:53"},
	} {
		r := c.mustOK(req)
		if !want6[r.ID] || r.From != req.Addr {
			t.Errorf("%s %s: %+v, want a backend answering from %s", req.Op, req.Net, r, req.Addr)
		}
	}

	// An AF_INET6 socket dialling an IPv4 service as ::ffff:a.b.c.d.
	mapped := "[::ffff:10.96.0.10]:80"
	r := c.mustOK(request{Op: "dial", Net: "tcp6", Addr: mapped})
	if r.ID != ap(backends4[0], backendPort) || r.Peer != mapped {
		t.Errorf("tcp6 %s: reached %s, peer %s; want %s, peer %s", mapped, r.ID, r.Peer, ap(backends4[0], backendPort), mapped)
	}
	for _, req := range []request{
		{Op: "dial", Net: "udp6", Addr: "[::ffff:10.96.0.10]:53"},
		{Op: "sendto", Net: "udp6", Addr: "[::ffff:10.96.0.10]:53"},
	} {
		r := c.mustOK(req)
		if r.ID != ap(backends4[0], backendPort) || r.From != req.Addr {
			t.Errorf("%s %s %s: %+v, want %s answering from %s", req.Op, req.Net, req.Addr, r, ap(backends4[0], backendPort), req.Addr)
		}
	}
}

func TestWeightsSplitConnections(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.50:80")
	svc := service("weighted", vip, lb.TCP, backends4[0], backends4[1])
	svc.Backends[0].Weight = 1
	svc.Backends[1].Weight = 3
	apply(t, tp.rec, svc)
	c := tp.newClient(t)

	const n = 400
	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: n}).Results)
	heavy := got[ap(backends4[1], backendPort)]
	if got[ap(backends4[0], backendPort)]+heavy != n {
		t.Fatalf("reached %v", got)
	}
	// Binomial(400, 0.75): sd 8.7. Allow 5 sd around 300 (plus the
	// table's own rounding of 1:3 into 251 slots, under 1%).
	sd := math.Sqrt(n * 0.75 * 0.25)
	if math.Abs(float64(heavy)-0.75*n) > 5*sd {
		t.Errorf("weight 3 backend got %d of %d connects (%.1f%%), want about 75%%", heavy, n, 100*float64(heavy)/n)
	}
	t.Logf("weights 1:3 over %d connects: %d / %d (%.1f%% to the weight-3 backend)", n, n-heavy, heavy, 100*float64(heavy)/n)
}

func TestStatsCountTranslations(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.60:80")
	apply(t, tp.rec, service("counted", vip, lb.TCP, backends4[0]))
	c := tp.newClient(t)
	ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 7}).Results)

	state, err := bpf.NewDatapath(tp.maps).Dump()
	if err != nil {
		t.Fatal(err)
	}
	key := lb.ServiceKey{Addr: vip.Addr(), Port: vip.Port(), Protocol: lb.TCP, Scope: lb.ScopeInternal}
	entry, ok := state.Services[key]
	if !ok {
		t.Fatalf("no internal key for %s", vip)
	}
	if n := sumStats(t, tp.maps.ServiceStats, uint32(entry.ServiceID)); n != 7 {
		t.Errorf("weir_service_stats[%d] = %d, want 7", entry.ServiceID, n)
	}
	var backendTotal uint64
	for id, b := range state.Backends {
		if b.ServiceID == entry.ServiceID {
			backendTotal += sumStats(t, tp.maps.BackendStats, uint32(id))
		}
	}
	if backendTotal != 7 {
		t.Errorf("weir_backend_stats of the service's backends = %d, want 7", backendTotal)
	}
}
