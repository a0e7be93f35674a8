package testutil

import (
	"net/netip"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/internal/topo"
)

// Netns is a named network namespace made for one test: a "host" of the
// test topology (a topo.Host: Name, Handle, Link and Do). It is deleted
// when the test ends.
type Netns struct {
	*topo.Host
}

// NewNetns creates a named network namespace (visible to `ip netns`) with
// loopback up, and removes it in Cleanup.
func NewNetns(tb testing.TB, prefix string) *Netns {
	tb.Helper()
	RequirePrivileged(tb)
	t := topo.New(RandomName(prefix))
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	h, err := t.Host("")
	if err != nil {
		tb.Fatal(err)
	}
	return &Netns{h}
}

// MustDo is Do that fails the test on error.
func (n *Netns) MustDo(tb testing.TB, f func() error) {
	tb.Helper()
	if err := n.Do(f); err != nil {
		tb.Fatal(err)
	}
}

// Command returns a command that runs inside the namespace (ip netns exec,
// which also gives it a fresh /sys).
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
	linkA, linkB, err := topo.Veth(a.Host, nameA, b.Host, nameB, 1500)
	if err != nil {
		tb.Fatal(err)
	}
	if prefA.IsValid() {
		AddAddr(tb, a.Link, linkA, prefA)
	}
	if prefB.IsValid() {
		AddAddr(tb, b.Link, linkB, prefB)
	}
	return linkA, linkB
}

// AddAddr assigns an address with its prefix length to a link (nodad for
// IPv6, so the address is usable at once).
func AddAddr(tb testing.TB, h *netlink.Handle, l netlink.Link, p netip.Prefix) {
	tb.Helper()
	if err := h.AddrAdd(l, topo.NetlinkAddr(p)); err != nil {
		tb.Fatalf("add %s to %s: %v", p, l.Attrs().Name, err)
	}
}
