package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.6e+09
kubeproxy_sync_proxy_rules_duration_seconds_sum 0.25
weir_service_changes_total 12
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds"); !ok || v != 1.7e9 {
		t.Errorf("the IPv4 series: %v %v", v, ok)
	}
	if v, ok := m.get("kubeproxy_sync_proxy_rules_duration_seconds_sum"); !ok || v != 0.25 {
		t.Errorf("an unlabelled series: %v %v", v, ok)
	}
	if _, ok := m.get("absent"); ok {
		t.Error("an absent series was found")
	}
}

func TestAddRatios(t *testing.T) {
	rs := []KubeProxyResult{
		{Proxy: "iptables", Services: 1000, NodePortPPS: 1e6, ChangeSeconds: 0.5},
		{Proxy: "nftables", Services: 1000, NodePortPPS: 2e6, ChangeSeconds: 0},
		{Proxy: "weir", Services: 1000, NodePortPPS: 4e6, ChangeSeconds: 0.01},
		{Proxy: "iptables", Services: 10000, NodePortPPS: 1e6},
	}
	addRatios(rs)
	w := rs[2].Ratios
	if w["iptables"]["nodeport_pps"] != 4 || w["nftables"]["nodeport_pps"] != 2 || w["iptables"]["change_seconds"] != 0.02 {
		t.Errorf("ratios: %v", w)
	}
	if _, ok := w["nftables"]["change_seconds"]; ok {
		t.Error("a ratio to a zero figure")
	}
	if rs[0].Ratios != nil || rs[3].Ratios != nil {
		t.Error("kube-proxy rows got ratios")
	}
	var buf bytes.Buffer
	if err := writeKubeProxyTable(&buf, rs); err != nil || !strings.Contains(buf.String(), "weir/iptables") {
		t.Errorf("table: %v\n%s", err, buf.String())
	}
}

func TestBenchKubeProxyFlags(t *testing.T) {
	var out, log bytes.Buffer
	for _, args := range [][]string{
		{"--proxies", "ipvs"}, {"--services", "0"}, {"--flows", "70000"}, {"--json", "--csv"},
	} {
		if err := benchKubeProxy(context.Background(), args, &out, &log); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestBenchTB checks the adapter the kube-proxy comparison runs the test
// helpers with: Fatal unwinds to an error, cleanups run last first, also
// after a failure.
func TestBenchTB(t *testing.T) {
	var order []int
	var log bytes.Buffer
	err := runTB(context.Background(), "x", &log, func(tb *benchTB) {
		tb.Cleanup(func() { order = append(order, 1) })
		tb.Cleanup(func() { order = append(order, 2) })
		dir := tb.TempDir()
		tb.Cleanup(func() {
			if dir == "" {
				order = append(order, -1)
			}
		})
		tb.Fatalf("stop %d", 7)
		order = append(order, 99) // never reached
	})
	if err == nil || !strings.Contains(err.Error(), "stop 7") {
		t.Errorf("err = %v", err)
	}
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("cleanup order %v, want [2 1]", order)
	}
	if err := runTB(context.Background(), "ok", &log, func(tb *benchTB) { tb.Logf("fine") }); err != nil {
		t.Errorf("a passing run: %v", err)
	}
	err = runTB(context.Background(), "skip", &log, func(tb *benchTB) { tb.Skip("no tool") })
	if err == nil {
		t.Error("a skip passed for success")
	}
	err = runTB(context.Background(), "errors", &log, func(tb *benchTB) {
		tb.Errorf("one")
		tb.Error("two")
	})
	if err == nil || !strings.Contains(err.Error(), "one") || !strings.Contains(err.Error(), "two") {
		t.Errorf("errors: %v", err)
	}
	// Other panics are not swallowed.
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("a panic was swallowed")
			}
		}()
		_ = runTB(context.Background(), "panic", &log, func(tb *benchTB) { panic(errors.New("boom")) })
	}()
}
