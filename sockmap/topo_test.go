package sockmap

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// The test topology: a client namespace and a server namespace joined by
// a veth pair. The server namespace has several addresses, one per
// backend; each backend answers TCP and UDP on backendPort with its own
// address:port, so a client learns which backend it reached. Service
// addresses (10.96.0.0/16, fd96::/64) are routed nowhere: a connect that
// the hooks don't translate fails with ENETUNREACH at once.
var (
	clientAddr4 = netip.MustParseAddr("10.77.0.1")
	clientAddr6 = netip.MustParseAddr("fd77::1")
	backends4   = []netip.Addr{netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.0.3"), netip.MustParseAddr("10.77.0.4")}
	backends6   = []netip.Addr{netip.MustParseAddr("fd77::2"), netip.MustParseAddr("fd77::3")}
)

const backendPort = 8080

type topo struct {
	client *testutil.Netns
	server *testutil.Netns
	cgroup string
	maps   *bpf.Maps
	prog   *Program
	rec    *lb.Reconciler
}

// newTopo builds the namespaces, the backends, a test cgroup with the
// hooks attached (cfg's Maps is filled in) and a reconciler over the maps.
func newTopo(tb testing.TB, cfg Config) *topo {
	tb.Helper()
	t := &topo{
		client: testutil.NewNetns(tb, "weir-sock-cli-"),
		server: testutil.NewNetns(tb, "weir-sock-srv-"),
	}
	_, srvLink := testutil.Veth(tb, t.client, "wsc0", netip.PrefixFrom(clientAddr4, 24), t.server, "wss0", netip.Prefix{})
	cliLink, err := t.client.Link.LinkByName("wsc0")
	if err != nil {
		tb.Fatal(err)
	}
	testutil.AddAddr(tb, t.client.Link, cliLink, netip.PrefixFrom(clientAddr6, 64))
	for _, a := range backends4 {
		testutil.AddAddr(tb, t.server.Link, srvLink, netip.PrefixFrom(a, 24))
	}
	for _, a := range backends6 {
		testutil.AddAddr(tb, t.server.Link, srvLink, netip.PrefixFrom(a, 64))
	}
	for _, a := range append(append([]netip.Addr{}, backends4...), backends6...) {
		serveIdentity(tb, t.server, netip.AddrPortFrom(a, backendPort))
	}
	t.cgroup = testCgroup(tb)
	t.maps, t.prog = loadAttached(tb, cfg, t.cgroup)
	t.rec = newReconciler(tb, t.maps)
	return t
}

func newReconciler(tb testing.TB, maps *bpf.Maps) *lb.Reconciler {
	tb.Helper()
	rec, err := lb.NewReconciler(bpf.NewDatapath(maps), lb.ReconcilerOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return rec
}

// apply upserts services through the reconciler, the way the agent
// programs them, and syncs.
func apply(tb testing.TB, rec *lb.Reconciler, svcs ...*lb.Service) {
	tb.Helper()
	for _, s := range svcs {
		rec.Upsert(s)
	}
	// As the agent's runner does: sync again while the reconciler asks
	// (a backend leaving a service is deleted by the Sync after).
	for range 10 {
		res, err := rec.Sync()
		if err != nil {
			tb.Fatalf("sync: %v", err)
		}
		if !res.Again {
			return
		}
	}
	tb.Fatal("the reconciler still asks for another sync after 10")
}

// clientIn starts a client child in the topology's cgroup and client
// namespace.
func (t *topo) newClient(tb testing.TB) *client {
	tb.Helper()
	return startClient(tb, t.cgroup, t.client)
}

// serveIdentity serves ap in ns: TCP connections get ap's string on
// accept and again for every line they send; UDP datagrams are answered
// with it.
func serveIdentity(tb testing.TB, ns *testutil.Netns, ap netip.AddrPort) {
	tb.Helper()
	var ln net.Listener
	var pc net.PacketConn
	ns.MustDo(tb, func() error {
		var err error
		if ln, err = net.Listen("tcp", ap.String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ap.String())
		return err
	})
	tb.Cleanup(func() { ln.Close(); pc.Close() })
	id := []byte(ap.String() + "\n")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				if _, err := c.Write(id); err != nil {
					return
				}
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := c.Write(id); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = pc.WriteTo(id, from)
		}
	}()
}

// service returns a ClusterIP-style service port with one internal
// frontend and active, local backends of weight 1 on backendPort.
func service(name string, vip netip.AddrPort, proto lb.Protocol, backends ...netip.Addr) *lb.Service {
	s := &lb.Service{
		Name:      lb.ServiceName{Namespace: "test", Name: name, Port: "p"},
		Frontends: []lb.Frontend{{Addr: vip.Addr(), Port: vip.Port(), Protocol: proto, Scope: lb.ScopeInternal, Kind: lb.KindClusterIP}},
	}
	for _, b := range backends {
		s.Backends = append(s.Backends, lb.Backend{Addr: b, Port: backendPort, Weight: 1, State: lb.BackendActive, Local: true, NodeName: "node"})
	}
	return s
}

func ap(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// ids counts the identities in results and fails on any error.
func ids(tb testing.TB, rs []result) map[string]int {
	tb.Helper()
	n := map[string]int{}
	for _, r := range rs {
		if r.Err != "" {
			tb.Fatalf("%s", r.Err)
		}
		n[r.ID]++
	}
	return n
}
