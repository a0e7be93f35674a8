package xdp

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// backendOf runs a packet of the flow and returns the tunnel it was
// encapsulated to.
func (e *testEnv) backendOf(tb testing.TB, fl flow) netip.Addr {
	tb.Helper()
	v, out := e.run(tb, packet(fl, pktOpts{TCPFlags: tcpACK}))
	wantVerdict(tb, v, xdpTX)
	return o2tunnel(tb, out)
}

// TestConntrack: an established flow keeps its backend when the Maglev
// table changes; new flows follow the table; a deleted backend releases
// its flows.
func TestConntrack(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoTCP)
			s.Table = []lb.BackendID{1} // only A takes flows
			e.addService(t, s)
			fl := clientFlow(f, protoTCP, 33000)
			if got := e.backendOf(t, fl); got != f.tunA {
				t.Fatalf("first packet to %s, want %s", got, f.tunA)
			}
			e.setTable(t, s.ID, 2) // now only B
			for range 3 {
				if got := e.backendOf(t, fl); got != f.tunA {
					t.Fatalf("established flow moved to %s after the table changed", got)
				}
			}
			if got := e.backendOf(t, fl.withSport(33001)); got != f.tunB {
				t.Errorf("new flow went to %s, want %s", got, f.tunB)
			}
			// The conntrack entry is keyed by the client's packet.
			var ct bpf.CTValue
			key := ctKeyOf(fl)
			must(t, e.maps.CT.Lookup(&key, &ct))
			if ct.BackendID != 1 || ct.ServiceID != uint32(s.ID) || ct.NatPort != (bpf.Port{}) {
				t.Errorf("conntrack entry %+v", ct)
			}
			// Backend A deleted: its flows are re-balanced.
			must(t, e.dp.DeleteBackend(1))
			if got := e.backendOf(t, fl); got != f.tunB {
				t.Errorf("flow of a deleted backend went to %s, want %s", got, f.tunB)
			}
		})
	}
}

// TestConntrackTimeout: an entry idle past the timeout no longer pins
// its backend.
func TestConntrackTimeout(t *testing.T) {
	e := newEnv(t, Config{CTTimeoutTCP: 2 * time.Second})
	f, _, fl := establishedOnA(t, e, 1234)
	stampFlow(t, e, fl, monotonicNow(t)-uint64(3*time.Second))
	if got := e.backendOf(t, fl); got != f.tunB {
		t.Errorf("stale flow stayed on %s", got)
	}
}

// establishedOnA establishes a TCP flow from sport to a DSR service whose
// table names only backend A, then leaves the table naming only B: the
// flow stays on A exactly as long as its conntrack entry holds it there.
func establishedOnA(t *testing.T, e *testEnv, sport uint16) (family, svc, flow) {
	t.Helper()
	f := families[0]
	s := dsrService(f, protoTCP)
	s.Table = []lb.BackendID{1}
	e.addService(t, s)
	fl := clientFlow(f, protoTCP, sport)
	if got := e.backendOf(t, fl); got != f.tunA {
		t.Fatalf("new flow went to %s, want backend A %s", got, f.tunA)
	}
	e.setTable(t, s.ID, 2)
	return f, s, fl
}

// stampFlow sets the flow's conntrack entry's last-seen time.
func stampFlow(t *testing.T, e *testEnv, fl flow, lastSeen uint64) {
	t.Helper()
	key := ctKeyOf(fl)
	var ct bpf.CTValue
	must(t, e.maps.CT.Lookup(&key, &ct))
	ct.LastSeen = lastSeen
	must(t, e.maps.CT.Update(&key, &ct, ebpf.UpdateExist))
}

func ctKeyOf(fl flow) bpf.CTKey {
	return bpf.CTKey{
		Saddr: bpf.AddrFrom(fl.Src.Addr()), Daddr: bpf.AddrFrom(fl.Dst.Addr()),
		Sport: bpf.PortFrom(fl.Src.Port()), Dport: bpf.PortFrom(fl.Dst.Port()), Proto: fl.Proto,
	}
}

// TestTerminatingBackend: the control plane takes a terminating backend
// out of the table; established flows keep it, new flows don't get it.
func TestTerminatingBackend(t *testing.T) {
	e := newEnv(t, Config{})
	f, s, fl := establishedOnA(t, e, 2000)
	e.addBackend(t, s.ID, be{ID: 1, Addr: s.Backends[0].Addr, Tunnel: f.tunA, State: lb.BackendTerminating})
	if got := e.backendOf(t, fl); got != f.tunA {
		t.Errorf("established flow of a terminating backend moved to %s", got)
	}
	for p := uint16(2001); p < 2020; p++ {
		if got := e.backendOf(t, fl.withSport(p)); got != f.tunB {
			t.Fatalf("new flow went to %s, want the active backend", got)
		}
	}
}

// TestBackendWords: an established packet forwards from what its
// conntrack entry copied of the backend while the backend's word is
// unchanged (no backend lookup: here the entry is gone from the hash map
// behind the datapath's back and the flow still goes on); a new tunnel
// address, or another service's backend under the ID, sends it back to
// the hash map.
func TestBackendWords(t *testing.T) {
	e := newEnv(t, Config{})
	f, s, fl := establishedOnA(t, e, 3100)
	id := uint32(1)
	var kept bpf.BackendValue
	must(t, e.maps.Backends.Lookup(&id, &kept))
	must(t, e.maps.Backends.Delete(&id))
	if got := e.backendOf(t, fl); got != f.tunA {
		t.Fatalf("established flow went to %s without a backend lookup, want %s", got, f.tunA)
	}
	must(t, e.maps.Backends.Update(&id, &kept, ebpf.UpdateAny))

	// A new tunnel address: the flow follows it.
	e.addBackend(t, s.ID, be{ID: 1, Addr: s.Backends[0].Addr, Tunnel: f.tunB})
	if got := e.backendOf(t, fl); got != f.tunB {
		t.Errorf("after the tunnel moved, the flow went to %s, want %s", got, f.tunB)
	}

	// The ID now names another service's backend, at tunnel A: the flow
	// is balanced again, by the table (backend 2, tunnel B).
	e.addBackend(t, s.ID+1, be{ID: 1, Addr: s.Backends[0].Addr, Tunnel: f.tunA})
	if got := e.backendOf(t, fl); got != f.tunB {
		t.Errorf("the flow went to %s, a backend of another service; want %s", got, f.tunB)
	}
}

// TestTCPClose: a client's FIN or RST marks its flow closing; the flow
// keeps its backend while packets come, its entry expires 10 s after the
// last one (not hours), and a SYN on its 4-tuple is a new connection,
// balanced afresh; a SYN on a flow that isn't closing is a retransmission
// and stays.
func TestTCPClose(t *testing.T) {
	e := newEnv(t, Config{})
	f, s, fl := establishedOnA(t, e, 3400) // the table now names B only
	sendTo := func(fl flow, flags uint8) netip.Addr {
		t.Helper()
		v, out := e.run(t, packet(fl, pktOpts{TCPFlags: flags}))
		wantVerdict(t, v, xdpTX)
		return o2tunnel(t, out)
	}
	ctOf := func(fl flow) bpf.CTValue {
		t.Helper()
		key := ctKeyOf(fl)
		var ct bpf.CTValue
		must(t, e.maps.CT.Lookup(&key, &ct))
		return ct
	}
	const closing = 2 // WEIR_CT_F_CLOSING
	if got := sendTo(fl, tcpSYN); got != f.tunA {
		t.Fatalf("a retransmitted SYN went to %s, want the flow's backend %s", got, f.tunA)
	}
	if ct := ctOf(fl); ct.Flags&closing != 0 {
		t.Fatal("the flow is closing before any FIN")
	}
	if got := sendTo(fl, tcpFIN|tcpACK); got != f.tunA {
		t.Fatalf("the FIN went to %s, want %s", got, f.tunA)
	}
	if ct := ctOf(fl); ct.Flags&closing == 0 {
		t.Fatal("a FIN did not mark the flow closing")
	}
	if got := sendTo(fl, tcpACK); got != f.tunA {
		t.Errorf("an ACK after the FIN went to %s, want %s", got, f.tunA)
	}
	if got := sendTo(fl, tcpSYN); got != f.tunB {
		t.Errorf("a SYN reusing the closed 4-tuple went to %s, want the table's %s", got, f.tunB)
	}
	if ct := ctOf(fl); ct.BackendID != 2 || ct.Flags&closing != 0 {
		t.Errorf("the new connection's entry: backend %d, flags %#x", ct.BackendID, ct.Flags)
	}

	// Expiry: a closing flow idle for 11 s is gone; an open one is not.
	e.setTable(t, s.ID, 1) // new flows to A again
	open, closed := clientFlow(f, protoTCP, 3401), clientFlow(f, protoTCP, 3402)
	sendTo(open, tcpSYN)
	sendTo(closed, tcpSYN)
	sendTo(closed, tcpRST)
	e.setTable(t, s.ID, 2)
	stale := uint64(time.Duration(ctOf(closed).LastSeen) - 11*time.Second)
	stampFlow(t, e, open, stale)
	stampFlow(t, e, closed, stale)
	if got := sendTo(open, tcpACK); got != f.tunA {
		t.Errorf("an open flow idle for 11 s moved to %s", got)
	}
	if got := sendTo(closed, tcpACK); got != f.tunB {
		t.Errorf("a flow closed by RST and idle for 11 s stayed on %s, want it balanced again (%s)", got, f.tunB)
	}
}

// TestQuarantinedBackend: a backend whose health check failed is dead, so
// its established flows move to a live backend instead of black-holing.
func TestQuarantinedBackend(t *testing.T) {
	e := newEnv(t, Config{})
	f, s, fl := establishedOnA(t, e, 3000)
	e.addBackend(t, s.ID, be{ID: 1, Addr: s.Backends[0].Addr, Tunnel: f.tunA, State: lb.BackendQuarantined})
	if got := e.backendOf(t, fl); got != f.tunB {
		t.Errorf("established flow of a quarantined backend stayed on %s, want %s", got, f.tunB)
	}
}

// TestAffinity: with ClientIP affinity, a client's connections share a
// backend; an expired or no longer active affinity entry is not used.
func TestAffinity(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoTCP)
			s.Flags = lb.FlagAffinity
			s.Affinity = 10 * time.Second
			// Both backends in the table: without affinity the ports
			// below would spread.
			e.addService(t, s)
			first := e.backendOf(t, clientFlow(f, protoTCP, 3000))
			for p := uint16(3001); p < 3020; p++ {
				if got := e.backendOf(t, clientFlow(f, protoTCP, p)); got != first {
					t.Fatalf("port %d went to %s, first connection to %s", p, got, first)
				}
			}
			key := bpf.AffinityKey{ServiceID: uint32(s.ID), Client: bpf.AddrFrom(f.cli)}
			var av bpf.AffinityValue
			must(t, e.maps.Affinity.Lookup(&key, &av))
			want := map[netip.Addr]uint32{f.tunA: 1, f.tunB: 2}[first]
			if av.BackendID != want {
				t.Errorf("affinity entry %+v, want backend %d", av, want)
			}

			// A fresh entry pointing to the other backend wins over
			// Maglev; an expired one doesn't.
			other, otherID := f.tunB, uint32(2)
			if first == f.tunB {
				other, otherID = f.tunA, 1
			}
			set := func(age time.Duration, id uint32) {
				v := bpf.AffinityValue{LastUsed: monotonicNow(t) - uint64(age), BackendID: id}
				must(t, e.maps.Affinity.Update(&key, &v, ebpf.UpdateAny))
			}
			set(0, otherID)
			if got := e.backendOf(t, clientFlow(f, protoTCP, 4000)); got != other {
				t.Errorf("fresh affinity to %s ignored: went to %s", other, got)
			}
			set(11*time.Second, otherID)
			if got := e.backendOf(t, clientFlow(f, protoTCP, 4001)); got != first {
				t.Errorf("expired affinity used: went to %s, Maglev picks %s", got, first)
			}
			// An affinity to a terminating backend is not used for new
			// flows.
			set(0, otherID)
			e.addBackend(t, s.ID, be{ID: lb.BackendID(otherID), Addr: s.Backends[0].Addr, Tunnel: other, State: lb.BackendTerminating})
			if got := e.backendOf(t, clientFlow(f, protoTCP, 4002)); got != first {
				t.Errorf("affinity to a terminating backend used: went to %s", got)
			}
		})
	}
}

// TestMaglevSpread: without affinity, flows spread over the table.
func TestMaglevSpread(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	e.addService(t, dsrService(f, protoTCP))
	n := map[netip.Addr]int{}
	for p := uint16(1); p <= 200; p++ {
		n[e.backendOf(t, clientFlow(f, protoTCP, p))]++
	}
	if n[f.tunA] < 60 || n[f.tunB] < 60 {
		t.Errorf("200 flows over two backends: %v", n)
	}
}

// TestMaglevTableMoves: new flows follow a table that moves to another
// run of the slab (a new size, other tables written in between, the slab
// grown), and a service whose table is deleted rejects new flows.
func TestMaglevTableMoves(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	s := dsrService(f, protoTCP)
	s.Table = []lb.BackendID{1}
	e.addService(t, s)
	sport := uint16(40000)
	newFlowsGo := func(want netip.Addr, step string) {
		t.Helper()
		for range 5 {
			sport++
			if got := e.backendOf(t, clientFlow(f, protoTCP, sport)); got != want {
				t.Fatalf("%s: a new flow went to %s, want %s", step, got, want)
			}
		}
	}
	newFlowsGo(f.tunA, "first table")
	// Fill the slab past its first size with other tables, so the move
	// below lands in a grown slab.
	others := map[lb.TableID][]lb.BackendID{}
	for i := range 40 {
		others[lb.ServiceID(100+i).Table(0)] = slices.Repeat([]lb.BackendID{1}, 4093)
	}
	must(t, e.dp.UpsertMaglevs(others))
	must(t, e.dp.UpsertMaglev(s.ID.Table(0), slices.Repeat([]lb.BackendID{2}, 7)))
	newFlowsGo(f.tunB, "moved table")
	must(t, e.dp.DeleteMaglev(s.ID.Table(0)))
	sport++
	v, out := e.run(t, packet(clientFlow(f, protoTCP, sport), pktOpts{TCPFlags: tcpACK}))
	wantVerdict(t, v, xdpTX)
	if th := out[len(out)-20:]; th[13]&tcpRST == 0 {
		t.Errorf("a new flow to a service without a table got %#x, want a RST", th[13])
	}
}

// TestFIBCache: an established flow's next hop comes from its conntrack
// entry; a neighbour change is picked up at the once-a-second refresh.
func TestFIBCache(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	s := dsrService(f, protoTCP)
	s.Table = []lb.BackendID{1}
	e.addService(t, s)
	fl := clientFlow(f, protoTCP, 7000)
	in := packet(fl, pktOpts{TCPFlags: tcpACK})
	for range 2 { // the new flow, then the packet that fills the cache
		v, out := e.run(t, in)
		wantVerdict(t, v, xdpTX)
		wantDSR(t, out, in, f.tunA, f.prefix, macLB, macNH)
	}
	key := ctKeyOf(fl)
	var ct bpf.CTValue
	must(t, e.maps.CT.Lookup(&key, &ct))
	if ct.Fib.Ifindex != uint32(e.ifindex) || net.HardwareAddr(ct.Fib.Dmac[:]).String() != macNH.String() || int(ct.Fib.Len) != len(in)-14+20 {
		t.Errorf("cached next hop: ifindex %d dmac %x len %d", ct.Fib.Ifindex, ct.Fib.Dmac, ct.Fib.Len)
	}
	newMAC := net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x99}
	must(t, e.node.Link.NeighSet(&netlink.Neigh{LinkIndex: e.ifindex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: net.ParseIP("10.0.0.2"), HardwareAddr: newMAC}))
	_, out := e.run(t, in)
	wantDSR(t, out, in, f.tunA, f.prefix, macLB, macNH) // still cached
	must(t, e.maps.CT.Lookup(&key, &ct))
	ct.LastSeen -= uint64(2 * time.Second)
	must(t, e.maps.CT.Update(&key, &ct, ebpf.UpdateExist))
	_, out = e.run(t, in)
	wantDSR(t, out, in, f.tunA, f.prefix, macLB, newMAC)
	// A larger packet than the cache was checked for takes the FIB's MTU
	// check again (and raises the cached size).
	big := packet(fl, pktOpts{TCPFlags: tcpACK, Payload: make([]byte, 1000)})
	v, _ := e.run(t, big)
	wantVerdict(t, v, xdpTX)
	must(t, e.maps.CT.Lookup(&key, &ct))
	if int(ct.Fib.Len) != len(big)-14+20 {
		t.Errorf("cached length %d after a larger packet, want %d", ct.Fib.Len, len(big)-14+20)
	}
}

// TestNewFlowCachesNextHop: a new flow's conntrack entry is written with
// the next hop its first packet resolved, so its second packet needs no
// FIB lookup; a next hop that didn't resolve (no neighbour) is not
// cached, and the entry is still written.
func TestNewFlowCachesNextHop(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoTCP)
			s.Table = []lb.BackendID{1}
			e.addService(t, s)
			fl := clientFlow(f, protoTCP, 7100)
			in := packet(fl, pktOpts{TCPFlags: tcpSYN})
			v, out := e.run(t, in)
			wantVerdict(t, v, xdpTX)
			wantDSR(t, out, in, f.tunA, f.prefix, macLB, macNH)
			outer := 20
			if f.name == "v6" {
				outer = 40
			}
			key := ctKeyOf(fl)
			var ct bpf.CTValue
			must(t, e.maps.CT.Lookup(&key, &ct))
			if ct.Fib.Ifindex != uint32(e.ifindex) || net.HardwareAddr(ct.Fib.Dmac[:]).String() != macNH.String() ||
				net.HardwareAddr(ct.Fib.Smac[:]).String() != macLB.String() || int(ct.Fib.Len) != len(in)-14+outer {
				t.Errorf("new flow's entry: ifindex %d dmac %x smac %x len %d", ct.Fib.Ifindex, ct.Fib.Dmac, ct.Fib.Smac, ct.Fib.Len)
			}

			// Unresolved neighbour: passed to the stack, entry without a
			// next hop.
			tunC := netip.MustParseAddr("10.3.0.5")
			if f.name == "v6" {
				tunC = netip.MustParseAddr("fd03::5")
			}
			e.addBackend(t, s.ID, be{ID: 3, Addr: s.Backends[0].Addr, Tunnel: tunC})
			e.setTable(t, s.ID, 3)
			fl2 := fl.withSport(7101)
			v, _ = e.run(t, packet(fl2, pktOpts{TCPFlags: tcpSYN}))
			wantVerdict(t, v, xdpPass)
			key = ctKeyOf(fl2)
			must(t, e.maps.CT.Lookup(&key, &ct))
			if ct.BackendID != 3 || ct.Fib.Ifindex != 0 {
				t.Errorf("unresolved flow's entry: backend %d ifindex %d, want 3 and 0", ct.BackendID, ct.Fib.Ifindex)
			}
		})
	}
}

// TestConntrackClockAhead: the datapath's clock is the coarse monotonic
// clock, which lags the precise one by up to a tick; an entry stamped by
// the precise clock (the agent, a test) a little ahead of it is fresh,
// not idle for 2^64 ns.
func TestConntrackClockAhead(t *testing.T) {
	e := newEnv(t, Config{})
	f, _, fl := establishedOnA(t, e, 7200)
	ahead := monotonicNow(t) + uint64(50*time.Millisecond)
	stampFlow(t, e, fl, ahead)
	if got := e.backendOf(t, fl); got != f.tunA {
		t.Errorf("flow stamped ahead of the clock moved to %s", got)
	}
	key := ctKeyOf(fl)
	var ct bpf.CTValue
	must(t, e.maps.CT.Lookup(&key, &ct))
	if ct.LastSeen != ahead {
		t.Errorf("last_seen rewritten to %d (ahead: %d)", ct.LastSeen, ahead)
	}
}
