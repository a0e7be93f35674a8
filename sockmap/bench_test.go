package sockmap

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// BenchmarkConnect measures connect() of a TCP socket, on loopback inside
// a test namespace, through the socket load balancer against a direct
// connect to the backend. The connects run in client children (the hooks
// only act on processes in the attached cgroup), which time connect()
// alone.
//
//   - direct: a child in a cgroup without hooks dials the backend;
//   - direct-hooked: a child in the attached cgroup dials the backend (the
//     hooks run and find no service: what every non-service connect pays);
//   - services=N: with N services in the maps, a child in the attached
//     cgroup dials one of them;
//   - services=10000-no-tcp-peer-name: the same through programs loaded
//     with Config.NoTCPPeerName (attached to a third cgroup).
//
// On a small shared machine a TCP handshake varies by more than the hook
// costs, so every sub-benchmark alternates chunks of its connects with
// chunks of direct ones, and reports medians: ns/connect (its own),
// x-direct (its median over the interleaved direct median) and
// hook-ns/connect, the connect4 program's own run time per run, read from
// the kernel's BPF run-time statistics.
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
	direct := startClient(b, plain, ns)
	viaHooks := startClient(b, hooked, ns)
	noPeer := startClient(b, noPeerCg, ns)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	b.Cleanup(func() { stats.Close() })

	run := func(b *testing.B, c *client, addr string) {
		before := progStats(b, prog)
		if c == noPeer {
			before = progStats(b, prog2)
		}
		var own, base []int64
		const chunk = 200
		for done := 0; done < b.N; {
			k := min(chunk, b.N-done)
			base = append(base, benchDo(b, direct, backend.String(), k).Nanos...)
			own = append(own, benchDo(b, c, addr, k).Nanos...)
			done += k
		}
		after := progStats(b, prog)
		if c == noPeer {
			after = progStats(b, prog2)
		}
		m, mb := median(own), median(base)
		b.ReportMetric(m, "ns/connect")
		b.ReportMetric(m/mb, "x-direct")
		if runs := after.RunCount - before.RunCount; runs > 0 && c != direct {
			b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "hook-ns/connect")
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, direct, backend.String()) })
	b.Run("direct-hooked", func(b *testing.B) { run(b, viaHooks, backend.String()) })
	have := 0
	for _, n := range []int{1, 1000, 10000} {
		addServices(b, dp, have, n, backend)
		have = n
		vip := benchVIP(n / 2)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { run(b, viaHooks, vip.String()) })
	}
	b.Run("services=10000-no-tcp-peer-name", func(b *testing.B) { run(b, noPeer, benchVIP(have/2).String()) })
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

func benchDo(b *testing.B, c *client, addr string, n int) reply {
	b.Helper()
	rep := c.do(request{Op: "bench", Net: "tcp4", Addr: addr, Count: n})
	if rep.Errors > 0 {
		b.Fatalf("%d of %d connects to %s failed, first: %s", rep.Errors, n, addr, rep.FirstErr)
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
