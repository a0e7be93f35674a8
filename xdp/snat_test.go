package xdp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

var (
	snatBackendV4 = netip.MustParseAddrPort("10.1.0.21:8080")
	snatBackendV6 = netip.MustParseAddrPort("[fd01::21]:8080")
)

func snatService(f family, proto uint8, mode lb.Mode) svc {
	b := snatBackendV4
	if f.name == "v6" {
		b = snatBackendV6
	}
	return svc{ID: 9, VIP: netip.AddrPortFrom(f.vip, 80), Proto: proto, Mode: mode,
		Backends: []be{{ID: 1, Addr: b, Tunnel: f.tunA}}}
}

func snatAddr(f family) netip.Addr {
	if f.name == "v6" {
		return nodeV6
	}
	return nodeV4
}

// wantRewritten checks a NATed packet: MACs, addresses and ports, valid
// checksums recomputed from scratch, payload untouched.
func wantRewritten(tb testing.TB, out []byte, src, dst net2MAC, fl flow, payload []byte) *ipLayer {
	tb.Helper()
	d, err := decodeFrame(out)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(d.SrcMAC, src) || !bytes.Equal(d.DstMAC, dst) {
		tb.Errorf("MACs %s -> %s, want %s -> %s", d.SrcMAC, d.DstMAC, src, dst)
	}
	ip := d.IP
	got := ip.Flow()
	if got.Src.Addr() != fl.Src.Addr() || got.Dst != fl.Dst || got.Proto != fl.Proto {
		tb.Errorf("rewritten to %s, want %s", got, fl)
	}
	if fl.Src.Port() != 0 && got.Src.Port() != fl.Src.Port() {
		tb.Errorf("source port %d, want %d", got.Src.Port(), fl.Src.Port())
	}
	if !ip.HeaderCsum {
		tb.Errorf("IPv4 header checksum invalid")
	}
	if !ip.L4CsumOK() {
		tb.Errorf("L4 checksum invalid after rewrite")
	}
	hl := 20
	if fl.Proto == protoUDP {
		hl = 8
	}
	if !bytes.Equal(ip.Payload[hl:], payload) {
		tb.Errorf("payload changed")
	}
	return ip
}

type net2MAC = []byte

func TestSNAT(t *testing.T) {
	for _, f := range families {
		for _, pr := range protos {
			t.Run(f.name+"/"+pr.name, func(t *testing.T) {
				e := newEnv(t, Config{})
				s := snatService(f, pr.proto, lb.ModeSNAT)
				e.addService(t, s)
				b := s.Backends[0].Addr
				fl := clientFlow(f, pr.proto, 41000)
				payload := []byte("request body")
				v, out := e.run(t, packet(fl, pktOpts{TCPFlags: tcpSYN, Seq: 9, Payload: payload}))
				wantVerdict(t, v, xdpTX)
				ip := wantRewritten(t, out, macLB, macNH, flow{Src: netip.AddrPortFrom(snatAddr(f), 0), Dst: b, Proto: pr.proto}, payload)
				natPort, _ := ip.Ports()
				if natPort < DefaultSNATPortMin || natPort > DefaultSNATPortMax {
					t.Errorf("NAT port %d outside the default range", natPort)
				}
				// The reverse entry.
				k := bpf.SNATKey{Addr: bpf.AddrFrom(b.Addr()), Port: bpf.PortFrom(b.Port()), NatPort: bpf.PortFrom(natPort), Proto: pr.proto}
				var sv bpf.SNATValue
				must(t, e.maps.SNAT.Lookup(&k, &sv))
				if sv.Client != bpf.AddrFrom(f.cli) || sv.ClientPort.Host() != 41000 || sv.FrontendID != uint32(s.ID) {
					t.Errorf("SNAT entry %+v", sv)
				}
				// The flow keeps its port.
				_, out = e.run(t, packet(fl, pktOpts{TCPFlags: tcpACK, Payload: payload}))
				if p, _ := wantRewritten(t, out, macLB, macNH, flow{Src: netip.AddrPortFrom(snatAddr(f), natPort), Dst: b, Proto: pr.proto}, payload).Ports(); p != natPort {
					t.Errorf("established flow moved from port %d to %d", natPort, p)
				}

				// The backend's reply goes back to the client from the VIP.
				reply := flow{Src: b, Dst: netip.AddrPortFrom(snatAddr(f), natPort), Proto: pr.proto}
				answer := []byte("response")
				v, out = e.run(t, packet(reply, pktOpts{SrcMAC: macNH, TCPFlags: tcpSYN | tcpACK, Payload: answer}))
				wantVerdict(t, v, xdpTX)
				wantRewritten(t, out, macLB, macPeer, fl.reply(), answer)
				if got := sumStats(t, e.maps.ServiceStats, uint32(s.ID)); got.Packets != 3 {
					t.Errorf("service counted %d packets, want 3", got.Packets)
				}

				// A reply to an unknown NAT port is not ours.
				stray := packet(flow{Src: b, Dst: netip.AddrPortFrom(snatAddr(f), natPort+1), Proto: pr.proto}, pktOpts{SrcMAC: macNH})
				if v, out := e.run(t, stray); v != xdpPass || !bytes.Equal(out, stray) {
					t.Errorf("stray reply: verdict %s", verdictName(v))
				}
			})
		}
	}
}

// TestSNATReplyCachesNextHop: a backend's reply caches its next hop (to
// the client) in the SNAT entry, so later replies skip the FIB lookup; a
// neighbour change is picked up once the forward path's refresh drops the
// cache, or once the entry is a second old.
func TestSNATReplyCachesNextHop(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := snatService(f, protoTCP, lb.ModeSNAT)
			e.addService(t, s)
			b := s.Backends[0].Addr
			fl := clientFlow(f, protoTCP, 42000)
			_, out := e.run(t, packet(fl, pktOpts{TCPFlags: tcpSYN}))
			natPort, _ := wantRewritten(t, out, macLB, macNH, flow{Src: netip.AddrPortFrom(snatAddr(f), 0), Dst: b, Proto: protoTCP}, nil).Ports()
			reply := packet(flow{Src: b, Dst: netip.AddrPortFrom(snatAddr(f), natPort), Proto: protoTCP}, pktOpts{SrcMAC: macNH, TCPFlags: tcpACK})
			k := bpf.SNATKey{Addr: bpf.AddrFrom(b.Addr()), Port: bpf.PortFrom(b.Port()), NatPort: bpf.PortFrom(natPort), Proto: protoTCP}
			var sv bpf.SNATValue

			_, out = e.run(t, reply)
			wantRewritten(t, out, macLB, macPeer, fl.reply(), nil)
			must(t, e.maps.SNAT.Lookup(&k, &sv))
			if sv.Fib.Ifindex != uint32(e.ifindex) || net.HardwareAddr(sv.Fib.Dmac[:]).String() != macPeer.String() ||
				net.HardwareAddr(sv.Fib.Smac[:]).String() != macLB.String() || int(sv.Fib.Len) != len(reply)-14 {
				t.Fatalf("reply's cached next hop: ifindex %d dmac %x smac %x len %d", sv.Fib.Ifindex, sv.Fib.Dmac, sv.Fib.Smac, sv.Fib.Len)
			}
			peer := "10.0.0.3"
			family := netlink.FAMILY_V4
			if !f.cli.Is4() {
				peer, family = "fd00::3", netlink.FAMILY_V6
			}
			newMAC := net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x98}
			must(t, e.node.Link.NeighSet(&netlink.Neigh{LinkIndex: e.ifindex, Family: family, State: netlink.NUD_PERMANENT, IP: net.ParseIP(peer), HardwareAddr: newMAC}))
			_, out = e.run(t, reply)
			wantRewritten(t, out, macLB, macPeer, fl.reply(), nil) // still cached

			// A second old: the reply looks the next hop up again.
			sv.LastSeen -= uint64(2 * time.Second)
			must(t, e.maps.SNAT.Update(&k, &sv, ebpf.UpdateExist))
			_, out = e.run(t, reply)
			wantRewritten(t, out, macLB, newMAC, fl.reply(), nil)

			// The forward path's refresh drops the cache too.
			must(t, e.node.Link.NeighSet(&netlink.Neigh{LinkIndex: e.ifindex, Family: family, State: netlink.NUD_PERMANENT, IP: net.ParseIP(peer), HardwareAddr: macPeer}))
			ck := ctKeyOf(fl)
			var ct bpf.CTValue
			must(t, e.maps.CT.Lookup(&ck, &ct))
			ct.LastSeen -= uint64(2 * time.Second)
			must(t, e.maps.CT.Update(&ck, &ct, ebpf.UpdateExist))
			e.run(t, packet(fl, pktOpts{TCPFlags: tcpACK}))
			_, out = e.run(t, reply)
			wantRewritten(t, out, macLB, macPeer, fl.reply(), nil)
		})
	}
}

// TestSNATZeroUDPChecksum: an IPv4 UDP datagram without checksum keeps
// none.
func TestSNATZeroUDPChecksum(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	e.addService(t, snatService(f, protoUDP, lb.ModeSNAT))
	v, out := e.run(t, packet(clientFlow(f, protoUDP, 7), pktOpts{ZeroUDPCsum: true, Payload: []byte("x")}))
	wantVerdict(t, v, xdpTX)
	d, err := decodeFrame(out)
	must(t, err)
	if c := d.IP.Payload[6:8]; c[0] != 0 || c[1] != 0 {
		t.Errorf("UDP checksum % x, want none", c)
	}
	if !d.IP.HeaderCsum {
		t.Errorf("IPv4 header checksum invalid")
	}
}

// TestSNATPortProbing: taken ports are skipped; a full range drops; a
// flow whose conntrack entry is gone gets its own port back.
func TestSNATPortProbing(t *testing.T) {
	e := newEnv(t, Config{SNATPortMin: 40000, SNATPortMax: 40003})
	f := families[0]
	s := snatService(f, protoTCP, lb.ModeSNAT)
	e.addService(t, s)
	b := s.Backends[0].Addr
	key := func(port uint16) bpf.SNATKey {
		return bpf.SNATKey{Addr: bpf.AddrFrom(b.Addr()), Port: bpf.PortFrom(b.Port()), NatPort: bpf.PortFrom(port), Proto: protoTCP}
	}
	foreign := bpf.SNATValue{Client: bpf.AddrFrom(netip.MustParseAddr("192.0.2.99")), ClientPort: bpf.PortFrom(1), FrontendID: 1234}
	for _, p := range []uint16{40000, 40001, 40003} {
		k := key(p)
		must(t, e.maps.SNAT.Update(&k, &foreign, ebpf.UpdateNoExist))
	}
	fl := clientFlow(f, protoTCP, 5000)
	v, out := e.run(t, packet(fl, pktOpts{}))
	wantVerdict(t, v, xdpTX)
	d, err := decodeFrame(out)
	must(t, err)
	if p, _ := d.IP.Ports(); p != 40002 {
		t.Fatalf("got port %d, want the only free one, 40002", p)
	}
	// Range exhausted.
	v, _ = e.run(t, packet(fl.withSport(5001), pktOpts{}))
	wantVerdict(t, v, xdpDrop)
	if got := e.drops(t, bpf.ReasonSNATNoPort); got.Packets != 1 {
		t.Errorf("snat_no_port drops %d, want 1", got.Packets)
	}
	// The first flow loses its conntrack entry: it still owns 40002.
	ck := ctKeyOf(fl)
	must(t, e.maps.CT.Delete(&ck))
	v, out = e.run(t, packet(fl, pktOpts{TCPFlags: tcpACK}))
	wantVerdict(t, v, xdpTX)
	d, err = decodeFrame(out)
	must(t, err)
	if p, _ := d.IP.Ports(); p != 40002 {
		t.Errorf("flow came back on port %d, want its 40002", p)
	}
}

// TestSNATUnsupported: SCTP can't be source-NATed, and a family without
// a SNAT address drops its SNAT flows; both with reason "unsupported".
func TestSNATUnsupported(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	sc := snatService(f, protoSCTP, lb.ModeSNAT)
	e.addService(t, sc)
	v, _ := e.run(t, packet(clientFlow(f, protoSCTP, 1), pktOpts{}))
	wantVerdict(t, v, xdpDrop)

	// A second program on the same maps, with no IPv6 SNAT address.
	p4, err := Load(Config{Maps: e.maps, SNATv4: nodeV4})
	must(t, err)
	t.Cleanup(func() { p4.Close() })
	f6 := families[1]
	s6 := snatService(f6, protoUDP, lb.ModeSNAT)
	s6.ID = 10
	e.addService(t, s6)
	v, _ = e.runOn(t, p4.Entry(), e.ifindex, packet(clientFlow(f6, protoUDP, 1), pktOpts{}))
	wantVerdict(t, v, xdpDrop)
	if got := e.drops(t, bpf.ReasonUnsupported); got.Packets != 2 {
		t.Errorf("unsupported drops %d, want 2", got.Packets)
	}
}

// TestHybrid: TCP is encapsulated (DSR), UDP source-NATed.
func TestHybrid(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			tcp := snatService(f, protoTCP, lb.ModeHybrid)
			udp := snatService(f, protoUDP, lb.ModeHybrid)
			udp.ID, udp.Backends[0].ID = 10, 2
			e.addService(t, tcp)
			e.addService(t, udp)
			in := packet(clientFlow(f, protoTCP, 1), pktOpts{})
			v, out := e.run(t, in)
			wantVerdict(t, v, xdpTX)
			wantDSR(t, out, in, f.tunA, f.prefix, macLB, macNH)
			v, out = e.run(t, packet(clientFlow(f, protoUDP, 1), pktOpts{Payload: []byte("q")}))
			wantVerdict(t, v, xdpTX)
			wantRewritten(t, out, macLB, macNH, flow{Src: netip.AddrPortFrom(snatAddr(f), 0), Dst: udp.Backends[0].Addr, Proto: protoUDP}, []byte("q"))
		})
	}
}
