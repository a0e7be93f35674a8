// Package topo builds throwaway network topologies from named network
// namespaces, veth pairs and bridges: the hosts of the demo, the benchmark
// harness and the end-to-end tests. Everything it creates is recorded and
// removed by Topology.Close, in reverse order, even after partial failure.
package topo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Topology owns the namespaces it created.
type Topology struct {
	prefix string
	hosts  []*Host
}

// New returns an empty topology whose namespace names start with prefix.
func New(prefix string) *Topology { return &Topology{prefix: prefix} }

// Host is one named network namespace.
type Host struct {
	Name   string
	Handle netns.NsHandle
	Link   *netlink.Handle
}

// Host creates a named namespace (visible to `ip netns`) with lo up.
// iproute2 creates it: it first makes /run/netns a shared mount point of
// its own, and a namespace bound there before that happens (as
// netns.NewNamed would) ends up hidden under it and can't be deleted.
func (t *Topology) Host(name string) (*Host, error) {
	full := t.prefix + name
	if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create netns %s: %v: %s", full, err, out)
	}
	h, err := netns.GetFromName(full)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", full).Run()
		return nil, fmt.Errorf("open netns %s: %w", full, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		_ = exec.Command("ip", "netns", "del", full).Run()
		return nil, err
	}
	host := &Host{Name: full, Handle: h, Link: nl}
	t.hosts = append(t.hosts, host)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	return host, nl.LinkSetUp(lo)
}

// Close deletes every namespace (and with them their links).
func (t *Topology) Close() error {
	var errs []error
	for i := len(t.hosts) - 1; i >= 0; i-- {
		h := t.hosts[i]
		h.Link.Close()
		h.Handle.Close()
		if out, err := exec.Command("ip", "netns", "del", h.Name).CombinedOutput(); err != nil {
			if _, serr := os.Stat(filepath.Join("/run/netns", h.Name)); !errors.Is(serr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("delete netns %s: %v: %s", h.Name, err, out))
			}
		}
	}
	t.hosts = nil
	return errors.Join(errs...)
}

// Do runs f on a thread inside the namespace.
func (h *Host) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h.Handle); err != nil {
			errc <- err
			return
		}
		ferr := f()
		// A thread that can't go back is discarded (left locked).
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Command runs a program in the namespace without a new mount namespace
// (unlike `ip netns exec`, so bpffs pins stay visible).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", h.Name), "--", name}, args...)...)
}

// Run runs a command in the namespace and returns its combined output.
func (h *Host) Run(name string, args ...string) (string, error) {
	out, err := h.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %v: %w: %s", h.Name, name, args, err, out)
	}
	return string(out), nil
}

// Sysctl writes a sysctl inside the namespace, e.g. "net/ipv4/ip_forward".
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// Veth connects a and b with a veth pair named nameA (in a) and nameB (in
// b), sets MTU, brings both up and returns the two links.
func Veth(a *Host, nameA string, b *Host, nameB string, mtu int) (netlink.Link, netlink.Link, error) {
	la := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nameA, MTU: mtu},
		PeerName:      nameB,
		PeerNamespace: netlink.NsFd(int(b.Handle)),
	}
	if err := a.Link.LinkAdd(la); err != nil {
		return nil, nil, fmt.Errorf("veth %s(%s) <-> %s(%s): %w", nameA, a.Name, nameB, b.Name, err)
	}
	linkA, err := a.Link.LinkByName(nameA)
	if err != nil {
		return nil, nil, err
	}
	linkB, err := b.Link.LinkByName(nameB)
	if err != nil {
		return nil, nil, err
	}
	if err := b.Link.LinkSetMTU(linkB, mtu); err != nil {
		return nil, nil, err
	}
	if err := a.Link.LinkSetUp(linkA); err != nil {
		return nil, nil, err
	}
	return linkA, linkB, b.Link.LinkSetUp(linkB)
}

// Bridge creates an up bridge in h.
func (h *Host) Bridge(name string, mtu int) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
	if err := h.Link.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("bridge %s in %s: %w", name, h.Name, err)
	}
	l, err := h.Link.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return l, h.Link.LinkSetUp(l)
}

// Enslave puts link into bridge br.
func (h *Host) Enslave(link, br netlink.Link) error {
	return h.Link.LinkSetMaster(link, br)
}

// AddAddr assigns a prefix to the named link (nodad for IPv6).
func (h *Host) AddAddr(link string, p netip.Prefix) error {
	l, err := h.Link.LinkByName(link)
	if err != nil {
		return fmt.Errorf("%s: link %s: %w", h.Name, link, err)
	}
	if err := h.Link.AddrAdd(l, NetlinkAddr(p)); err != nil {
		return fmt.Errorf("%s: add %s to %s: %w", h.Name, p, link, err)
	}
	return nil
}

// NetlinkAddr is p as a netlink address; IPv6 ones are nodad, so they are
// usable at once.
func NetlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = 0x02 // IFA_F_NODAD
	}
	return a
}

// Route adds a route to dst via gw (gw may be invalid for on-link routes
// through dev).
func (h *Host) Route(dst netip.Prefix, gw netip.Addr, dev string) error {
	r := &netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	if dev != "" {
		l, err := h.Link.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s: link %s: %w", h.Name, dev, err)
		}
		r.LinkIndex = l.Attrs().Index
	}
	if err := h.Link.RouteAdd(r); err != nil {
		return fmt.Errorf("%s: route %s via %s: %w", h.Name, dst, gw, err)
	}
	return nil
}

// TxOffloadOff turns off checksum offload on a veth end: locally sent
// packets otherwise carry CHECKSUM_PARTIAL, which a receiver drops after
// native XDP has forwarded them.
func (h *Host) TxOffloadOff(link string) error {
	_, err := h.Run("ethtool", "-K", link, "tx", "off")
	return err
}

// LinkStats returns the rx and tx byte counters of a link.
func (h *Host) LinkStats(link string) (rx, tx uint64, err error) {
	l, err := h.Link.LinkByName(link)
	if err != nil {
		return 0, 0, err
	}
	s := l.Attrs().Statistics
	if s == nil {
		return 0, 0, fmt.Errorf("%s: no statistics for %s", h.Name, link)
	}
	return s.RxBytes, s.TxBytes, nil
}

// Prefix is the prefix of the topology's namespace names.
func (t *Topology) Prefix() string { return t.prefix }

// Hosts returns the topology's hosts in creation order.
func (t *Topology) Hosts() []*Host { return t.hosts }
