package bpf

import (
	"strings"
	"testing"
)

// TestReasonsMatchHeader keeps reasons.go in step with consts.h: every
// WEIR_REASON_ define has a Go reason with the same value, named after it.
func TestReasonsMatchHeader(t *testing.T) {
	defs := mustHeaderDefines(t, "include/consts.h")
	goReasons := map[string]Reason{}
	for _, r := range Reasons() {
		goReasons["WEIR_REASON_"+strings.ToUpper(r.String())] = r
	}
	seen := 0
	for name, v := range defs {
		if !strings.HasPrefix(name, "WEIR_REASON_") || name == "WEIR_REASON_MAX" {
			continue
		}
		seen++
		r, ok := goReasons[name]
		if !ok {
			t.Errorf("%s = %d has no Go reason in reasons.go", name, v)
			continue
		}
		if uint64(r) != v {
			t.Errorf("%s = %d in C, %d (%s) in Go", name, v, r, r)
		}
	}
	if seen != len(goReasons) {
		t.Errorf("consts.h defines %d reasons, reasons.go %d", seen, len(goReasons))
	}
	if v := defs["WEIR_REASON_MAX"]; uint64(ReasonMax) != v {
		t.Errorf("WEIR_REASON_MAX = %d in C, ReasonMax = %d", v, ReasonMax)
	}
	if got := ReasonName(200); got != "unknown_200" {
		t.Errorf("ReasonName(200) = %q", got)
	}
}
