package xdp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// wantReply decodes a reply sent back with XDP_TX: MACs swapped, from the
// packet's destination to its source, valid checksums.
func wantReply(tb testing.TB, v uint32, out []byte, fl flow, proto uint8) *ipLayer {
	tb.Helper()
	wantVerdict(tb, v, xdpTX)
	d, err := decodeFrame(out)
	if err != nil {
		tb.Fatalf("reply: %v", err)
	}
	if !bytes.Equal(d.DstMAC, macPeer) || !bytes.Equal(d.SrcMAC, macLB) {
		tb.Errorf("reply MACs %s -> %s, want %s -> %s", d.SrcMAC, d.DstMAC, macLB, macPeer)
	}
	ip := d.IP
	if ip.Src != fl.Dst.Addr() || ip.Dst != fl.Src.Addr() || ip.Proto != proto {
		tb.Errorf("reply %s -> %s proto %d, want %s -> %s proto %d", ip.Src, ip.Dst, ip.Proto, fl.Dst.Addr(), fl.Src.Addr(), proto)
	}
	if !ip.HeaderCsum {
		tb.Errorf("reply IPv4 header checksum invalid")
	}
	if !ip.L4CsumOK() {
		tb.Errorf("reply checksum invalid: % x", ip.Raw)
	}
	if len(out) != 14+len(ip.Raw) {
		tb.Errorf("reply frame %d bytes, IP datagram %d: trailing bytes", len(out), len(ip.Raw))
	}
	return ip
}

func TestRejectTCP(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoTCP)
			s.NoBackends = true
			e.addService(t, s)
			fl := clientFlow(f, protoTCP, 44444)

			// A SYN: RST|ACK acknowledging it.
			v, out := e.run(t, packet(fl, pktOpts{TCPFlags: tcpSYN, Seq: 1000}))
			ip := wantReply(t, v, out, fl, protoTCP)
			th := ip.Payload
			if len(th) != 20 {
				t.Fatalf("RST segment %d bytes", len(th))
			}
			sp, dp := ip.Ports()
			if sp != 80 || dp != 44444 {
				t.Errorf("RST ports %d -> %d", sp, dp)
			}
			if th[13] != tcpRST|tcpACK || binary.BigEndian.Uint32(th[4:]) != 0 || binary.BigEndian.Uint32(th[8:]) != 1001 {
				t.Errorf("RST flags %#x seq %d ack %d, want RST|ACK 0 1001", th[13], binary.BigEndian.Uint32(th[4:]), binary.BigEndian.Uint32(th[8:]))
			}

			// Data with an ACK: RST with the ACK as sequence number.
			v, out = e.run(t, packet(fl, pktOpts{TCPFlags: tcpACK | tcpPSH, Seq: 5, Ack: 777, Payload: []byte("hello")}))
			ip = wantReply(t, v, out, fl, protoTCP)
			th = ip.Payload
			if th[13] != tcpRST || binary.BigEndian.Uint32(th[4:]) != 777 {
				t.Errorf("RST flags %#x seq %d, want RST 777", th[13], binary.BigEndian.Uint32(th[4:]))
			}

			// A RST is never answered.
			v, _ = e.run(t, packet(fl, pktOpts{TCPFlags: tcpRST}))
			wantVerdict(t, v, xdpDrop)
			if got := e.drops(t, bpf.ReasonNoBackend); got.Packets != 3 {
				t.Errorf("no-backend drops %d, want 3", got.Packets)
			}
		})
	}
}

func TestRejectUDP(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoUDP)
			s.NoBackends = true
			e.addService(t, s)
			fl := clientFlow(f, protoUDP, 5353)
			in := packet(fl, pktOpts{Payload: bytes.Repeat([]byte("q"), 100)})
			orig := ipOf(t, in)
			v, out := e.run(t, in)
			if f.name == "v4" {
				ip := wantReply(t, v, out, fl, protoICMP)
				ic := ip.Payload
				if ic[0] != 3 || ic[1] != 3 {
					t.Errorf("ICMP type %d code %d, want 3/3", ic[0], ic[1])
				}
				// The original IP header and 8 bytes.
				if !bytes.Equal(ic[8:], orig[:28]) {
					t.Errorf("quote % x, want % x", ic[8:], orig[:28])
				}
			} else {
				ip := wantReply(t, v, out, fl, protoICMPv6)
				ic := ip.Payload
				if ic[0] != 1 || ic[1] != 4 {
					t.Errorf("ICMPv6 type %d code %d, want 1/4", ic[0], ic[1])
				}
				if !bytes.Equal(ic[8:], orig) {
					t.Errorf("quote % x, want the whole packet % x", ic[8:], orig)
				}
			}
			if got := e.drops(t, bpf.ReasonNoBackend); got != (bpf.TrafficStats{Packets: 1, Bytes: uint64(len(in))}) {
				t.Errorf("no-backend drops %+v", got)
			}
		})
	}
}

// TestRejectIPv4Options: the quote is the whole original header.
func TestRejectIPv4Options(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	s := dsrService(f, protoUDP)
	s.NoBackends = true
	e.addService(t, s)
	fl := clientFlow(f, protoUDP, 9)
	in := packet(fl, pktOpts{IPOptions: []byte{1, 1, 1, 0, 1, 1, 1, 0}, Payload: []byte("0123456789")})
	orig := ipOf(t, in)
	v, out := e.run(t, in)
	ip := wantReply(t, v, out, fl, protoICMP)
	if !bytes.Equal(ip.Payload[8:], orig[:28+8]) {
		t.Errorf("quote % x, want % x", ip.Payload[8:], orig[:36])
	}
}

func TestSourceRanges(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			s := dsrService(f, protoTCP)
			s.Flags = lb.FlagSourceRanges
			allowed := netip.PrefixFrom(f.cli, 120)
			if f.name == "v4" {
				allowed = netip.PrefixFrom(f.cli, 28)
			}
			s.Ranges = []netip.Prefix{allowed.Masked()}
			e.addService(t, s)
			inside := clientFlow(f, protoTCP, 1)
			outside := inside
			outside.Src = netip.AddrPortFrom(netip.MustParseAddr(map[string]string{"v4": "192.0.2.200", "v6": "2001:db8:c::7:0"}[f.name]), 1)

			v, _ := e.run(t, packet(inside, pktOpts{}))
			wantVerdict(t, v, xdpTX)
			v, _ = e.run(t, packet(outside, pktOpts{}))
			wantVerdict(t, v, xdpDrop)
			if got := e.drops(t, bpf.ReasonSourceRange); got.Packets != 1 {
				t.Errorf("source-range drops %d, want 1", got.Packets)
			}
			if !e.prog.Stages()[StageSourceRanges] {
				t.Errorf("source-range stage is off by default")
			}
			// Switched off at run time: everyone is load-balanced.
			must(t, e.prog.SetStage(StageSourceRanges, false))
			v, _ = e.run(t, packet(outside.withSport(2), pktOpts{}))
			wantVerdict(t, v, xdpTX)
			must(t, e.prog.SetStage(StageSourceRanges, true))
			v, _ = e.run(t, packet(outside.withSport(3), pktOpts{}))
			wantVerdict(t, v, xdpDrop)
			if got := e.drops(t, bpf.ReasonSourceRange); got.Packets != 2 {
				t.Errorf("source-range drops %d, want 2", got.Packets)
			}
		})
	}
}

// TestTooBig: a packet that would exceed the route's MTU of 1400 once
// encapsulated is answered with fragmentation needed / packet too big.
func TestTooBig(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			tunnel := netip.MustParseAddr(map[string]string{"v4": "10.4.0.1", "v6": "fd04::1"}[f.name])
			s := svc{ID: 3, VIP: netip.AddrPortFrom(f.vip, 80), Proto: protoTCP,
				Backends: []be{{ID: 1, Addr: netip.AddrPortFrom(f.vip, 80), Tunnel: tunnel}}}
			e.addService(t, s)
			fl := clientFlow(f, protoTCP, 999)
			hdr := 40
			overhead := 20
			if f.name == "v6" {
				hdr, overhead = 60, 40
			}
			// Exactly fits: forwarded.
			fits := packet(fl, pktOpts{TCPFlags: tcpACK, Payload: make([]byte, 1400-overhead-hdr)})
			v, _ := e.run(t, fits)
			wantVerdict(t, v, xdpTX)
			// One byte more: answered.
			big := packet(fl, pktOpts{TCPFlags: tcpACK, Payload: make([]byte, 1400-overhead-hdr+1)})
			orig := ipOf(t, big)
			v, out := e.run(t, big)
			if f.name == "v4" {
				ip := wantReply(t, v, out, fl, protoICMP)
				ic := ip.Payload
				if ic[0] != 3 || ic[1] != 4 || binary.BigEndian.Uint16(ic[6:]) != 1380 {
					t.Errorf("ICMP type %d code %d MTU %d, want 3/4 1380", ic[0], ic[1], binary.BigEndian.Uint16(ic[6:]))
				}
				if !bytes.Equal(ic[8:], orig[:28]) {
					t.Errorf("quote % x", ic[8:])
				}
			} else {
				ip := wantReply(t, v, out, fl, protoICMPv6)
				ic := ip.Payload
				if ic[0] != 2 || ic[1] != 0 || binary.BigEndian.Uint32(ic[4:]) != 1360 {
					t.Errorf("ICMPv6 type %d code %d MTU %d, want 2/0 1360", ic[0], ic[1], binary.BigEndian.Uint32(ic[4:]))
				}
				if len(ip.Raw) != 1280 || !bytes.Equal(ic[8:], orig[:1280-48]) {
					t.Errorf("packet too big is %d bytes (want 1280) or its quote differs", len(ip.Raw))
				}
			}
			if got := e.drops(t, bpf.ReasonFragNeeded); got.Packets != 1 {
				t.Errorf("frag-needed drops %d, want 1", got.Packets)
			}
		})
	}
}
