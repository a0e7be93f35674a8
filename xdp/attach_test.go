package xdp

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/weir-lb/weir/internal/testutil"
)

func TestParseAttachMode(t *testing.T) {
	for s, want := range map[string]AttachMode{"native": Native, "generic": Generic, "auto": Auto} {
		got, err := ParseAttachMode(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseAttachMode(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseAttachMode("driver"); err == nil || !strings.Contains(err.Error(), "native, generic or auto") {
		t.Errorf("bad mode error: %v", err)
	}
}

// xdpProgID is the ID of the XDP program on a device, 0 if none.
func xdpProgID(tb testing.TB, ns *testutil.Netns, ifname string) uint32 {
	tb.Helper()
	l, err := ns.Link.LinkByName(ifname)
	must(tb, err)
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

func progID(tb testing.TB, p *Program) uint32 {
	tb.Helper()
	info, err := p.Entry().Info()
	must(tb, err)
	id, _ := info.ID()
	return uint32(id)
}

// TestAttachReplaceDetach: attach pins a link; a new program (an agent
// restart) takes over the pinned link atomically; detach removes it.
func TestAttachReplaceDetach(t *testing.T) {
	for _, mode := range []AttachMode{Native, Generic, Auto} {
		t.Run(mode.String(), func(t *testing.T) {
			maps := mustMaps(t)
			ns := testutil.NewNetns(t, "wx-att-")
			peer := testutil.NewNetns(t, "wx-attp-")
			testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
			p1 := mustLoad(t, Config{Maps: maps})
			ns.MustDo(t, func() error { return p1.Attach("v0", mode) })
			pin := LinkPin(maps.Root(), "v0")
			if _, err := os.Stat(pin); err != nil {
				t.Fatalf("link not pinned: %v", err)
			}
			if got := xdpProgID(t, ns, "v0"); got != progID(t, p1) {
				t.Fatalf("device runs program %d, want %d", got, progID(t, p1))
			}
			// The agent goes away: the program stays attached.
			must(t, p1.Close())
			if got := xdpProgID(t, ns, "v0"); got == 0 {
				t.Fatal("closing the Program detached it")
			}
			l, err := link.LoadPinnedLink(pin, nil)
			must(t, err)
			info, err := l.Info()
			must(t, err)
			l.Close()

			// A new agent attaches its program: same link, new program.
			p2 := mustLoad(t, Config{Maps: maps})
			ns.MustDo(t, func() error { return p2.Attach("v0", mode) })
			if got := xdpProgID(t, ns, "v0"); got != progID(t, p2) {
				t.Fatalf("device runs program %d after replace, want %d", got, progID(t, p2))
			}
			l, err = link.LoadPinnedLink(pin, nil)
			must(t, err)
			info2, err := l.Info()
			must(t, err)
			l.Close()
			if info2.ID != info.ID {
				t.Errorf("link %d replaced by %d: the update was not in place", info.ID, info2.ID)
			}

			ns.MustDo(t, func() error { return p2.Detach("v0") })
			if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin left after detach: %v", err)
			}
			if got := xdpProgID(t, ns, "v0"); got != 0 {
				t.Errorf("program %d still attached after detach", got)
			}
			// Detaching again is fine.
			ns.MustDo(t, func() error { return p2.Detach("v0") })
		})
	}
}

// TestAttachStaleLink: a link pinned for a device that was since
// recreated is replaced by a fresh one.
func TestAttachStaleLink(t *testing.T) {
	maps := mustMaps(t)
	ns := testutil.NewNetns(t, "wx-att-")
	peer := testutil.NewNetns(t, "wx-attp-")
	testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
	p := mustLoad(t, Config{Maps: maps})
	ns.MustDo(t, func() error { return p.Attach("v0", Generic) })
	must(t, p.Close())
	l, err := ns.Link.LinkByName("v0")
	must(t, err)
	must(t, ns.Link.LinkDel(l))
	testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
	p2 := mustLoad(t, Config{Maps: maps})
	ns.MustDo(t, func() error { return p2.Attach("v0", Generic) })
	if got := xdpProgID(t, ns, "v0"); got != progID(t, p2) {
		t.Errorf("recreated device runs %d, want %d", got, progID(t, p2))
	}
	ns.MustDo(t, func() error { return p2.Detach("v0") })
}

func TestAttachUnknownDevice(t *testing.T) {
	p := mustLoad(t, Config{})
	ns := testutil.NewNetns(t, "wx-att-")
	err := ns.Do(func() error { return p.Attach("nosuch0", Native) })
	if err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("attach to a missing device: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	maps := mustMaps(t)
	for name, c := range map[string]Config{
		"no maps":        {},
		"v6 as SNATv4":   {Maps: maps, SNATv4: nodeV6},
		"v4 as SNATv6":   {Maps: maps, SNATv6: nodeV4},
		"empty range":    {Maps: maps, SNATPortMin: 2000, SNATPortMax: 1000},
		"v6 encap on v4": {Maps: maps, EncapSourceV4: netip.MustParsePrefix("fd00::/64")},
	} {
		if _, err := Load(c); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}
