package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// ctFixture is two services with conntrack entries: web (2 backends, 6
// flows from 192.0.2.x) and dns (1 backend, 3 flows from 198.51.100.x,
// one SNATed).
func ctFixture(t *testing.T) (*bpf.Maps, *lb.DatapathState) {
	t.Helper()
	m := mustTestMaps(t)
	web := obsService(t, m, 1, "web", "", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:80", "10.1.0.2:80")
	dns := obsService(t, m, 2, "kube-system/dns", "udp", lb.ScopeExternal, "10.0.0.2", "10.1.0.3:53")
	now := uint64(monotonicNow())
	for i := range 6 {
		k, v := ctEntry(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), uint16(1000+i)), "10.0.0.1", 1, web[i%2], now-uint64(5*time.Second))
		obsMust(t, m.CT.Update(&k, &v, ebpf.UpdateAny))
	}
	for i := range 3 {
		k, v := ctEntry(netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), uint16(2000+i)), "10.0.0.2", 2, dns[0], now)
		if i == 0 {
			v.Flags, v.NatPort = ctFlagSNAT, bpf.PortFrom(40001)
		}
		obsMust(t, m.CT.Update(&k, &v, ebpf.UpdateAny))
	}
	st, err := bpf.NewDatapath(m).Dump()
	obsMust(t, err)
	return m, st
}

func runCT(t *testing.T, m *bpf.Maps, st *lb.DatapathState, o conntrackOptions) []CTEntryView {
	t.Helper()
	var out bytes.Buffer
	obsMust(t, inspectConntrack(&out, m, st, o, true))
	var views []CTEntryView
	obsMust(t, json.Unmarshal(out.Bytes(), &views))
	return views
}

func TestInspectConntrackFilters(t *testing.T) {
	m, st := ctFixture(t)
	for _, tc := range []struct {
		name string
		o    conntrackOptions
		want int
	}{
		{"all", conntrackOptions{}, 9},
		{"service by name", conntrackOptions{services: []string{"web"}}, 6},
		{"service without its port", conntrackOptions{services: []string{"kube-system/dns"}}, 3},
		{"service with its port", conntrackOptions{services: []string{"kube-system/dns:udp"}}, 3},
		{"service by frontend", conntrackOptions{services: []string{"10.0.0.1:80/TCP"}}, 6},
		{"two services", conntrackOptions{services: []string{"web", "kube-system/dns"}}, 9},
		{"backend address", conntrackOptions{backends: []string{"10.1.0.1"}}, 3},
		{"backend address and port", conntrackOptions{backends: []string{"10.1.0.2:80"}}, 3},
		{"backend wrong port", conntrackOptions{backends: []string{"10.1.0.2:81"}}, 0},
		{"client address", conntrackOptions{addresses: []string{"198.51.100.7"}}, 3},
		{"CIDR", conntrackOptions{addresses: []string{"192.0.2.0/24"}}, 6},
		{"frontend address", conntrackOptions{addresses: []string{"10.0.0.2"}}, 3},
		{"service and backend", conntrackOptions{services: []string{"web"}, backends: []string{"10.1.0.3"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runCT(t, m, st, tc.o); len(got) != tc.want {
				t.Errorf("%d entries, want %d: %+v", len(got), tc.want, got)
			}
		})
	}
}

func TestInspectConntrackViews(t *testing.T) {
	m, st := ctFixture(t)
	views := runCT(t, m, st, conntrackOptions{services: []string{"kube-system/dns"}})
	snat := views[0]
	want := CTEntryView{Proto: "TCP", Client: "198.51.100.7:2000", Frontend: "10.0.0.2:80/TCP", Service: "kube-system/dns:udp",
		Backend: "10.1.0.3:53", Mode: "snat", SNATPort: 40001}
	if snat.Proto != want.Proto || snat.Client != want.Client || snat.Frontend != want.Frontend || snat.Service != want.Service ||
		snat.Backend != want.Backend || snat.Mode != want.Mode || snat.SNATPort != want.SNATPort || snat.AgeSeconds > 1 {
		t.Errorf("entry\n got %+v\nwant %+v", snat, want)
	}
	if views[1].Mode != "dsr" || views[1].SNATPort != 0 {
		t.Errorf("DSR entry %+v", views[1])
	}
	web := runCT(t, m, st, conntrackOptions{services: []string{"web"}})
	if web[0].AgeSeconds != 5 {
		t.Errorf("age %v, want 5s", web[0].AgeSeconds)
	}

	var table bytes.Buffer
	obsMust(t, inspectConntrack(&table, m, st, conntrackOptions{services: []string{"kube-system/dns"}}, false))
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "PROTO") || !strings.Contains(lines[1], "40001") || !strings.Contains(lines[1], "snat") {
		t.Errorf("table:\n%s", table.String())
	}
}

func TestInspectConntrackCountAndFlush(t *testing.T) {
	m, st := ctFixture(t)
	var out bytes.Buffer
	obsMust(t, inspectConntrack(&out, m, st, conntrackOptions{count: true, services: []string{"web"}}, false))
	if out.String() != "6\n" {
		t.Errorf("count: %q", out.String())
	}
	for _, bad := range []conntrackOptions{{flush: true}, {flush: true, count: true, services: []string{"web"}}, {backends: []string{"nope"}}} {
		if err := inspectConntrack(&out, m, st, bad, false); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}

	out.Reset()
	obsMust(t, inspectConntrack(&out, m, st, conntrackOptions{flush: true, backends: []string{"10.1.0.1:80"}}, true))
	if strings.TrimSpace(out.String()) != "{\n  \"flushed\": 3\n}" {
		t.Errorf("flush: %s", out.String())
	}
	if got := runCT(t, m, st, conntrackOptions{}); len(got) != 6 {
		t.Errorf("%d entries left, want 6", len(got))
	}
	if got := runCT(t, m, st, conntrackOptions{backends: []string{"10.1.0.1"}}); len(got) != 0 {
		t.Errorf("flushed entries still there: %+v", got)
	}
}

// TestDeleteCTSkipsGoneKeys: a key deleted in the meantime (expired) in
// the middle of a batch neither fails the flush nor stops it.
func TestDeleteCTSkipsGoneKeys(t *testing.T) {
	m := mustTestMaps(t)
	var keys []bpf.CTKey
	for i := range 10 {
		k, v := ctEntry(netip.MustParseAddrPort(fmt.Sprintf("192.0.2.1:%d", 1000+i)), "10.0.0.1", 1, 1, 1)
		obsMust(t, m.CT.Update(&k, &v, ebpf.UpdateAny))
		keys = append(keys, k)
	}
	obsMust(t, m.CT.Delete(&keys[4]))
	n, err := deleteCT(m.CT, keys)
	if err != nil || n != 9 {
		t.Errorf("deleted %d (%v), want 9", n, err)
	}
	if left, _ := countEntries(m.CT); left != 0 {
		t.Errorf("%d entries left", left)
	}
}
