package xdpbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// floorPrograms are the floor programs in floor/ (docs/BENCHMARKS.md,
// "The floor"): each object's file name and program.
var floorPrograms = [][2]string{
	{"floor_array", "floor_array"},
	{"floor_lookup", "floor_lookup"},
	{"floor_encap", "floor_encap"},
}

// TestFloorPrograms builds the floor programs as `make bench-floor` does
// and runs each through the harness as another object: they must keep
// compiling, and answer every packet with XDP_TX, or the floor they
// measure means nothing.
func TestFloorPrograms(t *testing.T) {
	clang := os.Getenv("CLANG")
	if clang == "" {
		clang = "clang-19"
	}
	if _, err := exec.LookPath(clang); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (make deps installs it)", clang)
		}
		t.Skipf("%s not found", clang)
	}
	dir := t.TempDir()
	for _, p := range floorPrograms {
		obj := filepath.Join(dir, p[0]+".o")
		out, err := exec.Command(clang, "-O2", "-g", "-Wall", "-Werror", "-mcpu=v3", "-target", "bpf",
			"-I/usr/include/x86_64-linux-gnu", "-c", filepath.Join("floor", p[0]+".c"), "-o", obj).CombinedOutput()
		if err != nil {
			t.Fatalf("build %s: %v\n%s", p[0], err, out)
		}
		rs := runSmall(t, Options{Object: obj, Program: p[1], Services: []int{1},
			Scenarios: []string{ScenarioNoop, ScenarioEstablished, ScenarioNewFlow}, IPs: []int{4}, Protos: []string{"udp"},
			Flows: []int{16}, Packets: 20000, Runs: 1})
		if len(rs) != 3 {
			t.Fatalf("%s: %d results, want 3", p[0], len(rs))
		}
		for _, r := range rs[1:] {
			if r.Verdicts["tx"] != sampleSize {
				t.Errorf("%s %s: verdicts %v, want XDP_TX for all %d", p[0], r.Scenario, r.Verdicts, sampleSize)
			}
		}
	}
}
