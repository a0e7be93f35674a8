package main

import (
	"errors"
	"math"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/k8s"
	"github.com/weir-lb/weir/xdp"
)

// histogram returns a histogram's sample count and sum.
func histogram(tb testing.TB, h prometheus.Histogram) (uint64, float64) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	obsMust(tb, reg.Register(h))
	mfs, err := reg.Gather()
	obsMust(tb, err)
	m := mfs[0].GetMetric()[0].GetHistogram()
	return m.GetSampleCount(), m.GetSampleSum()
}

// TestNetworkProgramming: the time from a change being handed over to
// the end of the sync that programmed it; changes arriving during a sync
// wait for the next one.
func TestNetworkProgramming(t *testing.T) {
	m := newSyncMetrics()
	t0 := time.Unix(1000, 0)
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

	m.applied(sec(0), sec(1), 0) // a periodic resync, nothing queued
	if n, _ := histogram(t, m.kpProgramming); n != 0 {
		t.Fatalf("%d observations without a change", n)
	}
	m.changeQueued(sec(10))
	m.changeQueued(sec(11))
	m.applied(sec(12), sec(14), 2) // both programmed: 14 - 10
	if n, sum := histogram(t, m.kpProgramming); n != 1 || sum != 4 {
		t.Errorf("kube-proxy histogram: %d observations summing %v, want 1 of 4s", n, sum)
	}
	if n, sum := histogram(t, m.programming); n != 1 || sum != 4 {
		t.Errorf("weir histogram: %d observations summing %v, want 1 of 4s", n, sum)
	}

	m.changeQueued(sec(20))
	m.changeQueued(sec(22)) // arrives while the sync that started at 21 runs
	m.applied(sec(21), sec(23), 1)
	m.applied(sec(24), sec(25), 1) // programs the one from 22
	if n, sum := histogram(t, m.kpProgramming); n != 3 || sum != 4+3+3 {
		t.Errorf("%d observations summing %v, want 3 summing 10s", n, sum)
	}
	got := gathered(t, m.kpChanges)
	if got["kubeproxy_sync_proxy_rules_service_changes_total"] != 4 {
		t.Errorf("service changes %v", got)
	}
	got = gathered(t, m.kpQueued)
	if got["kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"] != 1022 {
		t.Errorf("last queued %v", got)
	}
}

// TestChangeApplyLatency: Kubernetes changes are timed from the event's
// receipt (weir_change_apply_duration_seconds) and from the slices'
// trigger times (kube-proxy's histogram), each when the sync that
// started after its hand-over ends; the initial state from the caches'
// sync.
func TestChangeApplyLatency(t *testing.T) {
	m := newSyncMetrics()
	m.triggeredByKubernetes()
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

	m.changeReceived(k8s.Change{Initial: true, Received: ms(0)}, ms(500))
	m.changeQueued(ms(500))
	if p := m.applied(ms(600), ms(1400), 10000); p.Initial != 1400*time.Millisecond || p.Change != 0 {
		t.Errorf("initial sync programmed %+v, want Initial 1.4s", p)
	}
	if got := gathered(t, m.initial)["weir_initial_programming_duration_seconds"]; got != 1.4 {
		t.Errorf("initial programming %v s, want 1.4", got)
	}

	// Two batches: one handed over before the sync started, one during.
	m.changeReceived(k8s.Change{Received: ms(2000), Triggered: []time.Time{ms(1990), ms(1980)}}, ms(2001))
	m.changeQueued(ms(2001))
	m.changeReceived(k8s.Change{Received: ms(2002)}, ms(2004))
	m.changeQueued(ms(2004))
	if p := m.applied(ms(2003), ms(2005), 1); p.Change != 5*time.Millisecond {
		t.Errorf("first sync programmed %+v, want Change 5ms", p)
	}
	if n, sum := histogram(t, m.changeApply); n != 1 || math.Abs(sum-0.005) > 1e-9 {
		t.Errorf("change apply: %d observations summing %v, want 1 of 5ms", n, sum)
	}
	if n, sum := histogram(t, m.kpProgramming); n != 2 || math.Abs(sum-(0.015+0.025)) > 1e-9 {
		t.Errorf("kube-proxy programming: %d observations summing %v, want 2 of 15 and 25 ms", n, sum)
	}
	if p := m.applied(ms(2010), ms(2011), 1); p.Change != 9*time.Millisecond {
		t.Errorf("second sync programmed %+v, want Change 9ms (2011 - 2002)", p)
	}
	if n, _ := histogram(t, m.changeApply); n != 2 {
		t.Errorf("change apply: %d observations, want 2", n)
	}
	if p := m.applied(ms(3000), ms(3001), 0); p != (Programmed{}) {
		t.Errorf("a sync with nothing pending programmed %+v", p)
	}
	// weir_network_programming_duration_seconds still times hand-overs.
	if n, _ := histogram(t, m.programming); n != 3 {
		t.Errorf("network programming: %d observations, want 3", n)
	}
}

// TestChangeApplyEdge: without Kubernetes, the config read starts both
// the change-apply and kube-proxy's latency.
func TestChangeApplyEdge(t *testing.T) {
	m := newSyncMetrics()
	t0 := time.Unix(1000, 0)
	m.changeQueued(t0)
	if p := m.applied(t0.Add(time.Millisecond), t0.Add(3*time.Millisecond), 1); p.Change != 3*time.Millisecond {
		t.Errorf("programmed %+v, want Change 3ms", p)
	}
	for _, h := range []prometheus.Histogram{m.changeApply, m.kpProgramming, m.programming} {
		if n, _ := histogram(t, h); n != 1 {
			t.Errorf("%d observations, want 1", n)
		}
	}
}

// TestPendingChangesBounded: while syncs fail, changes are remembered up
// to maxPending; the initial state always is.
func TestPendingChangesBounded(t *testing.T) {
	m := newSyncMetrics()
	m.triggeredByKubernetes()
	t0 := time.Unix(1000, 0)
	for range maxPending + 10 {
		m.changeReceived(k8s.Change{Received: t0, Triggered: []time.Time{t0}}, t0)
	}
	m.changeReceived(k8s.Change{Initial: true, Received: t0}, t0)
	if len(m.pending) != maxPending+1 {
		t.Errorf("%d pending, want %d", len(m.pending), maxPending+1)
	}
	if p := m.applied(t0, t0.Add(time.Second), 1); p.Initial != time.Second {
		t.Errorf("programmed %+v, want the initial state", p)
	}
	if len(m.pending) != 0 {
		t.Errorf("%d still pending", len(m.pending))
	}
}

// TestAgentCollector: backend health and attach state as gauges.
func TestAgentCollector(t *testing.T) {
	health := func() []healthState {
		return []healthState{
			{service: "web", backend: "10.0.0.1:80", healthy: true},
			{service: "web", backend: "10.0.0.2:80", healthy: false},
			{service: "web", backend: "10.0.0.2:80", healthy: false}, // listed twice
		}
	}
	attach := func() map[string]string {
		return map[string]string{"xdp/eth0": "", "xdp/eth1": "device eth1 was removed", "sock//sys/fs/cgroup": ""}
	}
	wantSeries(t, gathered(t, newAgentCollector(health, attach)), map[string]float64{
		`weir_backend_health{backend="10.0.0.1:80",service="web"}`: 1,
		`weir_backend_health{backend="10.0.0.2:80",service="web"}`: 0,
		`weir_attached{device="eth0",hook="xdp"}`:                  1,
		`weir_attached{device="eth1",hook="xdp"}`:                  0,
		`weir_attached{device="/sys/fs/cgroup",hook="sock"}`:       1,
	})
}

func TestServiceLabel(t *testing.T) {
	for n, want := range map[lb.ServiceName]string{
		{Name: "web"}: "web",
		{Namespace: "shop", Name: "cart", Port: "http", IPv6: true}: "shop/cart:http",
		{Namespace: "shop", Name: "cart"}:                           "shop/cart",
	} {
		if got := serviceLabel(n); got != want {
			t.Errorf("%+v: %q, want %q", n, got, want)
		}
	}
}

// TestAttachProblems: a hook found detached by the live check is a
// health problem naming the hook and why.
func TestAttachProblems(t *testing.T) {
	s := newAgentStatus()
	s.setAttach("xdp/eth0", nil)
	s.setAttach("xdp/eth1", nil)
	s.linkCheck = func(hook string) error {
		if hook == "xdp/eth1" {
			return errors.New("device eth1 was removed")
		}
		return nil
	}
	p := strings.Join(s.problems(), "\n")
	if !strings.Contains(p, "xdp/eth1 not attached: device eth1 was removed") || strings.Contains(p, "eth0") {
		t.Errorf("problems:\n%s", p)
	}
	if st := s.attachState(); st["xdp/eth0"] != "" || st["xdp/eth1"] == "" {
		t.Errorf("attach state %v", st)
	}
}

// TestCheckXDPLink: the live check notices a removed device and a
// removed pin.
func TestCheckXDPLink(t *testing.T) {
	m := mustTestMaps(t)
	ns := testutil.NewNetns(t, "wcmd-att-")
	peer := testutil.NewNetns(t, "wcmd-attp-")
	testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
	prog, err := xdp.Load(xdp.Config{Maps: m})
	obsMust(t, err)
	t.Cleanup(func() { prog.Close() })
	ns.MustDo(t, func() error { return prog.Attach("v0", xdp.Generic) })
	pin := xdp.LinkPin(m.Root(), "v0")
	t.Cleanup(func() { _ = ns.Do(func() error { return prog.Detach("v0") }) })

	obsMust(t, checkXDPLink(pin, "v0"))
	l, err := ns.Link.LinkByName("v0")
	obsMust(t, err)
	obsMust(t, ns.Link.LinkDel(l.(*netlink.Veth)))
	if err := checkXDPLink(pin, "v0"); err == nil || !strings.Contains(err.Error(), "device v0 was removed") {
		t.Errorf("after removing the device: %v", err)
	}
	if err := checkXDPLink(filepath.Join(m.Root(), "links", "xdp_gone"), "gone"); err == nil || !strings.Contains(err.Error(), "xdp_gone") {
		t.Errorf("missing pin: %v", err)
	}
}
