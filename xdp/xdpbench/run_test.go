package xdpbench

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
)

// runSmall runs a small benchmark and fails the test on error.
func runSmall(t *testing.T, o Options) []Result {
	t.Helper()
	testutil.RequirePrivileged(t)
	var progress bytes.Buffer
	o.Progress = &progress
	rs, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	return rs
}

// TestRunTestRunSmoke runs two scenarios on one service and checks the
// JSON a script would read.
func TestRunTestRunSmoke(t *testing.T) {
	rs := runSmall(t, Options{Services: []int{1}, Scenarios: []string{ScenarioNoop, ScenarioEstablished},
		IPs: []int{4}, Protos: []string{"tcp"}, Flows: []int{16}, Packets: 20000, Runs: 1})
	var buf bytes.Buffer
	if err := WriteJSON(&buf, rs); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("the JSON output doesn't parse: %v\n%s", err, buf.String())
	}
	if len(got) != 2 {
		t.Fatalf("%d results, want 2:\n%s", len(got), buf.String())
	}
	for i, want := range []string{ScenarioNoop, ScenarioEstablished} {
		r := got[i]
		if r["scenario"] != want || r["mode"] != "test-run" || r["services"] != 1.0 || r["ip"] != 4.0 || r["proto"] != "tcp" {
			t.Errorf("result %d: %v", i, r)
		}
		if ns, _ := r["ns_per_packet"].(float64); ns <= 0 {
			t.Errorf("result %d: ns_per_packet %v", i, r["ns_per_packet"])
		}
		if ratio, _ := r["ratio"].(float64); ratio <= 0 {
			t.Errorf("result %d: ratio %v", i, r["ratio"])
		}
	}
}

// TestRunObject benchmarks an object file as another program: Weir's own
// committed object, which declares the shared maps, so the service
// scenarios run against it; its verdicts are reported, not checked.
func TestRunObject(t *testing.T) {
	rs := runSmall(t, Options{Object: "../weirxdp_bpfel.o", Program: "weir_xdp", Services: []int{1},
		Scenarios: []string{ScenarioEstablished, ScenarioSourceRangeDeny}, IPs: []int{4}, Protos: []string{"udp"},
		Flows: []int{16}, Packets: 20000, Runs: 1})
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2", len(rs))
	}
	if rs[0].Program != "weirxdp_bpfel.o:weir_xdp" || rs[0].Verdicts["tx"] != sampleSize || rs[1].Verdicts["drop"] != sampleSize {
		t.Errorf("results: %+v %+v", rs[0], rs[1])
	}
	if _, err := Run(context.Background(), Options{Object: "../weirxdp_bpfel.o", Program: "weir_xdp", Scenarios: []string{ScenarioPolicyStage}}); err == nil {
		t.Error("a stage scenario ran against another object")
	}
}
