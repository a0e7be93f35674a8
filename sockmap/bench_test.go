package sockmap

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// BenchmarkConnect measures connect() of a TCP socket, on loopback inside
// a test namespace, through the socket load balancer against a direct
// connect to the backend. The connects run in a client child (the hooks
// only act on sockets of processes in the attached cgroup), which times
// connect() alone.
//
// Every row compares the same child with itself: it is moved between
// cgroups (cgroup.procs) between chunks of connects, and a socket belongs
// to the cgroup its process was in when it was made.
//
//   - direct: the child, in a cgroup without hooks, dials the backend; its
//     x-direct (direct against direct) shows the noise and the order bias
//     of the method, and should be 1.00;
//   - direct-hooked: from the attached cgroup, the child dials the backend
//     (the hooks run and find no service: what every non-service connect
//     pays);
//   - services=N: with N services in the maps, the child dials one of them
//     from the attached cgroup;
//   - services=10000-no-tcp-peer-name: the same through programs loaded
//     with Config.NoTCPPeerName (attached to a third cgroup);
//   - services=10000-getpeername: each connect is followed by getpeername,
//     timed with it, on both sides (the direct side dials the backend):
//     what a client like Go's net.Dial, which asks at once, pays; the
//     first getpeername of a translated TCP socket moves its reverse NAT
//     into socket storage.
//
// On a small shared machine a TCP handshake varies by more than the hook
// costs, and whatever runs first in a pair can be favoured (or not) by
// caches and by the load drifting, so a row's connects alternate with
// direct ones in chunks, in ABBA order (direct first in one pair, last in
// the next), after a warm-up pair. Reported are medians: ns/connect (the
// row's own), x-direct (its median over the interleaved direct median),
// and hook-ns/connect, the connect4 program's own run time per run from
// the kernel's BPF run-time statistics. Those statistics cost every program run two clock
// reads, so they are enabled only for a separate, untimed pass after the
// timed one (another process that enables them meanwhile, e.g. a parallel
// benchmark, still adds that cost to the timed pass).
func BenchmarkConnect(b *testing.B) {
	ns := testutil.NewNetns(b, "weir-sock-bench-")
	backend := netip.MustParseAddrPort("127.0.0.1:8080")
	serveAcceptClose(b, ns, backend)

	hooked := testCgroup(b)
	plain := testCgroup(b)
	maps, prog := loadAttached(b, Config{}, hooked)
	dp := bpf.NewDatapath(maps)
	noPeerCg := testCgroup(b)
	prog2, err := Load(Config{Maps: maps, NoTCPPeerName: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = prog2.Close() })
	if err := prog2.Attach(noPeerCg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = prog2.Detach(noPeerCg) })
	c := &movingClient{client: startClient(b, plain, ns), cgroup: plain}
	direct := benchTarget{cgroup: plain, addr: backend.String()}

	run := func(b *testing.B, t benchTarget, p *Program) {
		d := direct
		d.peerName = t.peerName
		own, base := interleavedConnects(b, c, t, d, b.N)
		m, mb := median(own), median(base)
		b.ReportMetric(m, "ns/connect")
		b.ReportMetric(m/mb, "x-direct")
		if p != nil {
			b.ReportMetric(hookNanos(b, c, t, p, min(b.N, 2000)), "hook-ns/connect")
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, direct, nil) })
	b.Run("direct-hooked", func(b *testing.B) { run(b, benchTarget{cgroup: hooked, addr: backend.String()}, prog) })
	have := 0
	for _, n := range []int{1, 1000, 10000} {
		addServices(b, dp, have, n, backend)
		have = n
		vip := benchVIP(n / 2)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { run(b, benchTarget{cgroup: hooked, addr: vip.String()}, prog) })
	}
	b.Run("services=10000-no-tcp-peer-name", func(b *testing.B) {
		run(b, benchTarget{cgroup: noPeerCg, addr: benchVIP(have / 2).String()}, prog2)
	})
	b.Run("services=10000-getpeername", func(b *testing.B) {
		run(b, benchTarget{cgroup: hooked, addr: benchVIP(have / 2).String(), peerName: true}, prog)
	})
}

// benchTarget is what a chunk of connects dials, and from which cgroup.
type benchTarget struct {
	cgroup   string
	addr     string
	peerName bool // time getpeername with each connect
}

// movingClient is a client child that is moved between cgroups.
type movingClient struct {
	*client
	cgroup string // where it is now
}

// connects moves the child into t's cgroup if it is elsewhere and times n
// connects to t's address.
func (c *movingClient) connects(b *testing.B, t benchTarget, n int) []int64 {
	b.Helper()
	if c.cgroup != t.cgroup {
		pid := strconv.Itoa(c.cmd.Process.Pid)
		if err := os.WriteFile(filepath.Join(t.cgroup, "cgroup.procs"), []byte(pid), 0); err != nil {
			b.Fatalf("move the client child to %s: %v", t.cgroup, err)
		}
		c.cgroup = t.cgroup
	}
	return benchDo(b, c.client, request{Op: "bench", Net: "tcp4", Addr: t.addr, Count: n, PeerName: t.peerName}).Nanos
}

// benchChunk is how many connects of one kind run in a row.
const benchChunk = 100

// interleavedConnects times n connects to t and n to direct, alternating
// chunks in ABBA order; it returns the times of each kind. A first pair of
// chunks is thrown away: the first connects after a change of scene (new
// services, another row) are slower, and would count against whichever
// kind goes first.
func interleavedConnects(b *testing.B, c *movingClient, t, direct benchTarget, n int) (own, base []int64) {
	b.Helper()
	c.connects(b, direct, benchChunk)
	c.connects(b, t, benchChunk)
	for pair, done := 0, 0; done < n; pair++ {
		k := min(benchChunk, n-done)
		if pair%2 == 0 {
			base = append(base, c.connects(b, direct, k)...)
			own = append(own, c.connects(b, t, k)...)
		} else {
			own = append(own, c.connects(b, t, k)...)
			base = append(base, c.connects(b, direct, k)...)
		}
		done += k
	}
	return own, base
}

// hookNanos runs n untimed connects to t with BPF run-time statistics on
// and returns the connect4 program's mean run time per run.
func hookNanos(b *testing.B, c *movingClient, t benchTarget, p *Program, n int) float64 {
	b.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	before := progStats(b, p)
	c.connects(b, t, n)
	after := progStats(b, p)
	runs := after.RunCount - before.RunCount
	if runs == 0 {
		b.Fatalf("connect4 did not run for %s from %s", t.addr, t.cgroup)
	}
	return float64(after.Runtime-before.Runtime) / float64(runs)
}

func progStats(tb testing.TB, p *Program) *ebpf.ProgramStats {
	tb.Helper()
	s, err := p.progs.WeirSockConnect4.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func median(xs []int64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return float64(s[len(s)/2])
}

func benchDo(b *testing.B, c *client, req request) reply {
	b.Helper()
	rep := c.do(req)
	if rep.Errors > 0 {
		b.Fatalf("%d of %d connects to %s failed, first: %s", rep.Errors, req.Count, req.Addr, rep.FirstErr)
	}
	return rep
}

// benchVIP is the address of the i-th benchmark service: 10.100.0.0/16
// and up, port 80.
func benchVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)}), 80)
}

// addServices writes services from..to-1 straight through the datapath
// (the reconciler would do the same writes; going direct keeps the setup
// of 10k services fast): one backend each, all on the same server, with a
// 251-slot table as the control plane writes for internal views.
func addServices(tb testing.TB, dp *bpf.Datapath, from, to int, backend netip.AddrPort) {
	tb.Helper()
	tables := map[lb.TableID][]lb.BackendID{}
	for i := from; i < to; i++ {
		id := uint32(i + 1)
		if err := dp.UpsertBackend(lb.BackendID(id), lb.BackendEntry{
			ServiceID: lb.ServiceID(id), Addr: backend.Addr(), Port: backend.Port(), Weight: 1,
		}); err != nil {
			tb.Fatal(err)
		}
		table := make([]lb.BackendID, lb.DefaultInternalTableSize)
		for s := range table {
			table[s] = lb.BackendID(id)
		}
		tables[lb.ServiceID(id).Table(0)] = table
	}
	if err := dp.UpsertMaglevs(tables); err != nil {
		tb.Fatal(err)
	}
	for i := from; i < to; i++ {
		id := uint32(i + 1)
		vip := benchVIP(i)
		if err := dp.UpsertFrontend(lb.FrontendID(id), lb.FrontendEntry{
			ServiceID: lb.ServiceID(id), Addr: vip.Addr(), Port: vip.Port(), Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindClusterIP, Service: fmt.Sprintf("bench/svc-%d", i),
		}); err != nil {
			tb.Fatal(err)
		}
		if err := dp.UpsertService(
			lb.ServiceKey{Addr: vip.Addr(), Port: vip.Port(), Protocol: lb.TCP, Scope: lb.ScopeInternal},
			lb.ServiceEntry{ServiceID: lb.ServiceID(id), FrontendID: lb.FrontendID(id), Backends: 1, TableSize: lb.DefaultInternalTableSize},
		); err != nil {
			tb.Fatal(err)
		}
	}
}

// serveAcceptClose accepts connections on ap in ns and closes them at
// once: the benchmark measures the handshake, nothing after it.
func serveAcceptClose(tb testing.TB, ns *testutil.Netns, ap netip.AddrPort) {
	tb.Helper()
	var ln net.Listener
	ns.MustDo(tb, func() error {
		var err error
		ln, err = net.Listen("tcp", ap.String())
		return err
	})
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}
