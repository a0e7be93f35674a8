package xdp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// The BPF_PROG_TEST_RUN environment: a "node" namespace whose device lb0
// (MAC macLB) faces the clients and the backends' next hop, and lb1 a
// second next hop, with routes and static neighbours so bpf_fib_lookup
// resolves:
//
//	clients 192.0.2.0/24, 2001:db8:c::/64  via 10.0.0.3 / fd00::3 (macPeer) on lb0
//	tunnels 10.1.0.0/16, fd01::/64         via 10.0.0.2 / fd00::2 (macNH)   on lb0
//	tunnels 10.2.0.0/16, fd02::/64         via 10.9.0.2 / fd09::2 (macNH2)  on lb1
//	tunnels 10.3.0.0/16, fd03::/64         via 10.0.0.4 / fd00::4, no neighbour
//	tunnels 10.4.0.0/16, fd04::/64         via 10.0.0.2 / fd00::2, route MTU 1400
//
// The node's addresses are 10.0.0.1 and fd00::1 (also the SNAT addresses).
var (
	nodeV4 = netip.MustParseAddr("10.0.0.1")
	nodeV6 = netip.MustParseAddr("fd00::1")
	vipV4  = netip.MustParseAddr("203.0.113.10")
	vipV6  = netip.MustParseAddr("2001:db8:f::10")
	cliV4  = netip.MustParseAddr("192.0.2.7")
	cliV6  = netip.MustParseAddr("2001:db8:c::7")
)

type testEnv struct {
	maps     *bpf.Maps
	dp       *bpf.Datapath
	prog     *Program
	node     *testutil.Netns
	ifindex  int // lb0
	ifindex2 int // lb1
	mac2     net.HardwareAddr
}

// newEnv builds the namespaces and loads the program with cfg (SNAT
// addresses default to the node's).
func newEnv(tb testing.TB, cfg Config) *testEnv {
	tb.Helper()
	if !cfg.SNATv4.IsValid() {
		cfg.SNATv4 = nodeV4
	}
	if !cfg.SNATv6.IsValid() {
		cfg.SNATv6 = nodeV6
	}
	e := &testEnv{maps: mustMaps(tb)}
	cfg.Maps = e.maps
	e.prog = mustLoad(tb, cfg)
	e.dp = bpf.NewDatapath(e.maps)
	e.node = testutil.NewNetns(tb, "wx-node-")
	peer := testutil.NewNetns(tb, "wx-peer-")
	l0, _ := testutil.Veth(tb, e.node, "lb0", netip.MustParsePrefix("10.0.0.1/24"), peer, "p0", netip.MustParsePrefix("10.0.0.2/24"))
	l1, _ := testutil.Veth(tb, e.node, "lb1", netip.MustParsePrefix("10.9.0.1/24"), peer, "p1", netip.MustParsePrefix("10.9.0.2/24"))
	h := e.node.Link
	must(tb, h.LinkSetHardwareAddr(l0, macLB))
	e.ifindex, e.ifindex2 = l0.Attrs().Index, l1.Attrs().Index
	l1, err := h.LinkByIndex(e.ifindex2)
	must(tb, err)
	e.mac2 = l1.Attrs().HardwareAddr
	testutil.AddAddr(tb, h, l0, netip.MustParsePrefix("fd00::1/64"))
	testutil.AddAddr(tb, h, l1, netip.MustParsePrefix("fd09::1/64"))
	for _, n := range []struct {
		ifindex int
		ip      string
		mac     net.HardwareAddr
	}{
		{e.ifindex, "10.0.0.2", macNH}, {e.ifindex, "fd00::2", macNH},
		{e.ifindex, "10.0.0.3", macPeer}, {e.ifindex, "fd00::3", macPeer},
		{e.ifindex2, "10.9.0.2", macNH2}, {e.ifindex2, "fd09::2", macNH2},
	} {
		ip := net.ParseIP(n.ip)
		fam := netlink.FAMILY_V4
		if ip.To4() == nil {
			fam = netlink.FAMILY_V6
		}
		must(tb, h.NeighAdd(&netlink.Neigh{LinkIndex: n.ifindex, Family: fam, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: n.mac}))
	}
	for _, r := range []struct {
		dst, gw string
		ifindex int
		mtu     int
	}{
		{"192.0.2.0/24", "10.0.0.3", e.ifindex, 0}, {"2001:db8:c::/64", "fd00::3", e.ifindex, 0},
		{"10.1.0.0/16", "10.0.0.2", e.ifindex, 0}, {"fd01::/64", "fd00::2", e.ifindex, 0},
		{"10.2.0.0/16", "10.9.0.2", e.ifindex2, 0}, {"fd02::/64", "fd09::2", e.ifindex2, 0},
		{"10.3.0.0/16", "10.0.0.4", e.ifindex, 0}, {"fd03::/64", "fd00::4", e.ifindex, 0},
		{"10.4.0.0/16", "10.0.0.2", e.ifindex, 1400}, {"fd04::/64", "fd00::2", e.ifindex, 1400},
	} {
		_, dst, err := net.ParseCIDR(r.dst)
		must(tb, err)
		// A locked MTU: forwarding lookups ignore an unlocked route MTU.
		must(tb, h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(r.gw), LinkIndex: r.ifindex, MTU: r.mtu, MTULock: r.mtu != 0}))
	}
	e.node.MustDo(tb, func() error {
		for _, f := range []string{"net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile("/proc/sys/"+f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	must(tb, e.prog.SetNodeAddrs([]netip.Addr{nodeV4, nodeV6}))
	return e
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// xdpMd mirrors struct xdp_md, the test-run context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run runs the program once on in, arriving on lb0.
func (e *testEnv) run(tb testing.TB, in []byte) (uint32, []byte) {
	tb.Helper()
	return e.runOn(tb, e.prog.Entry(), e.ifindex, in)
}

func (e *testEnv) runOn(tb testing.TB, prog *ebpf.Program, ifindex int, in []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{
		Data:    in,
		DataOut: make([]byte, len(in)+256),
		Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(ifindex)},
		Repeat:  1,
	}
	var ret uint32
	e.node.MustDo(tb, func() error {
		var err error
		ret, err = prog.Run(opts)
		return err
	})
	return ret, opts.DataOut
}

// Verdicts.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

func verdictName(v uint32) string {
	if int(v) < 5 {
		return [...]string{"ABORTED", "DROP", "PASS", "TX", "REDIRECT"}[v]
	}
	return fmt.Sprint(v)
}

func wantVerdict(tb testing.TB, got, want uint32) {
	tb.Helper()
	if got != want {
		tb.Fatalf("verdict %s, want %s", verdictName(got), verdictName(want))
	}
}

// svc describes a test service: one frontend and its backends, all
// written through the real bpf.Datapath.
type svc struct {
	ID       lb.ServiceID
	VIP      netip.AddrPort
	Proto    uint8
	Mode     lb.Mode
	Flags    lb.ServiceFlags
	Affinity time.Duration
	Backends []be
	// Table is the Maglev table; default: the backends' IDs in turn over
	// 13 slots.
	Table []lb.BackendID
	// NoBackends publishes Backends == 0 (reject new flows).
	NoBackends bool
	Ranges     []netip.Prefix
}

type be struct {
	ID     lb.BackendID
	Addr   netip.AddrPort
	Tunnel netip.Addr
	State  lb.BackendState
}

func (e *testEnv) addService(tb testing.TB, s svc) {
	tb.Helper()
	writeService(tb, e.dp, s)
}

// writeService writes a service through a Datapath: backends, Maglev
// table, frontend, source ranges, then the service entry.
func writeService(tb testing.TB, dp *bpf.Datapath, s svc) {
	tb.Helper()
	for _, b := range s.Backends {
		writeBackend(tb, dp, s.ID, b)
	}
	table := s.Table
	if table == nil && len(s.Backends) > 0 {
		for i := range 13 {
			table = append(table, s.Backends[i%len(s.Backends)].ID)
		}
	}
	if len(table) > 0 {
		must(tb, dp.UpsertMaglev(s.ID.Table(0), table))
	}
	fid := lb.FrontendID(s.ID)
	must(tb, dp.UpsertFrontend(fid, lb.FrontendEntry{
		ServiceID: s.ID, Addr: s.VIP.Addr(), Port: s.VIP.Port(), Protocol: lb.Protocol(s.Proto),
		Kind: lb.KindLoadBalancer, Service: fmt.Sprintf("test/svc%d", s.ID),
	}))
	for _, r := range s.Ranges {
		must(tb, dp.UpsertSourceRange(s.ID, r))
	}
	n := uint32(len(s.Backends))
	if s.NoBackends {
		n = 0
	}
	must(tb, dp.UpsertService(lb.ServiceKey{Addr: s.VIP.Addr(), Port: s.VIP.Port(), Protocol: lb.Protocol(s.Proto), Scope: lb.ScopeExternal},
		lb.ServiceEntry{ServiceID: s.ID, FrontendID: fid, Backends: n, TableSize: uint32(len(table)), Mode: s.Mode, Flags: s.Flags, AffinityTimeout: s.Affinity}))
}

func (e *testEnv) addBackend(tb testing.TB, sid lb.ServiceID, b be) {
	tb.Helper()
	writeBackend(tb, e.dp, sid, b)
}

func writeBackend(tb testing.TB, dp *bpf.Datapath, sid lb.ServiceID, b be) {
	tb.Helper()
	must(tb, dp.UpsertBackend(b.ID, lb.BackendEntry{ServiceID: sid, Addr: b.Addr.Addr(), Port: b.Addr.Port(), Tunnel: b.Tunnel, Weight: 1, State: b.State}))
}

// setTable replaces a service's Maglev table (and its size in the service
// entry when it changes). It writes table generation 0, which the service
// entry uses: a swap when the size changes, else a rewrite in place (fine
// for these tests, which send no packets during the write).
func (e *testEnv) setTable(tb testing.TB, sid lb.ServiceID, ids ...lb.BackendID) {
	tb.Helper()
	writeTable(tb, e.dp, sid, ids...)
}

// writeTable writes a 13-slot table of ids in turn.
func writeTable(tb testing.TB, dp *bpf.Datapath, sid lb.ServiceID, ids ...lb.BackendID) {
	tb.Helper()
	var table []lb.BackendID
	for i := range 13 {
		table = append(table, ids[i%len(ids)])
	}
	must(tb, dp.UpsertMaglev(sid.Table(0), table))
}

// drops reads the weir_drops counter of a reason, summed over CPUs.
func (e *testEnv) drops(tb testing.TB, r bpf.Reason) bpf.TrafficStats {
	tb.Helper()
	return sumStats(tb, e.maps.Drops, uint32(r))
}

func sumStats(tb testing.TB, m *ebpf.Map, key uint32) bpf.TrafficStats {
	tb.Helper()
	var per []bpf.TrafficStats
	must(tb, m.Lookup(key, &per))
	var s bpf.TrafficStats
	for _, p := range per {
		s.Packets += p.Packets
		s.Bytes += p.Bytes
	}
	return s
}

// monotonicNow is bpf_ktime_get_ns's clock.
func monotonicNow(tb testing.TB) uint64 {
	tb.Helper()
	var ts unix.Timespec
	must(tb, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
	return uint64(ts.Nano())
}
