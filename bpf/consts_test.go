package bpf

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
)

// TestConstsMatchHeaders checks consts.go, and the lb constants the
// Datapath stores unconverted, against the headers.
func TestConstsMatchHeaders(t *testing.T) {
	defs := mustHeaderDefines(t, "include/consts.h")
	for name, v := range mustHeaderDefines(t, "include/types.h") {
		defs[name] = v
	}
	for name, got := range map[string]uint64{
		"WEIR_NAME_LEN":            NameLen,
		"WEIR_PORT_NAME_LEN":       PortNameLen,
		"WEIR_SCOPE_EXTERNAL":      ScopeExternal,
		"WEIR_SCOPE_INTERNAL":      ScopeInternal,
		"WEIR_MODE_DSR":            ModeDSR,
		"WEIR_MODE_SNAT":           ModeSNAT,
		"WEIR_MODE_HYBRID":         ModeHybrid,
		"WEIR_SVC_SOURCE_RANGES":   ServiceFlagSourceRanges,
		"WEIR_SVC_AFFINITY":        ServiceFlagAffinity,
		"WEIR_SVC_LOCAL_ONLY":      ServiceFlagLocalOnly,
		"WEIR_BACKEND_ACTIVE":      BackendStateActive,
		"WEIR_BACKEND_TERMINATING": BackendStateTerminating,
		"WEIR_BACKEND_QUARANTINED": BackendStateQuarantined,
		"WEIR_BACKEND_WORD_STATE":  wordState,
		"WEIR_EVENT_DROP":          EventDrop,
		"WEIR_EVENT_NEW_FLOW":      EventNewFlow,
	} {
		want, ok := defs[name]
		if !ok {
			t.Errorf("%s is not defined in the headers any more", name)
		} else if got != want {
			t.Errorf("%s = %d in C, %d in consts.go", name, want, got)
		}
	}
	for what, pair := range map[string][2]uint64{
		"lb.ScopeExternal":      {uint64(lb.ScopeExternal), ScopeExternal},
		"lb.ScopeInternal":      {uint64(lb.ScopeInternal), ScopeInternal},
		"lb.ModeDSR":            {uint64(lb.ModeDSR), ModeDSR},
		"lb.ModeSNAT":           {uint64(lb.ModeSNAT), ModeSNAT},
		"lb.ModeHybrid":         {uint64(lb.ModeHybrid), ModeHybrid},
		"lb.FlagSourceRanges":   {uint64(lb.FlagSourceRanges), ServiceFlagSourceRanges},
		"lb.FlagAffinity":       {uint64(lb.FlagAffinity), ServiceFlagAffinity},
		"lb.FlagLocalOnly":      {uint64(lb.FlagLocalOnly), ServiceFlagLocalOnly},
		"lb.BackendActive":      {uint64(lb.BackendActive), BackendStateActive},
		"lb.BackendTerminating": {uint64(lb.BackendTerminating), BackendStateTerminating},
		"lb.BackendQuarantined": {uint64(lb.BackendQuarantined), BackendStateQuarantined},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s = %d, but the datapath's value is %d: convert it in convert.go or fix lb", what, pair[0], pair[1])
		}
	}
}

var defineRe = regexp.MustCompile(`^#define\s+(WEIR_\w+)\s+(.+?)\s*(/\*.*)?$`)
var shiftRe = regexp.MustCompile(`^\(?\s*(\d+)\s*<<\s*(\d+)\s*\)?$`)

// mustHeaderDefines returns the WEIR_ defines of a header whose value is a
// number or (a << b).
func mustHeaderDefines(tb testing.TB, path string) map[string]uint64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	defs := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := defineRe.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		if v, err := strconv.ParseUint(m[2], 0, 64); err == nil {
			defs[m[1]] = v
		} else if s := shiftRe.FindStringSubmatch(m[2]); s != nil {
			a, _ := strconv.ParseUint(s[1], 10, 64)
			b, _ := strconv.ParseUint(s[2], 10, 64)
			defs[m[1]] = a << b
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	if len(defs) == 0 {
		tb.Fatalf("no WEIR_ defines found in %s", path)
	}
	return defs
}
