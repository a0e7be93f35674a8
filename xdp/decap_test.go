package xdp

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestDecap(t *testing.T) {
	e := newEnv(t, Config{})
	lbSrc4, lbSrc6 := netip.MustParseAddr("172.16.1.2"), netip.MustParseAddr("fd00:77:65:69:72::1")
	in4 := ipOf(t, packet(clientFlow(families[0], protoTCP, 1), pktOpts{Payload: []byte("inner v4")}))
	in6 := ipOf(t, packet(clientFlow(families[1], protoUDP, 1), pktOpts{Payload: []byte("inner v6")}))
	cases := []struct {
		name       string
		outerSrc   netip.Addr
		outerDst   netip.Addr
		inner      []byte
		vlan       uint16
		decap      bool
		innerEType uint16
	}{
		{"IPIP", lbSrc4, nodeV4, in4, 0, true, 0x0800},
		{"IPv6 in IPv6", lbSrc6, nodeV6, in6, 0, true, 0x86dd},
		{"IPv4 in IPv6", lbSrc6, nodeV6, in4, 0, true, 0x0800},
		{"IPv6 in IPv4", lbSrc4, nodeV4, in6, 0, true, 0x86dd},
		{"IPIP on a VLAN", lbSrc4, nodeV4, in4, 42, true, 0x0800},
		{"IPIP to another host", lbSrc4, netip.MustParseAddr("10.0.0.99"), in4, 0, false, 0},
		{"IPv6 in IPv6 to another host", lbSrc6, netip.MustParseAddr("fd00::99"), in6, 0, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := encapsulated(c.outerSrc, c.outerDst, c.inner, pktOpts{VLAN: c.vlan})
			v, out := e.run(t, in)
			wantVerdict(t, v, xdpPass)
			if !c.decap {
				if !bytes.Equal(out, in) {
					t.Errorf("a tunnel packet for another host was changed")
				}
				return
			}
			want := frame(c.inner, pktOpts{VLAN: c.vlan})
			if !bytes.Equal(out, want) {
				t.Errorf("decapsulated\n got % x\nwant % x", out, want)
			}
		})
	}
}

// TestDecapNoServices: a backend node runs the program with no services
// at all, only its addresses.
func TestDecapNoServices(t *testing.T) {
	e := newEnv(t, Config{})
	inner := ipOf(t, packet(clientFlow(families[0], protoTCP, 1), pktOpts{}))
	in := encapsulated(netip.MustParseAddr("172.16.0.1"), nodeV4, inner, pktOpts{})
	v, out := e.run(t, in)
	wantVerdict(t, v, xdpPass)
	if !bytes.Equal(out, frame(inner, pktOpts{})) {
		t.Errorf("not decapsulated: % x", out)
	}
	// The node's addresses can be replaced: the old one stops decapsulating.
	must(t, e.prog.SetNodeAddrs([]netip.Addr{netip.MustParseAddr("10.0.0.50")}))
	if v, out := e.run(t, in); v != xdpPass || !bytes.Equal(out, in) {
		t.Errorf("decapsulated for a removed node address")
	}
	in2 := encapsulated(netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("10.0.0.50"), inner, pktOpts{})
	if _, out := e.run(t, in2); !bytes.Equal(out, frame(inner, pktOpts{})) {
		t.Errorf("not decapsulated for the new node address")
	}
}
