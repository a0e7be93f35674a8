package sockmap

import (
	"net/netip"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// peerSlot must match struct sock_peer_slot in bpf/include/sock.h (checked
// against the map's value size in openSlots).
type peerSlot struct {
	Cookie uint64
	Peer   bpf.SockPeer
}

// slots is the pinned weir_sock_peer_slots of a topology.
type slots struct {
	m    *ebpf.Map
	size uint64
}

func openSlots(tb testing.TB, tp *topo) slots {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(tp.maps.Root(), slotsMap), nil)
	if err != nil {
		tb.Fatalf("open the pinned %s: %v", slotsMap, err)
	}
	tb.Cleanup(func() { m.Close() })
	if m.ValueSize() != uint32(unsafe.Sizeof(peerSlot{})) {
		tb.Fatalf("%s values are %d bytes, peerSlot %d", slotsMap, m.ValueSize(), unsafe.Sizeof(peerSlot{}))
	}
	return slots{m: m, size: uint64(m.MaxEntries())}
}

func (s slots) get(tb testing.TB, cookie uint64) peerSlot {
	tb.Helper()
	var v peerSlot
	if err := s.m.Lookup(uint32(cookie%s.size), &v); err != nil {
		tb.Fatal(err)
	}
	return v
}

// takeOver writes the slot of cookie the way a socket whose cookie comes
// WEIR_SOCK_PEER_SLOTS later would if it dialled another service with the
// same backend: only the cookie and the service address differ.
func (s slots) takeOver(tb testing.TB, cookie uint64) {
	tb.Helper()
	v := s.get(tb, cookie)
	v.Cookie = cookie + s.size
	v.Peer.Frontend = bpf.Addr(netip.MustParseAddr("::ffff:10.96.255.1").As16())
	if err := s.m.Update(uint32(cookie%s.size), &v, ebpf.UpdateExist); err != nil {
		tb.Fatal(err)
	}
}

// openTCPToService programs a one-backend TCP service at vip and opens a
// connection to it from a client in the hooked cgroup (closed at the end of
// the test), returning the slots, the client and the open reply.
func openTCPToService(t *testing.T, vip netip.AddrPort) (slots, *client, reply) {
	t.Helper()
	tp := newTopo(t, Config{})
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4[0]))
	s := openSlots(t, tp)
	c := tp.newClient(t)
	open := c.do(request{Op: "open", Net: "tcp4", Addr: vip.String()})
	if r := open.Results[0]; r.Err != "" {
		t.Fatalf("open: %s", r.Err)
	}
	t.Cleanup(func() { c.do(request{Op: "close", Handle: open.Handle}) })
	return s, c, open
}

// TCP: connect writes the socket's cookie slot; the first getpeername
// answers from it and copies it into the socket's storage, which answers
// from then on, also once the slot has gone to a newer socket.
func TestTCPPeerNameOutlivesSlot(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.13:80")
	s, c, open := openTCPToService(t, vip)
	first := c.mustOK(request{Op: "peer", Handle: open.Handle})
	if first.Peer != vip.String() {
		t.Fatalf("first getpeername = %s, want the service address %s", first.Peer, vip)
	}
	slot := s.get(t, first.Cookie)
	if slot.Cookie != first.Cookie || slot.Peer.FrontendPort != bpf.PortFrom(vip.Port()) {
		t.Errorf("slot of cookie %d = %+v, want this socket's record of %s", first.Cookie, slot, vip)
	}

	s.takeOver(t, first.Cookie)
	if r := c.mustOK(request{Op: "peer", Handle: open.Handle}); r.Peer != vip.String() {
		t.Errorf("getpeername after the slot was taken over = %s, want %s (from socket storage)", r.Peer, vip)
	}
}

// TCP: a socket whose slot went to a newer socket before it ever asked
// sees its backend, the documented limit, never another socket's service.
func TestTCPPeerNameSlotTakenBeforeFirstAsk(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.14:80")
	s, c, open := openTCPToService(t, vip)
	// The socket's own getpeername would copy its slot: find the slot
	// from the map instead, before the socket ever asks.
	cookie := slotOf(t, s, vip)
	s.takeOver(t, cookie)
	r := c.mustOK(request{Op: "peer", Handle: open.Handle})
	if r.Cookie != cookie {
		t.Fatalf("found slot of cookie %d, the socket's cookie is %d", cookie, r.Cookie)
	}
	if backend := ap(backends4[0], backendPort); r.Peer != backend {
		t.Errorf("getpeername with the slot taken over = %s, want the backend %s", r.Peer, backend)
	}
}

// slotOf finds the one slot that records a connection to vip.
func slotOf(tb testing.TB, s slots, vip netip.AddrPort) uint64 {
	tb.Helper()
	var (
		idx   uint32
		v     peerSlot
		found []uint64
	)
	for it := s.m.Iterate(); it.Next(&idx, &v); {
		if v.Cookie != 0 && v.Peer.FrontendPort == bpf.PortFrom(vip.Port()) && netip.AddrFrom16(v.Peer.Frontend).Unmap() == vip.Addr() {
			found = append(found, v.Cookie)
		}
	}
	if len(found) != 1 {
		tb.Fatalf("slots recording %s: %v, want one", vip, found)
	}
	return found[0]
}

// TCP: a socket that asked its peer (so has socket storage), disconnected
// and connected to another service with the same backend shows the second
// service: the connect keeps the storage current, not only the slot.
func TestTCPReconnectShowsNewService(t *testing.T) {
	tp := newTopo(t, Config{})
	first := netip.MustParseAddrPort("10.96.0.15:80")
	second := netip.MustParseAddrPort("10.96.0.16:80")
	apply(t, tp.rec,
		service("first", first, lb.TCP, backends4[0]),
		service("second", second, lb.TCP, backends4[0]))
	c := tp.newClient(t)

	r := c.mustOK(request{Op: "dial", Net: "tcp4", Addr: first.String(), Then: second.String()})
	if r.ID != ap(backends4[0], backendPort) || r.Peer != second.String() {
		t.Errorf("reconnected to %s: reached %s, peer %s; want the backend, peer %s", second, r.ID, r.Peer, second)
	}
}
