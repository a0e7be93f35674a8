package sockmap

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// pinnedLinks returns the IDs and program IDs of the pinned links of a
// cgroup, by hook name; missing pins are absent.
func pinnedLinks(tb testing.TB, p *Program, cgroup string) map[string][2]uint32 {
	tb.Helper()
	out := map[string][2]uint32{}
	for _, h := range hooks {
		l, err := link.LoadPinnedLink(p.linkPin(h, cgroup), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			tb.Fatal(err)
		}
		out[h.name] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

func TestRestartUpdatesPinnedLinks(t *testing.T) {
	tp := newTopo(t, Config{})
	vip := netip.MustParseAddrPort("10.96.2.1:80")
	apply(t, tp.rec, service("web", vip, lb.TCP, backends4[0]))
	c := tp.newClient(t)
	before := pinnedLinks(t, tp.prog, tp.cgroup)
	if len(before) != len(hooks) {
		t.Fatalf("%d links pinned, want %d", len(before), len(hooks))
	}

	// Clients keep connecting while the agent goes away and comes back.
	done := make(chan reply, 1)
	cc := startClient(t, tp.cgroup, tp.client)
	go func() { done <- cc.do(request{Op: "dial", Net: "tcp4", Addr: vip.String(), Count: 300}) }()

	// The agent exits: programs and link handles closed, pins stay.
	if err := tp.prog.Close(); err != nil {
		t.Fatal(err)
	}
	c.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()})

	// A new agent loads and attaches: the same links, new programs.
	p2, err := Load(Config{Maps: tp.maps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p2.Close() })
	if err := p2.Attach(tp.cgroup); err != nil {
		t.Fatal(err)
	}
	after := pinnedLinks(t, p2, tp.cgroup)
	for name, b := range before {
		a := after[name]
		if a[0] != b[0] {
			t.Errorf("%s: link %d replaced by %d, want the pinned link updated", name, b[0], a[0])
		}
		if a[1] == b[1] {
			t.Errorf("%s: link still runs program %d, want the new one", name, b[1])
		}
	}
	for i, r := range (<-done).Results {
		if r.Err != "" || r.ID != ap(backends4[0], backendPort) {
			t.Fatalf("connect %d during the restart: %+v", i, r)
		}
	}
	c.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()})

	// Attaching twice is harmless too.
	if err := p2.Attach(tp.cgroup); err != nil {
		t.Fatal(err)
	}
	// Detach by the new agent removes everything, pins included.
	if err := p2.Detach(tp.cgroup); err != nil {
		t.Fatal(err)
	}
	if left := pinnedLinks(t, p2, tp.cgroup); len(left) != 0 {
		t.Errorf("after Detach, pinned links remain: %v", left)
	}
	if r := c.one(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.Errno != int(unix.ENETUNREACH) {
		t.Errorf("after Detach: %+v, want untranslated (ENETUNREACH)", r)
	}
	if err := p2.Detach(tp.cgroup); err != nil {
		t.Errorf("second Detach: %v, want success", err)
	}
}

func TestAttachReplacesLinksOfRemovedCgroup(t *testing.T) {
	client := testutil.NewNetns(t, "weir-sock-cli-")
	server := testutil.NewNetns(t, "weir-sock-srv-")
	testutil.Veth(t, client, "wsc0", netip.PrefixFrom(clientAddr4, 24), server, "wss0", netip.PrefixFrom(backends4[0], 24))
	serveIdentity(t, server, netip.AddrPortFrom(backends4[0], backendPort))
	parent := testCgroup(t)
	maps := openMaps(t)
	p, err := Load(Config{Maps: maps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	vip := netip.MustParseAddrPort("10.96.2.2:80")
	apply(t, newReconciler(t, maps), service("web", vip, lb.TCP, backends4[0]))

	cg := filepath.Join(parent, "pod")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := p.Attach(cg); err != nil {
		t.Fatal(err)
	}
	old := pinnedLinks(t, p, cg)
	// The cgroup goes away with the links still pinned, and comes back.
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(cg) })
	if err := p.Attach(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Detach(cg) })
	for name, l := range pinnedLinks(t, p, cg) {
		if l[0] == old[name][0] {
			t.Errorf("%s: the dead link %d was kept", name, l[0])
		}
	}
	c := startClient(t, cg, client)
	if r := c.mustOK(request{Op: "dial", Net: "tcp4", Addr: vip.String()}); r.ID != ap(backends4[0], backendPort) {
		t.Errorf("in the recreated cgroup: reached %s", r.ID)
	}
}

func TestAttachRejectsNonCgroup(t *testing.T) {
	maps := openMaps(t)
	p, err := Load(Config{Maps: maps})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, path := range []string{t.TempDir(), "/nonexistent/weir", "/proc/self/status"} {
		err := p.Attach(path)
		if err == nil {
			t.Errorf("Attach(%s) succeeded", path)
			continue
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "cgroup") {
			t.Errorf("Attach(%s): %v, want an error naming the path and cgroup v2", path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(maps.Root(), "links")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(maps.Root(), "links"))
		if len(entries) != 0 {
			t.Errorf("failed attaches left pins: %v", entries)
		}
	}
}

func TestLoadNeedsMaps(t *testing.T) {
	if _, err := Load(Config{}); err == nil || !strings.Contains(err.Error(), "bpf.OpenMaps") {
		t.Errorf("Load without maps: %v, want an error pointing to bpf.OpenMaps", err)
	}
}
