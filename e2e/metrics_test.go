package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/testutil"
)

// TestMetricsExactCounts sends an exact number of datagrams through a
// UDP DSR service (one datagram is one packet through the LB, counted
// once) and from outside a service's source ranges, and checks that the
// scraped counters, `weir inspect stats` and `weir inspect conntrack`
// match exactly.
func TestMetricsExactCounts(t *testing.T) {
	l := newLab(t, 2)
	l.startBackendAgents("generic")
	l.startLB(obsConfig(l, ""), "generic")

	const n, m = 40, 15
	perBackend := l.sendUDP(dnsVIP, portRange(obsClientPortMin, n), true)
	if len(perBackend) != 2 {
		t.Errorf("answers came from %v, want both backends", perBackend)
	}
	l.sendUDP(blockedVIP, portRange(obsClientPortMin+n, m), false)

	// Every dns datagram was counted before its answer came back; the
	// blocked ones have no answer to wait for.
	eventually(t, 10*time.Second, func() error {
		if got := l.scrape()[`weir_drops_total{reason="source_range"}`]; got < m {
			return fmt.Errorf("%v source_range drops so far", got)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // anything extra would show now
	s := l.scrape()
	wantMetric(t, s, `weir_service_packets_total{scope="external",service="dns"}`, n)
	wantMetric(t, s, `weir_service_bytes_total{scope="external",service="dns"}`, n*udpFrameBytesV4)
	for i := range l.backends {
		name := fmt.Sprintf("b%d", i+1)
		series := fmt.Sprintf(`weir_backend_packets_total{backend="%s:5353",scope="external",service="dns"}`, backendAddr(i, false))
		wantMetric(t, s, series, float64(perBackend[name]))
	}
	wantMetric(t, s, `weir_drops_total{reason="source_range"}`, m)
	wantMetric(t, s, `weir_drop_bytes_total{reason="source_range"}`, m*udpFrameBytesV4)
	wantMetric(t, s, `weir_drops_total{reason="no_backend"}`, 0)
	// Source ranges are checked before anything is counted for the service.
	wantMetric(t, s, `weir_service_packets_total{scope="external",service="blocked"}`, 0)
	wantMetric(t, s, `weir_backend_packets_total{backend="10.202.0.11:5353",scope="external",service="blocked"}`, 0)
	// One conntrack entry per datagram: each came from its own port.
	wantMetric(t, s, `weir_conntrack_entries`, n)
	wantMetric(t, s, `weir_conntrack_service_entries{service="dns"}`, n)
	wantMetric(t, s, `weir_map_entries{map="weir_ct"}`, n)
	wantMetric(t, s, `weir_map_capacity{map="weir_ct"}`, 524288)
	// Two services, each with its external key and the internal twin
	// the socket hooks would look up.
	wantMetric(t, s, `weir_map_entries{map="weir_services"}`, 4)
	wantMetric(t, s, `weir_attached{device="eth0",hook="xdp"}`, 1)
	wantMetric(t, s, `weir_sync_errors_total`, 0)
	for _, name := range []string{"kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_network_programming_duration_seconds_count",
		"weir_network_programming_duration_seconds_count"} {
		if s[name] < 1 {
			t.Errorf("%s = %v, want at least the first sync", name, s[name])
		}
	}
	if s["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("kubeproxy_sync_proxy_rules_last_timestamp_seconds = %v", s["kubeproxy_sync_proxy_rules_last_timestamp_seconds"])
	}
	for series := range s {
		if strings.HasPrefix(series, "weir_map_read_errors") {
			t.Errorf("%s", series)
		}
	}

	// inspect reads the same maps.
	var stats struct {
		Services []struct {
			Service string
			Packets uint64
		}
		Drops []struct {
			Reason  string
			Packets uint64
		}
	}
	must(t, json.Unmarshal([]byte(l.weir("inspect", "stats", "-o", "json", "--bpf-root", l.bpfRoot("lb"))), &stats))
	for _, sv := range stats.Services {
		if sv.Service == "dns" && sv.Packets != n {
			t.Errorf("inspect stats: dns %d packets, want %d", sv.Packets, n)
		}
	}
	for _, d := range stats.Drops {
		if d.Reason == "source_range" && d.Packets != m {
			t.Errorf("inspect stats: %d source_range drops, want %d", d.Packets, m)
		}
	}
	if got := strings.TrimSpace(l.weir("inspect", "conntrack", "--count", "--service", "dns", "--bpf-root", l.bpfRoot("lb"))); got != fmt.Sprint(n) {
		t.Errorf("inspect conntrack --count: %s, want %d", got, n)
	}
	b1 := backendAddr(0, false).String() + ":5353"
	var flushed struct{ Flushed int }
	must(t, json.Unmarshal([]byte(l.weir("inspect", "conntrack", "--flush", "--backend", b1, "-o", "json", "--bpf-root", l.bpfRoot("lb"))), &flushed))
	if flushed.Flushed != perBackend["b1"] {
		t.Errorf("flushed %d entries of b1, want %d", flushed.Flushed, perBackend["b1"])
	}
	var left []struct{ Backend string }
	must(t, json.Unmarshal([]byte(l.weir("inspect", "conntrack", "-o", "json", "--bpf-root", l.bpfRoot("lb"))), &left))
	if len(left) != n-perBackend["b1"] {
		t.Errorf("%d entries left after the flush, want %d", len(left), n-perBackend["b1"])
	}
	for _, e := range left {
		if e.Backend == b1 {
			t.Errorf("an entry of %s survived the flush", b1)
		}
	}
}

// TestMetricsAttachState: a device removed under the agent is reported
// by /healthz (which device, why), weir_attached and inspect stages.
func TestMetricsAttachState(t *testing.T) {
	l := newLab(t, 1)
	addVeth(t, l.lb, "obs0", "obs1")
	l.startLB(obsConfig(l, ""), "generic", "--devices", "obs0")
	wantMetric(t, l.scrape(), `weir_attached{device="obs0",hook="xdp"}`, 1)

	out, err := l.lb.Run("ip", "link", "del", "obs0")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	code, body, err := l.healthz(l.lb)
	must(t, err)
	if code != 503 || !strings.Contains(body, "xdp/obs0 not attached") || !strings.Contains(body, "device obs0 was removed") {
		t.Errorf("healthz after removing obs0: %d %s", code, body)
	}
	if strings.Contains(body, "xdp/eth0") {
		t.Errorf("healthz blames eth0: %s", body)
	}
	s := l.scrape()
	wantMetric(t, s, `weir_attached{device="obs0",hook="xdp"}`, 0)
	wantMetric(t, s, `weir_attached{device="eth0",hook="xdp"}`, 1)

	var stages []struct {
		Device   string
		Attached bool
		Stages   map[string]bool
	}
	must(t, json.Unmarshal([]byte(l.weir("inspect", "stages", "-o", "json", "--bpf-root", l.bpfRoot("lb"))), &stages))
	byDev := map[string]bool{}
	for _, st := range stages {
		byDev[st.Device] = st.Attached
		if st.Device == "eth0" && (!st.Stages["source-ranges"] || st.Stages["policy"] || st.Stages["overlay"]) {
			t.Errorf("eth0 stages %v, want source-ranges only", st.Stages)
		}
	}
	if len(stages) != 2 || !byDev["eth0"] || byDev["obs0"] {
		t.Errorf("inspect stages: %+v", stages)
	}
}

// TestDashboardMetricsExist: every metric the Grafana dashboard queries
// is in a live scrape of an agent that runs traffic and health checks.
func TestDashboardMetricsExist(t *testing.T) {
	testutil.RequirePrivileged(t)
	exprs := dashboardQueries(t)
	l := newLab(t, 2)
	l.startBackendAgents("generic")
	hc := "  - name: web\n    vip: 10.202.100.3\n    port: 80\n    protocol: TCP\n    health_check: {type: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}\n" +
		"    backends:\n      - {address: 10.202.0.11}\n      - {address: 10.202.0.12}\n"
	l.startLB(obsConfig(l, hc), "generic")
	l.sendUDP(dnsVIP, portRange(obsClientPortMin, 5), true)
	l.sendUDP(blockedVIP, portRange(obsClientPortMin+5, 2), false)

	var have map[string]bool
	eventually(t, 10*time.Second, func() error {
		have = metricNames(l.scrape())
		if !have["weir_backend_health"] {
			return fmt.Errorf("no health-check metrics yet")
		}
		return nil
	})
	checked := 0
	for _, e := range exprs {
		names := promqlMetrics(e)
		if len(names) == 0 {
			t.Errorf("found no metric in query %q", e)
		}
		for _, name := range names {
			checked++
			if !have[name] {
				t.Errorf("the dashboard queries %s, which the agent does not export (query %q)", name, e)
			}
		}
	}
	if !t.Failed() {
		t.Logf("%d metric references in %d queries, all exported", checked, len(exprs))
	}
}

// TestDashboardQueryParsing pins what promqlMetrics takes for a metric.
func TestDashboardQueryParsing(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (service, scope) (rate(weir_service_packets_total{instance=~"$instance"}[$__rate_interval]))`: "weir_service_packets_total",
		`histogram_quantile(0.99, sum by (le) (rate(weir_sync_duration_seconds_bucket[5m])))`:                 "weir_sync_duration_seconds_bucket",
		`weir_map_entries / on (instance, map) weir_map_capacity`:                                             "weir_map_entries weir_map_capacity",
		`count(weir_attached{x="a b"} == 0) or vector(0)`:                                                     "weir_attached",
		`time() - weir_sync_last_timestamp_seconds{instance=~"${instance}"} > 1e3`:                            "weir_sync_last_timestamp_seconds",
	} {
		if got := strings.Join(promqlMetrics(expr), " "); got != want {
			t.Errorf("%s: %q, want %q", expr, got, want)
		}
	}
	for q, want := range map[string]string{
		`label_values(weir_map_capacity, instance)`:         "weir_map_capacity",
		`label_values(weir_attached{hook="xdp"}, device)`:   `weir_attached{hook="xdp"}`,
		`label_values(instance)`:                            "",
		`query_result(topk(5, weir_service_packets_total))`: `query_result(topk(5, weir_service_packets_total))`,
	} {
		if got := variableExpr(q); got != want {
			t.Errorf("variable query %s: %q, want %q", q, got, want)
		}
	}
}
