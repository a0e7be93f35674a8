package xdp

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// TestDSRNextHops covers the FIB outcomes of the DSR path.
func TestDSRNextHops(t *testing.T) {
	e := newEnv(t, Config{})
	cases := []struct {
		name    string
		vip     netip.Addr
		cli     netip.Addr
		tunnel  netip.Addr
		verdict uint32
		// For forwarded packets: the MACs and the outer-source prefix.
		check  func(t *testing.T, in, out []byte, tunnel netip.Addr)
		reason bpf.Reason
	}{
		{
			name: "redirect v4", vip: vipV4, cli: cliV4, tunnel: netip.MustParseAddr("10.2.0.5"), verdict: xdpRedirect,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV4, e.mac2, macNH2)
			},
		},
		{
			name: "redirect v6", vip: vipV6, cli: cliV6, tunnel: netip.MustParseAddr("fd02::5"), verdict: xdpRedirect,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV6, e.mac2, macNH2)
			},
		},
		{
			// No neighbour entry: the stack forwards the encapsulated
			// packet, so it keeps being addressed to this node.
			name: "no neighbour v4", vip: vipV4, cli: cliV4, tunnel: netip.MustParseAddr("10.3.0.5"), verdict: xdpPass,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV4, macPeer, macLB)
			},
		},
		{
			name: "no neighbour v6", vip: vipV6, cli: cliV6, tunnel: netip.MustParseAddr("fd03::5"), verdict: xdpPass,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV6, macPeer, macLB)
			},
		},
		{
			name: "IPv4 in IPv6", vip: vipV4, cli: cliV4, tunnel: tunA6, verdict: xdpTX,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV6, macLB, macNH)
			},
		},
		{
			name: "IPv6 in IPv4", vip: vipV6, cli: cliV6, tunnel: tunA4, verdict: xdpTX,
			check: func(t *testing.T, in, out []byte, tun netip.Addr) {
				wantDSR(t, out, in, tun, DefaultEncapSourceV4, macLB, macNH)
			},
		},
		{
			// The backend is on this node: the stack serves the VIP.
			name: "local backend", vip: vipV4, cli: cliV4, tunnel: nodeV4, verdict: xdpPass,
			check: func(t *testing.T, in, out []byte, _ netip.Addr) {
				if !bytes.Equal(in, out) {
					t.Errorf("packet for a local backend was changed")
				}
			},
		},
		{name: "no route v4", vip: vipV4, cli: cliV4, tunnel: netip.MustParseAddr("198.51.100.1"), verdict: xdpDrop, reason: bpf.ReasonNoRoute},
		{name: "no route v6", vip: vipV6, cli: cliV6, tunnel: netip.MustParseAddr("2001:db8:99::1"), verdict: xdpDrop, reason: bpf.ReasonNoRoute},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := lb.ServiceID(100 + i)
			port := uint16(1000 + i)
			e.addService(t, svc{ID: id, VIP: netip.AddrPortFrom(c.vip, port), Proto: protoTCP,
				Backends: []be{{ID: lb.BackendID(100 + i), Addr: netip.AddrPortFrom(c.vip, port), Tunnel: c.tunnel}}})
			in := packet(flow{Src: netip.AddrPortFrom(c.cli, 5555), Dst: netip.AddrPortFrom(c.vip, port), Proto: protoTCP}, pktOpts{Payload: []byte("x")})
			var before bpf.TrafficStats
			if c.reason != 0 {
				before = e.drops(t, c.reason)
			}
			v, out := e.run(t, in)
			wantVerdict(t, v, c.verdict)
			if c.check != nil {
				c.check(t, in, out, c.tunnel)
			}
			if c.reason != 0 {
				if got := e.drops(t, c.reason); got.Packets != before.Packets+1 {
					t.Errorf("%s drops %d, want %d", c.reason, got.Packets, before.Packets+1)
				}
			} else if got := sumStats(t, e.maps.ServiceStats, uint32(id)); got.Packets != 1 {
				t.Errorf("service counted %d packets, want 1", got.Packets)
			}
		})
	}
}

// TestDSRUnsetTunnel: a backend without a tunnel address is encapsulated
// to its own address.
func TestDSRUnsetTunnel(t *testing.T) {
	e := newEnv(t, Config{})
	e.addService(t, svc{ID: 1, VIP: netip.AddrPortFrom(vipV4, 80), Proto: protoUDP,
		Backends: []be{{ID: 1, Addr: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.77"), 80)}}})
	in := packet(flow{Src: netip.AddrPortFrom(cliV4, 1), Dst: netip.AddrPortFrom(vipV4, 80), Proto: protoUDP}, pktOpts{})
	v, out := e.run(t, in)
	wantVerdict(t, v, xdpTX)
	wantDSR(t, out, in, netip.MustParseAddr("10.1.0.77"), DefaultEncapSourceV4, macLB, macNH)
}

// TestEncapSourcePrefix: the outer source comes from the configured
// prefixes.
func TestEncapSourcePrefix(t *testing.T) {
	p4, p6 := netip.MustParsePrefix("100.64.7.0/24"), netip.MustParsePrefix("fd99:1:2:3:4:5:6:0/112")
	e := newEnv(t, Config{EncapSourceV4: p4, EncapSourceV6: p6})
	for _, f := range families {
		e.addService(t, dsrService(f, protoTCP))
		for port := uint16(1); port < 20; port++ {
			in := packet(clientFlow(f, protoTCP, port), pktOpts{})
			v, out := e.run(t, in)
			wantVerdict(t, v, xdpTX)
			want := p4
			if f.name == "v6" {
				want = p6
			}
			wantDSR(t, out, in, o2tunnel(t, out), want, macLB, macNH)
		}
	}
}

// TestDSRSCTP: SCTP ports are parsed; DSR leaves the packet (and its
// CRC32c) untouched inside the tunnel.
func TestDSRSCTP(t *testing.T) {
	e := newEnv(t, Config{})
	for _, f := range families {
		e.addService(t, dsrService(f, protoSCTP))
		in := packet(clientFlow(f, protoSCTP, 2905), pktOpts{})
		v, out := e.run(t, in)
		wantVerdict(t, v, xdpTX)
		wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
		// Another port is not the service.
		other := packet(flow{Src: netip.AddrPortFrom(f.cli, 2905), Dst: netip.AddrPortFrom(f.vip, 81), Proto: protoSCTP}, pktOpts{})
		if v, _ := e.run(t, other); v != xdpPass {
			t.Errorf("%s: SCTP to another port: verdict %s", f.name, verdictName(v))
		}
	}
}
