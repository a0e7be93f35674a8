package kube

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/internal/testutil"
)

// rootVethPool is where RootVeth picks a /30 when the caller gives none: a
// private range no real network of this project uses.
var rootVethPool = netip.MustParsePrefix("10.250.0.0/16")

// RootVeth connects the ROOT namespace to ns with a veth pair so that a
// process inside ns (kube-proxy, an agent) can reach an apiserver started
// with Options{BindAddr: rootAddr}: a namespace cannot reach the host's
// 127.0.0.1.
//
// prefix must be a /30 (or a /126 for IPv6); the root side gets its first
// host address and the ns side the next one (rootAddr.Next()), which is also
// a natural Node InternalIP. The zero Prefix picks a free /30 from
// 10.250.0.0/16. The root side is named weir-k8s-<4 hex digits>, the ns side
// k8s-<same digits>; the root side (and with it the pair) is deleted in
// Cleanup. Only the link this call created is ever touched.
func RootVeth(tb testing.TB, ns *testutil.Netns, prefix netip.Prefix) (rootAddr netip.Addr) {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	if !prefix.IsValid() {
		prefix = freeSubnet(tb)
	}
	prefix = prefix.Masked()
	rootAddr = prefix.Addr().Next()
	peerAddr := rootAddr.Next()
	if !prefix.Contains(peerAddr) || !prefix.Contains(peerAddr.Next()) {
		tb.Fatalf("RootVeth: %s has no room for two hosts: give a /30 (IPv4) or /126 (IPv6)", prefix)
	}

	suffix := randomShort()
	rootName, peerName := "weir-k8s-"+suffix, "k8s-"+suffix
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: rootName, MTU: 1500},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(ns.Handle)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		tb.Fatalf("create veth %s (root) <-> %s (netns %s): %v", rootName, peerName, ns.Name, err)
	}
	root, err := netlink.LinkByName(rootName)
	if err != nil {
		tb.Fatalf("find the veth %s just created: %v", rootName, err)
	}
	index := root.Attrs().Index
	tb.Cleanup(func() {
		// Delete by the index we created, and only if it is still our veth.
		l, err := netlink.LinkByIndex(index)
		if err != nil || l.Attrs().Name != rootName || l.Type() != "veth" {
			return
		}
		if err := netlink.LinkDel(l); err != nil {
			tb.Errorf("delete veth %s: %v", rootName, err)
		}
	})
	addAddr(tb, nil, root, netip.PrefixFrom(rootAddr, prefix.Bits()))
	if err := netlink.LinkSetUp(root); err != nil {
		tb.Fatalf("set %s up: %v", rootName, err)
	}
	peer, err := ns.Link.LinkByName(peerName)
	if err != nil {
		tb.Fatalf("find %s in netns %s: %v", peerName, ns.Name, err)
	}
	addAddr(tb, ns.Link, peer, netip.PrefixFrom(peerAddr, prefix.Bits()))
	if err := ns.Link.LinkSetUp(peer); err != nil {
		tb.Fatalf("set %s up in netns %s: %v", peerName, ns.Name, err)
	}
	return rootAddr
}

// addAddr assigns p to l through h (nil: the root namespace's default
// handle), nodad for IPv6 so the address is usable at once.
func addAddr(tb testing.TB, h *netlink.Handle, l netlink.Link, p netip.Prefix) {
	tb.Helper()
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}}
	if p.Addr().Is6() {
		a.Flags = 0x02 // IFA_F_NODAD
	}
	var err error
	if h == nil {
		err = netlink.AddrAdd(l, a)
	} else {
		err = h.AddrAdd(l, a)
	}
	if err != nil {
		tb.Fatalf("add %s to %s: %v", p, l.Attrs().Name, err)
	}
}

// freeSubnet picks a random /30 of rootVethPool that overlaps no address
// already on a root-namespace interface, so parallel tests don't collide.
func freeSubnet(tb testing.TB) netip.Prefix {
	tb.Helper()
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		tb.Fatalf("list host addresses: %v", err)
	}
	for range 64 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		base := rootVethPool.Addr().As4()
		base[2], base[3] = b[0], b[1]&^3
		cand := netip.PrefixFrom(netip.AddrFrom4(base), 30)
		if !overlapsAny(cand, addrs) {
			return cand
		}
	}
	tb.Fatalf("no free /30 left in %s", rootVethPool)
	return netip.Prefix{}
}

func overlapsAny(p netip.Prefix, addrs []netlink.Addr) bool {
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones).Masked().Overlaps(p) {
			return true
		}
	}
	return false
}

// randomShort is 4 hex digits: enough to keep parallel tests' link names
// apart while weir-k8s-XXXX stays within the 15-byte interface name limit.
func randomShort() string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
