package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// syncMetrics time the reconciler's syncs, under Weir's names and under
// kube-proxy's, so existing dashboards and alerts keep working.
type syncMetrics struct {
	duration, kpDuration prometheus.Histogram
	last, kpLast         prometheus.Gauge
	errors               prometheus.Counter
}

func newSyncMetrics() *syncMetrics {
	buckets := prometheus.ExponentialBuckets(0.0001, 2, 18)
	return &syncMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weir_sync_duration_seconds", Help: "Time to apply one sync of desired state to the BPF maps.", Buckets: buckets}),
		kpDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_duration_seconds", Help: "kube-proxy compatible: sync duration.", Buckets: buckets}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_sync_last_timestamp_seconds", Help: "Unix time of the last successful sync."}),
		kpLast: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_last_timestamp_seconds", Help: "kube-proxy compatible: last successful sync."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_sync_errors_total", Help: "Syncs that failed (they are retried)."}),
	}
}

func (m *syncMetrics) observe(d time.Duration, err error) {
	if err != nil {
		m.errors.Inc()
		return
	}
	m.duration.Observe(d.Seconds())
	m.kpDuration.Observe(d.Seconds())
	now := float64(time.Now().UnixNano()) / 1e9
	m.last.Set(now)
	m.kpLast.Set(now)
}

func registerAgentMetrics(reg *prometheus.Registry, a *agent) {
	reg.MustRegister(a.status.metrics.duration, a.status.metrics.kpDuration, a.status.metrics.last,
		a.status.metrics.kpLast, a.status.metrics.errors)
	reg.MustRegister(newMapCollector(a.maps))
}
