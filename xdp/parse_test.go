package xdp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/bpf"
)

// TestMalformed: broken headers are dropped with reason "malformed" (the
// stack would drop them too); nothing aborts.
func TestMalformed(t *testing.T) {
	e := newEnv(t, Config{})
	f4, f6 := families[0], families[1]
	e.addService(t, dsrService(f4, protoTCP))
	good4 := packet(clientFlow(f4, protoTCP, 1), pktOpts{})
	good6 := packet(clientFlow(f6, protoTCP, 1), pktOpts{})
	mod := func(b []byte, f func([]byte)) []byte {
		c := append([]byte(nil), b...)
		f(c)
		return c
	}
	cases := map[string][]byte{
		"truncated IPv4 header": good4[:14+10],
		"IHL 4":                 mod(good4, func(b []byte) { b[14] = 0x44 }),
		"IHL beyond the frame":  mod(good4[:14+24], func(b []byte) { b[14] = 0x4f; binary.BigEndian.PutUint16(b[16:], 24) }),
		"IPv4 version 5":        mod(good4, func(b []byte) { b[14] = 0x55 }),
		"total length > frame":  mod(good4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 1000) }),
		"total length < header": mod(good4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 16) }),
		"truncated TCP":         mod(good4[:14+20+10], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 30) }),
		"TCP data offset 4":     mod(good4, func(b []byte) { b[14+20+12] = 4 << 4 }),
		"truncated UDP":         mod(good4[:14+20+6], func(b []byte) { b[14+9] = protoUDP; binary.BigEndian.PutUint16(b[16:], 26) }),
		"truncated IPv6 header": good6[:14+30],
		"IPv6 payload > frame":  mod(good6, func(b []byte) { binary.BigEndian.PutUint16(b[14+4:], 500) }),
		"truncated VLAN tag":    append(append([]byte(nil), good4[:12]...), 0x81, 0x00, 0),
	}
	n := uint64(0)
	for name, in := range cases {
		v, _ := e.run(t, in)
		if v != xdpDrop {
			t.Errorf("%s: verdict %s, want DROP", name, verdictName(v))
		}
		n++
	}
	if got := e.drops(t, bpf.ReasonMalformed); got.Packets != n {
		t.Errorf("malformed drops %d, want %d", got.Packets, n)
	}
}

// TestFragments: later fragments carry no ports and pass to the stack;
// a first fragment is balanced like any packet.
func TestFragments(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	e.addService(t, dsrService(f, protoUDP))
	in := packet(clientFlow(f, protoUDP, 1), pktOpts{Payload: make([]byte, 64)})
	later := append([]byte(nil), in...)
	binary.BigEndian.PutUint16(later[14+6:], 0x2000|10) // MF, offset 80
	later[14+10], later[14+11] = 0, 0
	binary.BigEndian.PutUint16(later[14+10:], csumFold(csumAdd(0, later[14:34])))
	if v, out := e.run(t, later); v != xdpPass || !bytes.Equal(out, later) {
		t.Errorf("later fragment: verdict %s", verdictName(v))
	}
	first := append([]byte(nil), in...)
	binary.BigEndian.PutUint16(first[14+6:], 0x2000) // MF, offset 0
	first[14+10], first[14+11] = 0, 0
	binary.BigEndian.PutUint16(first[14+10:], csumFold(csumAdd(0, first[14:34])))
	v, _ := e.run(t, first)
	wantVerdict(t, v, xdpTX)

	// IPv6: a fragment header with a non-zero offset passes.
	f6 := families[1]
	e.addService(t, svc{ID: 8, VIP: netip.AddrPortFrom(f6.vip, 80), Proto: protoUDP, Backends: []be{{ID: 5, Addr: netip.AddrPortFrom(f6.vip, 80), Tunnel: f6.tunA}}})
	l4 := l4Segment(clientFlow(f6, protoUDP, 1), pktOpts{})
	fh := []byte{protoUDP, 0, 0, 8, 0, 0, 0, 1} // offset 1 (8 bytes)
	ip6 := ipPacket(f6.cli, f6.vip, 44, append(fh, l4...), pktOpts{})
	in6 := frame(ip6, pktOpts{})
	if v, out := e.run(t, in6); v != xdpPass || !bytes.Equal(out, in6) {
		t.Errorf("IPv6 later fragment: verdict %s", verdictName(v))
	}
	fh[3] = 1 // offset 0, M flag: a first fragment
	in6 = frame(ipPacket(f6.cli, f6.vip, 44, append(fh, l4...), pktOpts{}), pktOpts{})
	v, _ = e.run(t, in6)
	wantVerdict(t, v, xdpTX)
}

// TestVLAN: a tagged packet is parsed and balanced; the encapsulated
// packet leaves untagged.
func TestVLAN(t *testing.T) {
	e := newEnv(t, Config{})
	for _, f := range families {
		e.addService(t, dsrService(f, protoTCP))
		in := packet(clientFlow(f, protoTCP, 1), pktOpts{VLAN: 100})
		v, out := e.run(t, in)
		wantVerdict(t, v, xdpTX)
		wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
	}
	// A tagged reject keeps its tag.
	s := dsrService(families[0], protoUDP)
	s.ID, s.NoBackends = 11, true
	e.addService(t, s)
	fl := clientFlow(families[0], protoUDP, 1)
	v, out := e.run(t, packet(fl, pktOpts{VLAN: 100}))
	wantVerdict(t, v, xdpTX)
	d, err := decodeFrame(out)
	must(t, err)
	if d.VLAN != 100 || d.IP.Proto != protoICMP || !d.IP.L4CsumOK() || d.IP.Dst != fl.Src.Addr() {
		t.Errorf("tagged reject: VLAN %d, %s -> %s proto %d", d.VLAN, d.IP.Src, d.IP.Dst, d.IP.Proto)
	}
}

// TestIPv6ExtensionHeader: a destination-options header is skipped to
// find the ports, and travels inside the tunnel unchanged.
func TestIPv6ExtensionHeader(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[1]
	for _, pr := range protos {
		e.addService(t, dsrService(f, pr.proto))
		in := packet(clientFlow(f, pr.proto, 1), pktOpts{V6DestOpts: true, Payload: []byte("ext")})
		v, out := e.run(t, in)
		wantVerdict(t, v, xdpTX)
		wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
	}
	// And a reject built from it drops the extension header.
	s := dsrService(f, protoTCP)
	s.ID, s.VIP, s.NoBackends = 12, netip.AddrPortFrom(f.vip, 81), true
	e.addService(t, s)
	fl := flow{Src: netip.AddrPortFrom(f.cli, 1), Dst: s.VIP, Proto: protoTCP}
	v, out := e.run(t, packet(fl, pktOpts{V6DestOpts: true}))
	ip := wantReply(t, v, out, fl, protoTCP)
	if ip.Payload[13] != tcpRST|tcpACK {
		t.Errorf("flags %#x", ip.Payload[13])
	}
}
