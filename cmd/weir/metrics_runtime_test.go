package main

import (
	"log/slog"
	"math"
	"runtime/debug"
	"testing"
)

// TestMemoryLimitFlag: --memory-limit sets the runtime's soft limit, 0
// turns it off, GOMEMLIMIT wins, and a negative value is refused.
func TestMemoryLimitFlag(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	log := slog.New(slog.DiscardHandler)
	noEnv := func(string) string { return "" }

	if err := (runtimeOptions{memoryLimit: 150 << 20}).apply(log, noEnv); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 150<<20 {
		t.Errorf("limit %d, want 150 MiB", got)
	}
	if err := (runtimeOptions{}).apply(log, noEnv); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("limit %d with --memory-limit 0, want none", got)
	}
	withEnv := func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}
	if err := (runtimeOptions{memoryLimit: 150 << 20}).apply(log, withEnv); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("limit %d: GOMEMLIMIT is set, so the flag must not override it", got)
	}
	if err := (runtimeOptions{memoryLimit: -1}).apply(log, noEnv); err == nil {
		t.Error("a negative --memory-limit was accepted")
	}
}

// TestSettleRuntime: after the first programming the GC target tightens,
// unless GOGC chose one.
func TestSettleRuntime(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	settleRuntime(func(string) string { return "" })
	if got := debug.SetGCPercent(100); got != steadyGCPercent {
		t.Errorf("GC percent %d after settling, want %d", got, steadyGCPercent)
	}
	settleRuntime(func(k string) string {
		if k == "GOGC" {
			return "100"
		}
		return ""
	})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent %d after settling with GOGC set, want it left at 100", got)
	}
}

func TestRelaxGCForFirstSync(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	restore := relaxGCForFirstSync(func(string) string { return "" })
	if got := debug.SetGCPercent(firstSyncGCPercent); got != firstSyncGCPercent {
		t.Errorf("GC percent %d during the first sync, want %d", got, firstSyncGCPercent)
	}
	restore()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent %d after the first sync, want the previous 100", got)
	}
	restore = relaxGCForFirstSync(func(k string) string {
		if k == "GOGC" {
			return "100"
		}
		return ""
	})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent %d with GOGC set, want it left at 100", got)
	}
	restore()
}
