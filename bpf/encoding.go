package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"
)

// Addr is an address as the maps store it: 16 bytes, IPv4 as the
// IPv4-mapped IPv6 address ::ffff:a.b.c.d, so one layout serves both
// families.
type Addr [16]byte

// AddrFrom converts an address to the map form. The zero netip.Addr
// becomes all zeros (an unset field); a zone is dropped.
func AddrFrom(a netip.Addr) Addr { return Addr(a.As16()) }

// IP converts back: IPv4-mapped addresses become IPv4 (so ::ffff:1.2.3.4
// written as IPv6 reads back as 1.2.3.4), and all zeros becomes the zero
// netip.Addr, so an unset field round-trips. "::" is never a valid
// frontend or backend address, so nothing real is lost.
func (a Addr) IP() netip.Addr {
	if a == (Addr{}) {
		return netip.Addr{}
	}
	return netip.AddrFrom16(a).Unmap()
}

func (a Addr) String() string { return a.IP().String() }

// Port is a port in network byte order: the two bytes of a C __be16. A
// distinct type so that a host-order uint16 can't be stored by mistake.
type Port [2]byte

// PortFrom converts a host-order port to network order.
func PortFrom(p uint16) Port { return Port{byte(p >> 8), byte(p)} }

// Host returns the port in host order.
func (p Port) Host() uint16 { return uint16(p[0])<<8 | uint16(p[1]) }

func (p Port) String() string { return fmt.Sprint(p.Host()) }

// setCString copies s into a fixed C char array, leaving at least one NUL
// so C code can treat it as a string. It fails instead of truncating.
func setCString(dst []byte, s, field string) error {
	if len(s) >= len(dst) {
		return fmt.Errorf("%s is %d bytes, but %s holds at most %d", field, len(s), field, len(dst)-1)
	}
	if bytes.IndexByte([]byte(s), 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte", field, s)
	}
	n := copy(dst, s)
	clear(dst[n:])
	return nil
}

// cString reads a C char array up to its first NUL (or its end).
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ServiceName returns Name as a string.
func (v *FrontendValue) ServiceName() string { return cString(v.Name[:]) }

// PortNameString returns PortName as a string.
func (v *FrontendValue) PortNameString() string { return cString(v.PortName[:]) }

// UnmarshalEvent decodes one record of the weir_events ring buffer.
func UnmarshalEvent(b []byte) (Event, error) {
	var ev Event
	if len(b) < int(unsafe.Sizeof(ev)) {
		return ev, fmt.Errorf("event record is %d bytes, want at least %d (is the agent older than the programs?)", len(b), unsafe.Sizeof(ev))
	}
	if _, err := binary.Decode(b, binary.NativeEndian, &ev); err != nil {
		return ev, fmt.Errorf("decode event: %w", err)
	}
	return ev, nil
}
