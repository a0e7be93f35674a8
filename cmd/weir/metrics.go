package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/k8s"
	"github.com/weir-lb/weir/xdp"
)

// syncMetrics time the reconciler's syncs and the programming of
// changes, under Weir's names and under kube-proxy's (kubeproxy_*), so
// existing dashboards and alerts keep working. Its methods are safe for
// concurrent use.
type syncMetrics struct {
	duration, kpDuration       prometheus.Histogram
	last, kpLast               prometheus.Gauge
	errors                     prometheus.Counter
	programming, kpProgramming prometheus.Histogram
	queued, kpQueued           prometheus.Gauge
	changes, kpChanges         prometheus.Counter
	changeApply                prometheus.Histogram
	initial                    prometheus.Gauge

	mu sync.Mutex
	// oldest and newest are when the first and the last change not yet
	// programmed were handed over by the source; zero when none is.
	oldest, newest time.Time
	// kpTriggered: kubeproxy_network_programming_duration_seconds is
	// timed from the EndpointSlices' trigger times (changeReceived), as
	// kube-proxy does, instead of from the hand-over.
	kpTriggered bool
	// pending are the changes received and not yet programmed, each
	// with the histograms it is to be observed in.
	pending []pendingChange
}

// pendingChange is one latency to observe when the change is programmed.
type pendingChange struct {
	queued time.Time // handed to the reconciler: a sync starting later programs it
	since  time.Time // the latency's start
	kind   changeKind
}

type changeKind int

const (
	changeApply   changeKind = iota // event receipt: weir_change_apply_duration_seconds
	changeTrigger                   // trigger time: kubeproxy_network_programming_duration_seconds
	changeInitial                   // caches synced: weir_initial_programming_duration_seconds
)

// maxPending bounds the changes remembered while syncs fail: beyond it
// new ones are not timed (the oldest, which the latency is about, stay).
const maxPending = 4096

// Programmed is what a sync programmed, for its log line: the longest
// event-to-programmed latency among the changes it applied, and the time
// from the caches' sync when it programmed the initial state (zero when
// not).
type Programmed struct {
	Change, Initial time.Duration
}

// kubeProxyProgrammingBuckets are kube-proxy's buckets for
// network_programming_duration_seconds: 0.25s to 5min.
func kubeProxyProgrammingBuckets() []float64 {
	b := prometheus.LinearBuckets(0.25, 0.25, 2)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

func newSyncMetrics() *syncMetrics {
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	return &syncMetrics{
		duration: hist("weir_sync_duration_seconds", "Time to apply one sync (reconcile) of desired state to the BPF maps.",
			prometheus.ExponentialBuckets(0.0001, 2, 18)),
		kpDuration: hist("kubeproxy_sync_proxy_rules_duration_seconds", "kube-proxy compatible: sync duration.",
			prometheus.ExponentialBuckets(0.001, 2, 15)),
		last:   gauge("weir_sync_last_timestamp_seconds", "Unix time of the last successful sync."),
		kpLast: gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kube-proxy compatible: Unix time of the last successful sync."),
		errors: counter("weir_sync_errors_total", "Syncs that failed (they are retried)."),
		programming: hist("weir_network_programming_duration_seconds",
			"Time from the service source handing over a change (config file read, Kubernetes object seen) to the change being in the BPF maps.",
			prometheus.ExponentialBuckets(0.001, 2, 20)),
		kpProgramming: hist("kubeproxy_network_programming_duration_seconds",
			"kube-proxy compatible: time from a change being seen to it being programmed.", kubeProxyProgrammingBuckets()),
		queued:    gauge("weir_sync_last_queued_timestamp_seconds", "Unix time of the last change handed over by the service source."),
		kpQueued:  gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "kube-proxy compatible: Unix time of the last queued change."),
		changes:   counter("weir_service_changes_total", "Services written or deleted by syncs."),
		kpChanges: counter("kubeproxy_sync_proxy_rules_service_changes_total", "kube-proxy compatible: service changes (here: services written or deleted by syncs)."),
		changeApply: hist("weir_change_apply_duration_seconds",
			"Time from the agent receiving a change (Kubernetes informer event, config file read) to the end of the sync that programmed it.",
			prometheus.ExponentialBuckets(0.0001, 2, 20)),
		initial: gauge("weir_initial_programming_duration_seconds",
			"Time from the Kubernetes informers' caches syncing to the end of the first sync that programmed every service."),
	}
}

// collectors returns every metric of m, for registering.
func (m *syncMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.duration, m.kpDuration, m.last, m.kpLast, m.errors,
		m.programming, m.kpProgramming, m.queued, m.kpQueued, m.changes, m.kpChanges, m.changeApply, m.initial}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// observe records one sync's duration, or its failure.
func (m *syncMetrics) observe(d time.Duration, err error) {
	if err != nil {
		m.errors.Inc()
		return
	}
	m.duration.Observe(d.Seconds())
	m.kpDuration.Observe(d.Seconds())
	now := unixSeconds(time.Now())
	m.last.Set(now)
	m.kpLast.Set(now)
}

// changeQueued records that the source handed over a change at t. With
// no event time of its own (the edge source: t is when the config was
// read) it also starts the change-apply latency.
func (m *syncMetrics) changeQueued(t time.Time) {
	m.queued.Set(unixSeconds(t))
	m.kpQueued.Set(unixSeconds(t))
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.oldest.IsZero() {
		m.oldest = t
	}
	m.newest = t
	if !m.kpTriggered {
		m.addPendingLocked(pendingChange{queued: t, since: t, kind: changeApply})
	}
}

// triggeredByKubernetes makes kubeproxy_network_programming_duration_seconds
// and weir_change_apply_duration_seconds follow changeReceived only.
func (m *syncMetrics) triggeredByKubernetes() {
	m.mu.Lock()
	m.kpTriggered = true
	m.mu.Unlock()
}

// changeReceived records the timing of a batch of Kubernetes changes
// handed to the reconciler at queued.
func (m *syncMetrics) changeReceived(c k8s.Change, queued time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Initial {
		m.addPendingLocked(pendingChange{queued: queued, since: c.Received, kind: changeInitial})
		return
	}
	if !c.Received.IsZero() {
		m.addPendingLocked(pendingChange{queued: queued, since: c.Received, kind: changeApply})
	}
	for _, t := range c.Triggered {
		m.addPendingLocked(pendingChange{queued: queued, since: t, kind: changeTrigger})
	}
}

func (m *syncMetrics) addPendingLocked(c pendingChange) {
	if len(m.pending) < maxPending || c.kind == changeInitial {
		m.pending = append(m.pending, c)
	}
}

// applied records a successful sync that started at start and wrote or
// deleted changed services, finishing at now. Changes queued before start
// are programmed: the time since the oldest of them is observed. A change
// queued during the sync is left for the next one, which is then timed
// from the latest change (the earlier ones of that batch are not kept:
// an underestimate by at most one sync's duration).
//
// The changes received (changeReceived) before start are observed one
// by one, each from its own start.
func (m *syncMetrics) applied(start, now time.Time, changed int) Programmed {
	m.changes.Add(float64(changed))
	m.kpChanges.Add(float64(changed))
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.observePendingLocked(start, now)
	if m.oldest.IsZero() || m.oldest.After(start) {
		return p
	}
	d := now.Sub(m.oldest).Seconds()
	m.programming.Observe(d)
	if !m.kpTriggered {
		m.kpProgramming.Observe(d)
	}
	if m.newest.After(start) {
		m.oldest = m.newest
	} else {
		m.oldest, m.newest = time.Time{}, time.Time{}
	}
	return p
}

// observePendingLocked observes the pending changes queued before start
// and keeps the others.
func (m *syncMetrics) observePendingLocked(start, now time.Time) Programmed {
	var p Programmed
	keep := m.pending[:0]
	for _, c := range m.pending {
		if c.queued.After(start) {
			keep = append(keep, c)
			continue
		}
		d := now.Sub(c.since)
		switch c.kind {
		case changeApply:
			m.changeApply.Observe(d.Seconds())
			p.Change = max(p.Change, d)
		case changeTrigger:
			// A trigger time from another clock can be ahead of ours.
			m.kpProgramming.Observe(max(d, 0).Seconds())
		case changeInitial:
			m.initial.Set(d.Seconds())
			p.Initial = d
		}
	}
	clear(m.pending[len(keep):])
	m.pending = keep
	return p
}

// agentCollector reports the agent's own state at scrape time: health
// checks and attachments.
type agentCollector struct {
	health   func() []healthState
	attach   func() map[string]string
	bhealth  *prometheus.Desc
	attached *prometheus.Desc
}

// healthState is one probed backend's state as metrics label it.
type healthState struct {
	service, backend string
	healthy          bool
}

func newAgentCollector(health func() []healthState, attach func() map[string]string) *agentCollector {
	return &agentCollector{
		health: health,
		attach: attach,
		bhealth: prometheus.NewDesc("weir_backend_health",
			"Health-check state of each probed backend: 1 healthy, 0 quarantined.", []string{"service", "backend"}, nil),
		attached: prometheus.NewDesc("weir_attached",
			"1 when the program of a hook is attached to the device (hook xdp) or cgroup (hook sock), 0 when it is not (see /healthz for why).",
			[]string{"hook", "device"}, nil),
	}
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bhealth
	ch <- c.attached
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[[2]string]bool{}
	for _, h := range c.health() {
		// A backend listed twice in one service is probed once.
		if k := [2]string{h.service, h.backend}; !seen[k] {
			seen[k] = true
			ch <- prometheus.MustNewConstMetric(c.bhealth, prometheus.GaugeValue, boolGauge(h.healthy), h.service, h.backend)
		}
	}
	for key, e := range c.attach() {
		hook, dev, _ := strings.Cut(key, "/")
		ch <- prometheus.MustNewConstMetric(c.attached, prometheus.GaugeValue, boolGauge(e == ""), hook, dev)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serviceLabel names a service as the datapath's metrics do
// ("namespace/name:port", or the edge name), so the health of a backend
// joins its traffic counters.
func serviceLabel(n lb.ServiceName) string {
	s := n.Name
	if n.Namespace != "" {
		s = n.Namespace + "/" + s
	}
	if n.Port != "" {
		s += ":" + n.Port
	}
	return s
}

// healthStates reads the health checker, if the agent runs one.
func (a *agent) healthStates() []healthState {
	if a.health == nil {
		return nil
	}
	var out []healthState
	for _, st := range a.health.Status() {
		out = append(out, healthState{service: serviceLabel(st.Service), backend: st.Backend.String(), healthy: st.Healthy})
	}
	return out
}

// attachState is every hook the agent attached: "" when it is attached,
// else why not. Hooks that attached are checked again (linkCheck), so a
// device removed since, or a link detached behind the agent's back,
// shows up here and in /healthz.
func (s *agentStatus) attachState() map[string]string {
	s.mu.Lock()
	out := maps.Clone(s.attach)
	check := s.linkCheck
	s.mu.Unlock()
	if check == nil {
		return out
	}
	for hook, e := range out {
		if e != "" {
			continue
		}
		if err := check(hook); err != nil {
			out[hook] = err.Error()
		}
	}
	return out
}

// checkLink checks that a hook's pinned link is still attached. Only
// XDP links are checked: their device can go away under them.
func (a *agent) checkLink(hook string) error {
	dev, ok := strings.CutPrefix(hook, "xdp/")
	if !ok {
		return nil
	}
	return checkXDPLink(xdp.LinkPin(a.opts.bpfRoot, dev), dev)
}

// checkXDPLink reports why the XDP link pinned at pin no longer runs on
// dev, or nil when it does.
func checkXDPLink(pin, dev string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("its pinned link %s is gone (removed by `weir cleanup`?): the program runs only until the agent exits; restart the agent to attach again", pin)
	}
	if err != nil {
		return fmt.Errorf("open its pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("read its link %s: %w", pin, err)
	}
	if x := info.XDP(); x == nil || x.Ifindex == 0 {
		return fmt.Errorf("device %s was removed, which detached the program; restart the agent once the device is back", dev)
	}
	return nil
}

// registerAgentMetrics registers the agent's collectors and returns the
// one of the BPF maps, whose per-backend series metricsHandler writes.
func registerAgentMetrics(reg *prometheus.Registry, a *agent) *mapCollector {
	maps := newMapCollector(a.maps)
	reg.MustRegister(a.status.metrics.collectors()...)
	reg.MustRegister(maps)
	reg.MustRegister(newAgentCollector(a.healthStates, a.status.attachState))
	return maps
}
