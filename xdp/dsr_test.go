package xdp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// Backends of the DSR tests, in the address plan of env_test.go.
var (
	tunA4 = netip.MustParseAddr("10.1.0.11")
	tunB4 = netip.MustParseAddr("10.1.0.12")
	tunA6 = netip.MustParseAddr("fd01::11")
	tunB6 = netip.MustParseAddr("fd01::12")
)

type family struct {
	name     string
	vip, cli netip.Addr
	tunA     netip.Addr
	tunB     netip.Addr
	prefix   netip.Prefix // outer sources
}

var families = []family{
	{"v4", vipV4, cliV4, tunA4, tunB4, DefaultEncapSourceV4},
	{"v6", vipV6, cliV6, tunA6, tunB6, DefaultEncapSourceV6},
}

var protos = []struct {
	name  string
	proto uint8
}{{"tcp", protoTCP}, {"udp", protoUDP}}

// dsrService is a DSR service on the family's VIP port 80 with backends
// 1 (tunnel A) and 2 (tunnel B).
func dsrService(f family, proto uint8) svc {
	return svc{
		ID: 7, VIP: netip.AddrPortFrom(f.vip, 80), Proto: proto, Mode: lb.ModeDSR,
		Backends: []be{
			{ID: 1, Addr: netip.AddrPortFrom(f.vip, 80), Tunnel: f.tunA},
			{ID: 2, Addr: netip.AddrPortFrom(f.vip, 80), Tunnel: f.tunB},
		},
	}
}

func clientFlow(f family, proto uint8, sport uint16) flow {
	return flow{Src: netip.AddrPortFrom(f.cli, sport), Dst: netip.AddrPortFrom(f.vip, 80), Proto: proto}
}

// ipOf returns the IP packet inside a frame built by packet().
func ipOf(tb testing.TB, frame []byte) []byte {
	tb.Helper()
	d, err := decodeFrame(frame)
	if err != nil {
		tb.Fatal(err)
	}
	return d.IP.Raw
}

// wantDSR checks an encapsulated output: MACs, ethertype, a valid outer
// header to the tunnel from the encap prefix, and the original IP packet
// inside, byte for byte. It returns the outer header.
func wantDSR(tb testing.TB, out, in []byte, tunnel netip.Addr, prefix netip.Prefix, src, dst net.HardwareAddr) *ipLayer {
	tb.Helper()
	d, err := decodeFrame(out)
	if err != nil {
		tb.Fatalf("output: %v", err)
	}
	if !bytes.Equal(d.SrcMAC, src) || !bytes.Equal(d.DstMAC, dst) {
		tb.Errorf("MACs %s -> %s, want %s -> %s", d.SrcMAC, d.DstMAC, src, dst)
	}
	if d.VLAN != 0 {
		tb.Errorf("encapsulated packet kept VLAN %d", d.VLAN)
	}
	o := d.IP
	wantET := uint16(0x0800)
	if tunnel.Is6() {
		wantET = 0x86dd
	}
	if d.EtherType != wantET {
		tb.Errorf("ethertype %#x, want %#x", d.EtherType, wantET)
	}
	if o.Dst != tunnel {
		tb.Errorf("outer destination %s, want %s", o.Dst, tunnel)
	}
	if !prefix.Contains(o.Src) {
		tb.Errorf("outer source %s outside %s", o.Src, prefix)
	}
	if !o.HeaderCsum {
		tb.Errorf("outer IPv4 header checksum invalid: % x", o.Header)
	}
	if o.TTL != 64 {
		tb.Errorf("outer TTL %d, want 64", o.TTL)
	}
	inner := ipOf(tb, in)
	wantProto := uint8(protoIPIP)
	if inner[0]>>4 == 6 {
		wantProto = protoIPv6
	}
	if o.Proto != wantProto {
		tb.Errorf("outer protocol %d, want %d", o.Proto, wantProto)
	}
	if !bytes.Equal(o.Payload, inner) {
		tb.Errorf("inner packet differs from the original:\n got % x\nwant % x", o.Payload, inner)
	}
	return o
}

func TestPassNonService(t *testing.T) {
	e := newEnv(t, Config{})
	for _, f := range families {
		e.addService(t, dsrService(f, protoTCP))
	}
	other := map[string]netip.Addr{"v4": netip.MustParseAddr("203.0.113.99"), "v6": netip.MustParseAddr("2001:db8:f::99")}
	for _, f := range families {
		for _, pr := range protos {
			t.Run(f.name+"/"+pr.name, func(t *testing.T) {
				cases := map[string]flow{
					"other address": {Src: netip.AddrPortFrom(f.cli, 1000), Dst: netip.AddrPortFrom(other[f.name], 80), Proto: pr.proto},
					"other port":    {Src: netip.AddrPortFrom(f.cli, 1000), Dst: netip.AddrPortFrom(f.vip, 81), Proto: pr.proto},
				}
				if pr.proto == protoUDP {
					// The service is TCP only.
					cases["other protocol"] = clientFlow(f, protoUDP, 1000)
				}
				for name, fl := range cases {
					in := packet(fl, pktOpts{Payload: []byte("hello")})
					v, out := e.run(t, in)
					if v != xdpPass || !bytes.Equal(out, in) {
						t.Errorf("%s: verdict %s, output changed %v", name, verdictName(v), !bytes.Equal(out, in))
					}
				}
			})
		}
	}
	t.Run("non-IP", func(t *testing.T) {
		arp := append(append(append([]byte(nil), macLB...), macPeer...), 0x08, 0x06)
		arp = append(arp, make([]byte, 28)...)
		v, out := e.run(t, arp)
		if v != xdpPass || !bytes.Equal(out, arp) {
			t.Errorf("ARP: verdict %s", verdictName(v))
		}
	})
	t.Run("ICMP to VIP", func(t *testing.T) {
		in := frame(ipPacket(cliV4, vipV4, protoICMP, []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0}, pktOpts{}), pktOpts{})
		v, out := e.run(t, in)
		if v != xdpPass || !bytes.Equal(out, in) {
			t.Errorf("ICMP: verdict %s", verdictName(v))
		}
	})
	if s := e.drops(t, bpf.ReasonMalformed); s.Packets != 0 {
		t.Errorf("malformed drops %d", s.Packets)
	}
}

func TestDSR(t *testing.T) {
	for _, f := range families {
		for _, pr := range protos {
			t.Run(f.name+"/"+pr.name, func(t *testing.T) {
				e := newEnv(t, Config{})
				s := dsrService(f, pr.proto)
				e.addService(t, s)
				in := packet(clientFlow(f, pr.proto, 40000), pktOpts{Payload: []byte("GET / HTTP/1.1\r\n\r\n")})
				v, out := e.run(t, in)
				wantVerdict(t, v, xdpTX)
				o := wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
				var beID lb.BackendID = 1
				if o.Dst == f.tunB {
					beID = 2
				} else if o.Dst != f.tunA {
					t.Fatalf("outer destination %s is neither backend", o.Dst)
				}
				// Counters: exactly this packet, on the service and its backend.
				if got := sumStats(t, e.maps.ServiceStats, uint32(s.ID)); got != (bpf.TrafficStats{Packets: 1, Bytes: uint64(len(in))}) {
					t.Errorf("service stats %+v, want 1 packet of %d bytes", got, len(in))
				}
				if got := sumStats(t, e.maps.BackendStats, uint32(beID)); got != (bpf.TrafficStats{Packets: 1, Bytes: uint64(len(in))}) {
					t.Errorf("backend %d stats %+v, want 1 packet of %d bytes", beID, got, len(in))
				}
				if got := sumStats(t, e.maps.BackendStats, uint32(3-beID)); got.Packets != 0 {
					t.Errorf("other backend counted %+v", got)
				}
				// The outer source depends on the client address and port
				// only: the same flow keeps it, another port may move.
				_, out2 := e.run(t, in)
				o2 := wantDSR(t, out2, in, o.Dst, f.prefix, macLB, macNH)
				if o2.Src != o.Src {
					t.Errorf("outer source changed within a flow: %s then %s", o.Src, o2.Src)
				}
				srcs := map[netip.Addr]bool{}
				for p := uint16(1); p <= 16; p++ {
					_, out := e.run(t, packet(clientFlow(f, pr.proto, 50000+p), pktOpts{}))
					d, err := decodeFrame(out)
					if err != nil {
						t.Fatal(err)
					}
					srcs[d.IP.Src] = true
				}
				if len(srcs) < 8 {
					t.Errorf("16 client ports used only %d outer sources: RSS would not spread them", len(srcs))
				}
			})
		}
	}
}

// o2tunnel reads the outer destination of an output, for checks that
// don't know which backend was picked.
func o2tunnel(tb testing.TB, out []byte) netip.Addr {
	tb.Helper()
	d, err := decodeFrame(out)
	if err != nil {
		tb.Fatal(err)
	}
	return d.IP.Dst
}
