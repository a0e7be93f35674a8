package xdp

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
)

// Hand-written packet building and decoding for the BPF_PROG_TEST_RUN
// tests: every header is spelled out, so tests can also build the broken
// ones.

const (
	protoICMP   = 1
	protoIPIP   = 4
	protoTCP    = 6
	protoUDP    = 17
	protoIPv6   = 41
	protoICMPv6 = 58
	protoSCTP   = 132

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

type flow struct {
	Src, Dst netip.AddrPort
	Proto    uint8
}

func (f flow) String() string { return fmt.Sprintf("%s->%s/%d", f.Src, f.Dst, f.Proto) }

// withSport returns the flow from another client port.
func (f flow) withSport(p uint16) flow {
	f.Src = netip.AddrPortFrom(f.Src.Addr(), p)
	return f
}

// reply is the flow in the other direction.
func (f flow) reply() flow { return flow{Src: f.Dst, Dst: f.Src, Proto: f.Proto} }

type pktOpts struct {
	SrcMAC, DstMAC net.HardwareAddr // defaults macPeer, macLB
	TCPFlags       uint8            // default SYN
	Seq, Ack       uint32
	Payload        []byte
	VLAN           uint16 // 802.1Q tag; 0 = untagged
	IPOptions      []byte // IPv4 options, a multiple of 4 bytes
	V6DestOpts     bool   // an IPv6 destination-options header before L4
	NoDF           bool
	ZeroUDPCsum    bool
}

var (
	macPeer = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x01} // the previous hop
	macLB   = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x02} // the node's device
	macNH   = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x03} // next hop (backends)
	macNH2  = net.HardwareAddr{0x02, 0x77, 0, 0, 0, 0x04} // next hop on the second device
)

// csum is the ones-complement sum of b (not complemented).
func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var s uint32
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		s = csumAdd(s, a[:])
		s = csumAdd(s, b[:])
	} else {
		a, b := src.As16(), dst.As16()
		s = csumAdd(s, a[:])
		s = csumAdd(s, b[:])
	}
	return s + uint32(proto) + uint32(length)
}

// l4Segment builds the L4 header and payload with a valid checksum.
func l4Segment(f flow, o pktOpts) []byte {
	src, dst := f.Src.Addr(), f.Dst.Addr()
	switch f.Proto {
	case protoTCP:
		b := make([]byte, 20+len(o.Payload))
		binary.BigEndian.PutUint16(b[0:], f.Src.Port())
		binary.BigEndian.PutUint16(b[2:], f.Dst.Port())
		binary.BigEndian.PutUint32(b[4:], o.Seq)
		binary.BigEndian.PutUint32(b[8:], o.Ack)
		b[12] = 5 << 4
		b[13] = o.TCPFlags
		if b[13] == 0 {
			b[13] = tcpSYN
		}
		binary.BigEndian.PutUint16(b[14:], 65535)
		copy(b[20:], o.Payload)
		binary.BigEndian.PutUint16(b[16:], csumFold(csumAdd(pseudoSum(src, dst, protoTCP, len(b)), b)))
		return b
	case protoUDP:
		b := make([]byte, 8+len(o.Payload))
		binary.BigEndian.PutUint16(b[0:], f.Src.Port())
		binary.BigEndian.PutUint16(b[2:], f.Dst.Port())
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
		copy(b[8:], o.Payload)
		if !o.ZeroUDPCsum {
			c := csumFold(csumAdd(pseudoSum(src, dst, protoUDP, len(b)), b))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(b[6:], c)
		}
		return b
	case protoSCTP:
		// Common header and one DATA-less INIT-like chunk of 4 bytes.
		b := make([]byte, 12+4+len(o.Payload))
		binary.BigEndian.PutUint16(b[0:], f.Src.Port())
		binary.BigEndian.PutUint16(b[2:], f.Dst.Port())
		binary.BigEndian.PutUint32(b[4:], 0x01020304)
		b[12] = 1
		binary.BigEndian.PutUint16(b[14:], 4)
		copy(b[16:], o.Payload)
		binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
		return b
	}
	return append([]byte(nil), o.Payload...)
}

// ipPacket wraps an L4 segment (or any payload) in an IP header.
func ipPacket(src, dst netip.Addr, proto uint8, l4 []byte, o pktOpts) []byte {
	if src.Is4() {
		hl := 20 + len(o.IPOptions)
		b := make([]byte, hl+len(l4))
		b[0] = 0x40 | byte(hl/4)
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[4:], 0x1234)
		if !o.NoDF {
			b[6] = 0x40
		}
		b[8] = 64
		b[9] = proto
		s, d := src.As4(), dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		copy(b[20:], o.IPOptions)
		binary.BigEndian.PutUint16(b[10:], csumFold(csumAdd(0, b[:hl])))
		copy(b[hl:], l4)
		return b
	}
	ext := 0
	if o.V6DestOpts {
		ext = 8
	}
	b := make([]byte, 40+ext+len(l4))
	binary.BigEndian.PutUint32(b[0:], 6<<28|0x12345)
	binary.BigEndian.PutUint16(b[4:], uint16(ext+len(l4)))
	b[6] = proto
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	if o.V6DestOpts {
		b[6] = 60
		b[40] = proto
		b[41] = 0 // 8 bytes
		b[42] = 1 // PadN
		b[43] = 4
	}
	copy(b[40+ext:], l4)
	return b
}

// frame puts an Ethernet header (and VLAN tag) in front of an IP packet.
func frame(ip []byte, o pktOpts) []byte {
	src, dst := o.SrcMAC, o.DstMAC
	if src == nil {
		src = macPeer
	}
	if dst == nil {
		dst = macLB
	}
	et := uint16(0x0800)
	if ip[0]>>4 == 6 {
		et = 0x86dd
	}
	b := append([]byte(nil), dst...)
	b = append(b, src...)
	if o.VLAN != 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, o.VLAN)
	}
	b = binary.BigEndian.AppendUint16(b, et)
	return append(b, ip...)
}

// packet builds a whole frame of the flow.
func packet(f flow, o pktOpts) []byte {
	src, dst := f.Src.Addr(), f.Dst.Addr()
	return frame(ipPacket(src, dst, f.Proto, l4Segment(f, o), o), o)
}

// encapsulated builds a tunnel frame: outer IP (src -> dst) around inner.
func encapsulated(src, dst netip.Addr, inner []byte, o pktOpts) []byte {
	proto := uint8(protoIPIP)
	if inner[0]>>4 == 6 {
		proto = protoIPv6
	}
	return frame(ipPacket(src, dst, proto, inner, o), o)
}

// decoded is a frame taken apart.
type decoded struct {
	DstMAC, SrcMAC net.HardwareAddr
	VLAN           uint16
	EtherType      uint16
	IP             *ipLayer
}

type ipLayer struct {
	Version    int
	Src, Dst   netip.Addr
	Proto      uint8 // after extension headers
	TTL        uint8
	TOS        uint8
	FlowLabel  uint32
	DF         bool
	Raw        []byte // the whole datagram, by its length field
	Header     []byte // IP header (and IPv6 extension headers)
	Payload    []byte
	HeaderCsum bool // IPv4 header checksum valid (always true for IPv6)
}

func decodeFrame(b []byte) (*decoded, error) {
	if len(b) < 14 {
		return nil, fmt.Errorf("frame of %d bytes", len(b))
	}
	d := &decoded{DstMAC: net.HardwareAddr(b[0:6]), SrcMAC: net.HardwareAddr(b[6:12])}
	et := binary.BigEndian.Uint16(b[12:])
	off := 14
	if et == 0x8100 {
		d.VLAN = binary.BigEndian.Uint16(b[14:])
		et = binary.BigEndian.Uint16(b[16:])
		off = 18
	}
	d.EtherType = et
	ip, err := decodeIP(b[off:])
	if err != nil {
		return nil, err
	}
	d.IP = ip
	return d, nil
}

func decodeIP(b []byte) (*ipLayer, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("empty IP packet")
	}
	l := &ipLayer{Version: int(b[0] >> 4)}
	switch l.Version {
	case 4:
		if len(b) < 20 {
			return nil, fmt.Errorf("IPv4 header truncated: %d bytes", len(b))
		}
		hl := int(b[0]&0xf) * 4
		tot := int(binary.BigEndian.Uint16(b[2:]))
		if tot > len(b) || hl > tot {
			return nil, fmt.Errorf("IPv4 total length %d, header %d, have %d", tot, hl, len(b))
		}
		l.Raw = b[:tot]
		l.Header, l.Payload = b[:hl], b[hl:tot]
		l.TOS, l.TTL, l.Proto = b[1], b[8], b[9]
		l.DF = b[6]&0x40 != 0
		l.Src = netip.AddrFrom4([4]byte(b[12:16]))
		l.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		l.HeaderCsum = csumFold(csumAdd(0, b[:hl])) == 0
	case 6:
		if len(b) < 40 {
			return nil, fmt.Errorf("IPv6 header truncated: %d bytes", len(b))
		}
		tot := 40 + int(binary.BigEndian.Uint16(b[4:]))
		if tot > len(b) {
			return nil, fmt.Errorf("IPv6 length %d, have %d", tot, len(b))
		}
		l.Raw = b[:tot]
		vtf := binary.BigEndian.Uint32(b)
		l.TOS, l.FlowLabel = uint8(vtf>>20), vtf&0xfffff
		l.TTL = b[7]
		l.Src = netip.AddrFrom16([16]byte(b[8:24]))
		l.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		nh, off := b[6], 40
		for nh == 0 || nh == 43 || nh == 60 {
			nh, off = b[off], off+(int(b[off+1])+1)*8
		}
		l.Proto = nh
		l.Header, l.Payload = b[:off], b[off:tot]
		l.HeaderCsum = true
	default:
		return nil, fmt.Errorf("IP version %d", l.Version)
	}
	return l, nil
}

// Inner decodes a tunnelled packet's inner IP packet.
func (l *ipLayer) Inner() (*ipLayer, error) {
	if l.Proto != protoIPIP && l.Proto != protoIPv6 {
		return nil, fmt.Errorf("not a tunnel packet: protocol %d", l.Proto)
	}
	return decodeIP(l.Payload)
}

// Ports of a TCP/UDP/SCTP payload.
func (l *ipLayer) Ports() (sport, dport uint16) {
	if len(l.Payload) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(l.Payload), binary.BigEndian.Uint16(l.Payload[2:])
}

// Flow is the packet's 5-tuple.
func (l *ipLayer) Flow() flow {
	s, d := l.Ports()
	return flow{Src: netip.AddrPortFrom(l.Src, s), Dst: netip.AddrPortFrom(l.Dst, d), Proto: l.Proto}
}

// L4CsumOK recomputes the L4 (or ICMP) checksum from scratch. A zero
// IPv4 UDP checksum counts as valid (none).
func (l *ipLayer) L4CsumOK() bool {
	p := l.Payload
	switch l.Proto {
	case protoTCP, protoUDP, protoICMPv6:
		if l.Proto == protoUDP && l.Version == 4 && binary.BigEndian.Uint16(p[6:]) == 0 {
			return true
		}
		return csumFold(csumAdd(pseudoSum(l.Src, l.Dst, l.Proto, len(p)), p)) == 0
	case protoICMP:
		return csumFold(csumAdd(0, p)) == 0
	}
	return false
}
