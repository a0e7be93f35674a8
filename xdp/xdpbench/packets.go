package xdpbench

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// The benchmark's address plan. The packet template carries flow 0; the
// harness writes the flow's client address, client port and service VIP
// into every packet from a counter (harness.go), so only the bases and
// offsets below matter.
var (
	// vipBase4/6: service i answers on vipBase + i (the last 32 bits).
	vipBase4 = netip.MustParseAddr("10.128.0.0")
	vipBase6 = netip.MustParseAddr("2001:db8:5e::")
	// otherBase4/6: addresses that are no service (pass-non-service).
	otherBase4 = netip.MustParseAddr("100.64.0.0")
	otherBase6 = netip.MustParseAddr("2001:db8:ee::")
	// clientNet4/6: clients; the harness writes the low 16 bits.
	clientNet4 = netip.MustParsePrefix("192.168.0.0/16")
	clientNet6 = netip.MustParsePrefix("fd20::/112")
	// deniedNet4/6: the source range of source-range-deny services: no
	// client is in it.
	deniedNet4 = netip.MustParsePrefix("198.51.100.0/24")
	deniedNet6 = netip.MustParsePrefix("2001:db8:de::/64")
	// tunnelBase4/6: backend b's DSR tunnel address is tunnelBase + b,
	// routed through the next hop below.
	tunnelBase4 = netip.MustParseAddr("10.64.0.0")
	tunnelNet4  = netip.MustParsePrefix("10.64.0.0/10")
	tunnelBase6 = netip.MustParseAddr("fd64::")
	tunnelNet6  = netip.MustParsePrefix("fd64::/64")
	// The node's device lb0 and its peer c0 (the next hop, and in live
	// mode the generator and the sink).
	nodeAddr4 = netip.MustParsePrefix("10.0.0.1/24")
	peerAddr4 = netip.MustParsePrefix("10.0.0.2/24")
	nodeAddr6 = netip.MustParsePrefix("fd00::1/64")
	peerAddr6 = netip.MustParsePrefix("fd00::2/64")
)

// servicePort is every benchmark service's port.
const servicePort = 80

// Protocol numbers.
const (
	protoTCP = 6
	protoUDP = 17
)

// layout is where the harness finds a frame's fields: byte offsets from
// the start of the Ethernet header.
type layout struct {
	ip       int // 4 or 6
	srcLow   int // the last two bytes of the source address
	dstLow   int // the last four bytes of the destination address
	srcPort  int
	headers  int // Ethernet + IP + L4 header: what the harness restores
	l4Header int
}

func layoutOf(ip int, proto uint8) layout {
	l4 := 20
	if proto == protoUDP {
		l4 = 8
	}
	if ip == 4 {
		return layout{ip: 4, srcLow: 14 + 12 + 2, dstLow: 14 + 16, srcPort: 14 + 20, headers: 14 + 20 + l4, l4Header: l4}
	}
	return layout{ip: 6, srcLow: 14 + 8 + 14, dstLow: 14 + 24 + 12, srcPort: 14 + 40, headers: 14 + 40 + l4, l4Header: l4}
}

// MinFrameSize is the smallest frame of a family and protocol: the
// headers without payload.
func MinFrameSize(ip int, proto uint8) int { return layoutOf(ip, proto).headers }

// MaxFrameSize bounds --sizes: a standard Ethernet frame. The benchmark
// links have room for the DSR header on top.
const MaxFrameSize = 1514

// template builds flow 0's frame of size bytes (at least the headers):
// client base address port 0 -> base:80, MACs src -> dst. dstBase is
// vipBase or otherBase of the family.
func template(ip int, proto uint8, size int, dstBase netip.Addr, src, dst net.HardwareAddr) ([]byte, error) {
	lay := layoutOf(ip, proto)
	if size < lay.headers || size > MaxFrameSize {
		return nil, fmt.Errorf("frame size %d is out of range for IPv%d/%s (%d to %d bytes)", size, ip, protoName(proto), lay.headers, MaxFrameSize)
	}
	payload := make([]byte, size-lay.headers)
	client := clientNet4.Addr()
	if ip == 6 {
		client = clientNet6.Addr()
	}
	l4 := l4Segment(client, dstBase, proto, payload)
	var ipPkt []byte
	if ip == 4 {
		ipPkt = ipv4Packet(client, dstBase, proto, l4)
	} else {
		ipPkt = ipv6Packet(client, dstBase, proto, l4)
	}
	et := uint16(0x0800)
	if ip == 6 {
		et = 0x86dd
	}
	b := make([]byte, 0, size)
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, et)
	return append(b, ipPkt...), nil
}

// l4Segment is a TCP ACK or a UDP datagram from port 0 to servicePort.
// Its checksum is not maintained: the harness rewrites addresses and
// ports per packet, and nothing on the path verifies it.
func l4Segment(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	if proto == protoUDP {
		b := make([]byte, 8+len(payload))
		binary.BigEndian.PutUint16(b[2:], servicePort)
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
		copy(b[8:], payload)
		return b
	}
	b := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(b[2:], servicePort)
	binary.BigEndian.PutUint32(b[4:], 1)
	binary.BigEndian.PutUint32(b[8:], 1)
	b[12] = 5 << 4
	b[13] = 0x10 // ACK: an established connection's packet
	binary.BigEndian.PutUint16(b[14:], 65535)
	copy(b[20:], payload)
	return b
}

func ipv4Packet(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[6] = 0x40 // DF
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ipChecksum(b[:20]))
	copy(b[20:], l4)
	return b
}

func ipv6Packet(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, 40+len(l4))
	binary.BigEndian.PutUint32(b[0:], 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6] = proto
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], l4)
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// addrPlus returns base plus n in its last 32 bits.
func addrPlus(base netip.Addr, n uint32) netip.Addr {
	b := base.As16()
	v := binary.BigEndian.Uint32(b[12:]) + n
	binary.BigEndian.PutUint32(b[12:], v)
	a := netip.AddrFrom16(b)
	if base.Is4() {
		return a.Unmap()
	}
	return a
}

// low32 is the last 32 bits of an address, as a host-order number.
func low32(a netip.Addr) uint32 {
	b := a.As16()
	return binary.BigEndian.Uint32(b[12:])
}

func protoName(p uint8) string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

// parseProto accepts tcp or udp.
func parseProto(s string) (uint8, error) {
	switch s {
	case "tcp", "TCP":
		return protoTCP, nil
	case "udp", "UDP":
		return protoUDP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}
