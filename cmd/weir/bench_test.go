package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
)

// benchJSON runs a bench command with --json and decodes its output.
func benchJSON(t *testing.T, run func(context.Context, []string, *bytes.Buffer, *bytes.Buffer) error, args ...string) []map[string]any {
	t.Helper()
	testutil.RequirePrivileged(t)
	var out, log bytes.Buffer
	if err := run(context.Background(), append(args, "--json"), &out, &log); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, log.String())
	}
	var got []map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v: the output is not a JSON array: %v\n%s", args, err, out.String())
	}
	t.Logf("%v:\n%s", args, log.String())
	return got
}

func xdpCmd(ctx context.Context, args []string, out, log *bytes.Buffer) error {
	return benchXDP(ctx, args, out, log)
}

func controlPlaneCmd(ctx context.Context, args []string, out, log *bytes.Buffer) error {
	return benchControlPlane(ctx, args, out, log)
}

// TestBenchXDPSmoke is the example run, kept short.
func TestBenchXDPSmoke(t *testing.T) {
	got := benchJSON(t, xdpCmd, "--services", "1", "--scenarios", "noop,established", "--ip", "4", "--proto", "tcp",
		"--flows", "16", "--packets", "20000", "--runs", "1")
	if len(got) != 2 {
		t.Fatalf("%d results, want 2: %v", len(got), got)
	}
	for i, want := range []string{"noop", "established"} {
		r := got[i]
		if r["scenario"] != want || r["mode"] != "test-run" || r["services"] != 1.0 || r["ip"] != 4.0 || r["proto"] != "tcp" {
			t.Errorf("result %d: %v", i, r)
		}
		if v, _ := r["ns_per_packet"].(float64); v <= 0 {
			t.Errorf("result %d: ns_per_packet %v", i, r["ns_per_packet"])
		}
		if v, _ := r["ratio"].(float64); v <= 0 {
			t.Errorf("result %d: ratio %v", i, r["ratio"])
		}
	}
}

// TestBenchXDPLiveSmoke drives a few frames through the attached
// program with the live-frames generator.
func TestBenchXDPLiveSmoke(t *testing.T) {
	got := benchJSON(t, xdpCmd, "--mode", "live", "--services", "1", "--scenarios", "xdp-tx,established", "--ip", "4", "--proto", "udp",
		"--flows", "16", "--live-packets", "20000", "--runs", "1")
	if len(got) != 2 {
		t.Fatalf("%d results, want 2: %v", len(got), got)
	}
	for i, want := range []string{"xdp-tx", "established"} {
		r := got[i]
		if r["scenario"] != want || r["mode"] != "live" || r["baseline"] != "xdp-tx" {
			t.Errorf("result %d: %v", i, r)
		}
		if v, _ := r["pps"].(float64); v <= 0 {
			t.Errorf("result %d: pps %v", i, r["pps"])
		}
		if v, _ := r["ratio"].(float64); v <= 0 {
			t.Errorf("result %d: ratio %v", i, r["ratio"])
		}
	}
}

func TestBenchXDPFlags(t *testing.T) {
	var out, log bytes.Buffer
	if err := benchXDP(context.Background(), []string{"--json", "--csv"}, &out, &log); err == nil {
		t.Error("--json with --csv accepted")
	}
	if err := benchXDP(context.Background(), []string{"--mode", "fast"}, &out, &log); err == nil {
		t.Error("--mode fast accepted")
	}
	out.Reset()
	if err := benchXDP(context.Background(), []string{"--list-scenarios"}, &out, &log); err != nil || !bytes.Contains(out.Bytes(), []byte("source-range-deny")) {
		t.Errorf("--list-scenarios: %v\n%s", err, out.String())
	}
}

// TestBenchControlPlaneSmoke programs a few services into real maps.
func TestBenchControlPlaneSmoke(t *testing.T) {
	got := benchJSON(t, controlPlaneCmd, "--services", "50", "--backends", "3", "--changes", "6")
	if len(got) != 1 {
		t.Fatalf("%d results, want 1", len(got))
	}
	r := got[0]
	if r["services"] != 50.0 || r["backends"] != 3.0 {
		t.Errorf("result: %v", r)
	}
	for _, k := range []string{"full_program_seconds", "change_p50_seconds", "change_p99_seconds", "rss_bytes"} {
		if v, _ := r[k].(float64); v <= 0 {
			t.Errorf("%s = %v, want > 0", k, r[k])
		}
	}
}
