package sockmap

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

func TestPostBindRefusesServiceAddress(t *testing.T) {
	tp := newTopo(t, Config{})
	// Frontends on the client's own addresses, so a bind to them would
	// otherwise succeed: an internal one and an external-only one (an
	// external frontend gets keys of both scopes).
	ext := service("lb", netip.AddrPortFrom(clientAddr4, 9443), lb.TCP, backends4[0])
	ext.Frontends[0].Scope = lb.ScopeExternal
	ext.Frontends[0].Kind = lb.KindLoadBalancer
	apply(t, tp.rec,
		service("own4", netip.AddrPortFrom(clientAddr4, 9090), lb.TCP, backends4[0]),
		service("own6", netip.AddrPortFrom(clientAddr6, 9090), lb.UDP, backends6[0]),
		ext)
	c := tp.newClient(t)

	for _, tc := range []struct {
		net, bind string
		errno     unix.Errno
	}{
		{"tcp4", ap(clientAddr4, 9090), unix.EADDRINUSE},
		{"tcp4", ap(clientAddr4, 9443), unix.EADDRINUSE},
		{"tcp6", "[::ffff:10.77.0.1]:9090", unix.EADDRINUSE},
		{"udp6", ap(clientAddr6, 9090), unix.EADDRINUSE},
		{"tcp4", ap(clientAddr4, 9091), 0}, // another port
		{"udp4", ap(clientAddr4, 9090), 0}, // another protocol
		{"tcp6", ap(clientAddr6, 9090), 0}, // another protocol
		{"tcp4", "0.0.0.0:9090", 0},        // the wildcard address
		{"tcp6", "[::]:9090", 0},           // the wildcard address
		{"udp4", ap(clientAddr4, 0), 0},    // an ephemeral port
		{"tcp4", ap(netip.MustParseAddr("127.0.0.1"), 9090), 0},
	} {
		r := c.one(request{Op: "bind", Net: tc.net, Bind: tc.bind})
		if r.Errno != int(tc.errno) {
			t.Errorf("bind %s %s: %q (errno %d), want errno %d (%v)", tc.net, tc.bind, r.Err, r.Errno, int(tc.errno), tc.errno)
		}
	}
}

func TestHostNetnsOnly(t *testing.T) {
	// The "host" is the client namespace: Load reads the cookie of the
	// namespace of the thread calling it.
	client := testutil.NewNetns(t, "weir-sock-cli-")
	server := testutil.NewNetns(t, "weir-sock-srv-")
	other := testutil.NewNetns(t, "weir-sock-pod-")
	testutil.Veth(t, client, "wsc0", netip.PrefixFrom(clientAddr4, 24), server, "wss0", netip.PrefixFrom(backends4[0], 24))
	serveIdentity(t, server, netip.AddrPortFrom(backends4[0], backendPort))
	cg := testCgroup(t)
	maps := openMaps(t)
	var p *Program
	client.MustDo(t, func() error {
		var err error
		p, err = Load(Config{Maps: maps, HostNetnsOnly: true})
		return err
	})
	t.Cleanup(func() { _ = p.Close() })
	if err := p.Attach(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Detach(cg) })
	vip := netip.MustParseAddrPort("10.96.0.70:80")
	rec := newReconciler(t, maps)
	apply(t, rec, service("web", vip, lb.TCP, backends4[0]))

	host := startClient(t, cg, client)
	if r := host.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.ID != ap(backends4[0], backendPort) {
		t.Errorf("host namespace: reached %s", r.ID)
	}
	// Same cgroup, other namespace: left alone, so the unrouted service
	// address is unreachable there.
	pod := startClient(t, cg, other)
	if r := pod.one(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.Errno != int(unix.ENETUNREACH) {
		t.Errorf("other namespace: %q (errno %d), want ENETUNREACH (untranslated)", r.Err, r.Errno)
	}
	// Binds there are not policed either.
	apply(t, rec, service("lo", netip.MustParseAddrPort("127.0.0.1:9090"), lb.TCP, backends4[0]))
	if r := pod.one(request{Op: "bind", Net: "tcp4", Bind: "127.0.0.1:9090"}); r.Err != "" {
		t.Errorf("bind in the other namespace: %s, want it allowed", r.Err)
	}
	if r := host.one(request{Op: "bind", Net: "tcp4", Bind: "127.0.0.1:9090"}); r.Errno != int(unix.EADDRINUSE) {
		t.Errorf("bind in the host namespace: %q, want EADDRINUSE", r.Err)
	}
}

func TestSkipCgroups(t *testing.T) {
	client := testutil.NewNetns(t, "weir-sock-cli-")
	server := testutil.NewNetns(t, "weir-sock-srv-")
	testutil.Veth(t, client, "wsc0", netip.PrefixFrom(clientAddr4, 24), server, "wss0", netip.PrefixFrom(backends4[0], 24))
	serveIdentity(t, server, netip.AddrPortFrom(backends4[0], backendPort))

	cg := testCgroup(t)
	skipped := subCgroup(t, cg, "skipped")
	deeper := subCgroup(t, skipped, "deeper")
	kept := subCgroup(t, cg, "kept")
	maps, _ := loadAttached(t, Config{SkipCgroups: []string{skipped}}, cg)
	vip := netip.MustParseAddrPort("10.96.0.80:80")
	apply(t, newReconciler(t, maps), service("web", vip, lb.TCP, backends4[0]))

	for _, tc := range []struct {
		cgroup     string
		translated bool
	}{{cg, true}, {kept, true}, {skipped, false}, {deeper, false}} {
		c := startClient(t, tc.cgroup, client)
		r := c.one(request{Op: "dial", Net: "tcp4", Addr: vip.String()})
		switch {
		case tc.translated && r.ID != ap(backends4[0], backendPort):
			t.Errorf("client in %s: %+v, want translated to %s", tc.cgroup, r, ap(backends4[0], backendPort))
		case !tc.translated && r.Errno != int(unix.ENETUNREACH):
			t.Errorf("client in %s: %+v, want untranslated (ENETUNREACH)", tc.cgroup, r)
		}
	}

	// A reload with another list replaces the map's content.
	p, err := Load(Config{Maps: maps, SkipCgroups: []string{kept}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var id uint64
	var v uint8
	var got []uint64
	for it := maps.SockSkipCgroups.Iterate(); it.Next(&id, &v); {
		got = append(got, id)
	}
	want, err := cgroupID(kept)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != want {
		t.Errorf("weir_sock_skip_cgroups after reload = %v, want [%d]", got, want)
	}

	if _, err := Load(Config{Maps: maps, SkipCgroups: []string{"/proc"}}); err == nil {
		t.Error("Load with a skip cgroup outside cgroup2 succeeded")
	}
}

// subCgroup makes a child cgroup of parent, removed in Cleanup (before the
// parent: cleanups run in reverse).
func subCgroup(tb testing.TB, parent, name string) string {
	tb.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}

func TestNodePortOnLoopback(t *testing.T) {
	tp := newTopo(t, Config{})
	// The control plane writes a NodePort frontend per node address,
	// loopback included; it is external, so it has an internal key too.
	svc := service("np", netip.MustParseAddrPort("10.96.0.90:80"), lb.TCP, backends4[0], backends4[1])
	svc.Frontends = append(svc.Frontends, lb.Frontend{
		Addr: netip.MustParseAddr("127.0.0.1"), Port: 30080, Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindNodePort,
	})
	apply(t, tp.rec, svc)
	c := tp.newClient(t)
	for _, r := range c.do(request{Op: "dial", Net: "tcp4", Addr: "127.0.0.1:30080", Count: 10}).Results {
		if r.Err != "" {
			t.Fatal(r.Err)
		}
		if r.ID != ap(backends4[0], backendPort) && r.ID != ap(backends4[1], backendPort) {
			t.Errorf("127.0.0.1:30080 reached %s", r.ID)
		}
		if r.Peer != "127.0.0.1:30080" {
			t.Errorf("getpeername = %s, want 127.0.0.1:30080", r.Peer)
		}
	}
}

// The eligible backends are the control plane's choice; these tests check
// the hooks honour what it writes for internalTrafficPolicy and for
// terminating backends.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.1.1:80")
	svc := service("itp", vip, lb.TCP, backends4...)
	svc.InternalLocal = true
	svc.Backends[1].Local = false
	svc.Backends[1].NodeName = "elsewhere"
	svc.Backends[2].Local = false
	svc.Backends[2].NodeName = "elsewhere"
	apply(t, tp.rec, svc)
	c := tp.newClient(t)
	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 20}).Results)
	if len(got) != 1 || got[ap(backends4[0], backendPort)] != 20 {
		t.Errorf("internalTrafficPolicy Local: reached %v, want only the local %s", got, ap(backends4[0], backendPort))
	}

	// No local backend: refused, even though remote ones exist.
	svc.Backends[0].Local = false
	svc.Backends[0].NodeName = "elsewhere"
	apply(t, tp.rec, svc)
	if r := c.one(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.Errno != int(unix.ECONNREFUSED) {
		t.Errorf("internalTrafficPolicy Local without a local backend: %+v, want ECONNREFUSED", r)
	}
}

func TestTerminatingBackendsTakeNoNewConnections(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.1.2:80")
	svc := service("term", vip, lb.TCP, backends4...)
	svc.Backends[1].State = lb.BackendTerminating
	svc.Backends[2].State = lb.BackendQuarantined
	apply(t, tp.rec, svc)
	c := tp.newClient(t)
	got := ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 20}).Results)
	if len(got) != 1 || got[ap(backends4[0], backendPort)] != 20 {
		t.Errorf("with one active, one terminating, one quarantined backend: reached %v, want only the active one", got)
	}
	// Only terminating left: Kubernetes' fallback serves them rather
	// than refusing (the control plane's rule, checked end to end).
	svc.Backends[0].State = lb.BackendTerminating
	apply(t, tp.rec, svc)
	got = ids(t, c.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 20}).Results)
	if got[ap(backends4[2], backendPort)] != 0 || len(got) == 0 {
		t.Errorf("only terminating backends: reached %v, want the terminating ones, never the quarantined one", got)
	}
}
