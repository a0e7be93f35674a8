package sockmap

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/lb"
)

func TestTCPConnectReachesBackend(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4[0], backends4[1]))
	c := tp.newClient(t)

	rep := c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 20})
	got := ids(t, rep.Results)
	want := map[string]bool{ap(backends4[0], backendPort): true, ap(backends4[1], backendPort): true}
	for id := range got {
		if !want[id] {
			t.Errorf("reached %s, not a backend of the service", id)
		}
	}
	if len(got) != 2 {
		t.Errorf("20 connects reached %v, want both backends", got)
	}
	for _, r := range rep.Results {
		if r.Peer != vip.String() {
			t.Errorf("getpeername = %s, want the service address %s", r.Peer, vip)
		}
	}
}

func TestUDPConnectedAndUnconnected(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.53:53")
	apply(t, tp.rec, service("dns", vip, lb.UDP, backends4[0], backends4[1]))
	c := tp.newClient(t)
	want := map[string]bool{ap(backends4[0], backendPort): true, ap(backends4[1], backendPort): true}

	// Connected: connect, send, recvfrom (which asks for the source and so
	// runs recvmsg4), getpeername.
	for _, r := range c.do(request{Op: "dial", Net: "udp4", Addr: vip.String(), Count: 10}).Results {
		if r.Err != "" {
			t.Fatal(r.Err)
		}
		if !want[r.ID] || r.From != vip.String() || r.Peer != vip.String() {
			t.Errorf("connected UDP: answer %q from %s, peer %s; want a backend, from and peer %s", r.ID, r.From, r.Peer, vip)
		}
	}
	// Unconnected: sendto the service, recvfrom shows the service.
	for _, r := range c.do(request{Op: "sendto", Net: "udp4", Addr: vip.String(), Count: 10}).Results {
		if r.Err != "" {
			t.Fatal(r.Err)
		}
		if !want[r.ID] || r.From != vip.String() {
			t.Errorf("unconnected UDP: answer %q from %s; want a backend, from %s", r.ID, r.From, vip)
		}
	}
}

func TestNoBackendIsRefused(t *testing.T) {
	tp := newTopo(t, Config{})
	vip4 := netip.MustParseAddrPort("10.96.0.20:80")
	vip6 := netip.MustParseAddrPort("[fd96::20]:80")
	apply(t, tp.rec,
		service("empty4", vip4, lb.TCP),
		service("empty6", vip6, lb.TCP),
		service("empty-udp", vip4, lb.UDP))
	c := tp.newClient(t)

	for _, req := range []request{
		{Op: "dial", Net: "tcp4", Addr: vip4.String()},
		{Op: "dial", Net: "tcp6", Addr: vip6.String()},
		{Op: "dial", Net: "tcp6", Addr: "[::ffff:" + vip4.Addr().String() + "]:80"},
		{Op: "sendto", Net: "udp4", Addr: vip4.String()},
	} {
		start := time.Now()
		r := c.one(req)
		if r.Errno != int(unix.ECONNREFUSED) {
			t.Errorf("%s %s: got %q (errno %d), want ECONNREFUSED", req.Net, req.Addr, r.Err, r.Errno)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s %s: refused after %v, want at once", req.Net, req.Addr, d)
		}
	}
	if n := sumStats(t, tp.maps.Drops, noBackendReason); n != 4 {
		t.Errorf("weir_drops[no backend] = %d, want 4", n)
	}
}

func TestUntranslatedAddressIsUntouched(t *testing.T) {
	tp := newTopo(t, Config{})
	apply(t, tp.rec, service("web", netip.MustParseAddrPort("10.96.0.10:80"), lb.TCP, backends4[0]))
	c := tp.newClient(t)
	// Another port of the same address is no service: the connect goes
	// to the unrouted address and fails as it would without Weir.
	if r := c.one(request{Op: "dial", Net: "tcp4", Addr: "10.96.0.10:81"}); r.Errno != int(unix.ENETUNREACH) {
		t.Errorf("connect to a non-service port: %q (errno %d), want ENETUNREACH", r.Err, r.Errno)
	}
	// A backend dialled directly still works and shows itself.
	r := c.mustOK(request{Op: "dial", Net: "tcp4", Addr: ap(backends4[1], backendPort)})
	if r.Peer != ap(backends4[1], backendPort) {
		t.Errorf("direct connect: peer %s", r.Peer)
	}
}

func TestNoTCPPeerName(t *testing.T) {
	tp := newTopo(t, Config{NoTCPPeerName: true})
	vip := netip.MustParseAddrPort("10.96.0.11:80")
	apply(t, tp.rec,
		service("web", vip, lb.TCP, backends4[0]),
		service("dns", netip.AddrPortFrom(vip.Addr(), 53), lb.UDP, backends4[0]))
	c := tp.newClient(t)
	backend := ap(backends4[0], backendPort)
	// TCP is still translated; only its peer name is the backend's.
	if r := c.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.ID != backend || r.Peer != backend {
		t.Errorf("tcp4 with NoTCPPeerName: reached %s, peer %s; want %s for both", r.ID, r.Peer, backend)
	}
	// UDP keeps its reverse translation.
	udp := netip.AddrPortFrom(vip.Addr(), 53).String()
	if r := c.mustOK(request{Op: "dial", Net: "udp4", Addr: udp}); r.From != udp || r.Peer != udp {
		t.Errorf("udp4 with NoTCPPeerName: from %s, peer %s; want %s", r.From, r.Peer, udp)
	}
}

func TestUDPReconnectForgetsPeer(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.12:53")
	apply(t, tp.rec, service("dns", vip, lb.UDP, backends4[0]))
	c := tp.newClient(t)
	// A socket connected through the service, then (a new socket here,
	// since the child dials afresh) straight to the backend: the direct
	// one must show the backend, not the service.
	if r := c.mustOK(request{Op: "dial", Net: "udp4", Addr: vip.String()}); r.Peer != vip.String() {
		t.Errorf("via the service: peer %s", r.Peer)
	}
	backend := ap(backends4[0], backendPort)
	if r := c.mustOK(request{Op: "dial", Net: "udp4", Addr: backend}); r.Peer != backend || r.From != backend {
		t.Errorf("direct to the backend: peer %s, from %s; want %s", r.Peer, r.From, backend)
	}
	if r := c.mustOK(request{Op: "sendto", Net: "udp4", Addr: backend}); r.From != backend {
		t.Errorf("unconnected direct to the backend: from %s; want %s", r.From, backend)
	}
	// One socket connected through the service, then again straight to
	// the backend.
	if r := c.mustOK(request{Op: "dial", Net: "udp4", Addr: vip.String(), Then: backend}); r.Peer != backend || r.From != backend {
		t.Errorf("reconnected to the backend: peer %s, from %s; want %s", r.Peer, r.From, backend)
	}
	// And the other way round.
	if r := c.mustOK(request{Op: "dial", Net: "udp4", Addr: backend, Then: vip.String()}); r.Peer != vip.String() || r.From != vip.String() {
		t.Errorf("reconnected to the service: peer %s, from %s; want %s", r.Peer, r.From, vip)
	}
}
