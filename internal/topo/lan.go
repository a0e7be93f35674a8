package topo

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// LAN is one L2 segment: a bridge in a namespace of its own that hosts join
// with a veth each. Hosts on it reach each other directly, which is what
// DSR needs: a backend answers the client without the load balancer.
type LAN struct {
	topo *Topology
	sw   *Host
	br   netlink.Link
}

// LAN creates the switch namespace and its bridge. mtu is the bridge's
// (and the ports') MTU; give it room for encapsulation.
func (t *Topology) LAN(mtu int) (*LAN, error) {
	sw, err := t.Host("sw")
	if err != nil {
		return nil, err
	}
	br, err := sw.Bridge("br0", mtu)
	if err != nil {
		return nil, err
	}
	return &LAN{topo: t, sw: sw, br: br}, nil
}

// Join creates a host whose eth0 (of the given MTU) is plugged into the
// LAN, with the given addresses and checksum offload off (see
// TxOffloadOff).
func (l *LAN) Join(name string, mtu int, addrs ...netip.Prefix) (*Host, error) {
	h, err := l.topo.Host(name)
	if err != nil {
		return nil, err
	}
	_, peer, err := Veth(h, "eth0", l.sw, "p-"+name, mtu)
	if err != nil {
		return nil, err
	}
	if err := l.sw.Enslave(peer, l.br); err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if err := h.AddAddr("eth0", a); err != nil {
			return nil, err
		}
	}
	return h, h.TxOffloadOff("eth0")
}
