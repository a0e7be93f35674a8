package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is a named network namespace made for one test: a "host" of the
// test topology. It is deleted when the test ends.
type Netns struct {
	Name   string
	Handle netns.NsHandle
	// Link is a netlink handle bound to the namespace.
	Link *netlink.Handle
}

// NewNetns creates a named network namespace (visible to `ip netns`) with
// loopback up, and removes it in Cleanup.
func NewNetns(tb testing.TB, prefix string) *Netns {
	tb.Helper()
	RequirePrivileged(tb)
	name := RandomName(prefix)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		panic(fmt.Sprintf("cannot return to the original netns: %v", serr))
	}
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		tb.Fatal(err)
	}
	n := &Netns{Name: name, Handle: h, Link: nl}
	tb.Cleanup(func() {
		nl.Close()
		h.Close()
		_ = netns.DeleteNamed(name)
	})
	lo, err := nl.LinkByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		tb.Fatal(err)
	}
	return n
}

// Do runs f with the calling goroutine's thread inside the namespace. Use it
// for anything that binds to a namespace at creation: sockets, BPF links,
// devmap updates.
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine on a locked thread that is thrown away if it
	// cannot return to the original namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.Handle); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// MustDo is Do that fails the test on error.
func (n *Netns) MustDo(tb testing.TB, f func() error) {
	tb.Helper()
	if err := n.Do(f); err != nil {
		tb.Fatal(err)
	}
}

// Command returns a command that runs inside the namespace (ip netns exec).
func (n *Netns) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and fails the test on error.
func (n *Netns) Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %s %v: %v\n%s", n.Name, name, args, err, out)
	}
	return string(out)
}

// Veth connects two namespaces with a veth pair, sets both ends up and
// assigns the given prefixes (either may be invalid to skip). It returns the
// two links as seen in their namespaces.
func Veth(tb testing.TB, a *Netns, nameA string, prefA netip.Prefix, b *Netns, nameB string, prefB netip.Prefix) (netlink.Link, netlink.Link) {
	tb.Helper()
	la := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nameA, MTU: 1500},
		PeerName:      nameB,
		PeerNamespace: netlink.NsFd(int(b.Handle)),
	}
	if err := a.Link.LinkAdd(la); err != nil {
		tb.Fatalf("veth %s(%s) <-> %s(%s): %v", nameA, a.Name, nameB, b.Name, err)
	}
	linkA, err := a.Link.LinkByName(nameA)
	if err != nil {
		tb.Fatal(err)
	}
	linkB, err := b.Link.LinkByName(nameB)
	if err != nil {
		tb.Fatal(err)
	}
	for _, x := range []struct {
		h *netlink.Handle
		l netlink.Link
		p netip.Prefix
	}{{a.Link, linkA, prefA}, {b.Link, linkB, prefB}} {
		if x.p.IsValid() {
			AddAddr(tb, x.h, x.l, x.p)
		}
		if err := x.h.LinkSetUp(x.l); err != nil {
			tb.Fatal(err)
		}
	}
	return linkA, linkB
}

// AddAddr assigns an address with its prefix length to a link (nodad for
// IPv6, so the address is usable at once).
func AddAddr(tb testing.TB, h *netlink.Handle, l netlink.Link, p netip.Prefix) {
	tb.Helper()
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}}
	if p.Addr().Is6() {
		addr.Flags = 0x02 // IFA_F_NODAD
	}
	if err := h.AddrAdd(l, addr); err != nil {
		tb.Fatalf("add %s to %s: %v", p, l.Attrs().Name, err)
	}
}
