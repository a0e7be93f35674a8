package xdp

import (
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
)

// testSizes keeps the test maps small: creating them is most of a test's
// setup time.
var testSizes = bpf.MapSizes{
	Services: 1024, Frontends: 1024, Backends: 1024, SourceRanges: 1024,
	CT: 65536, Affinity: 1024, SNAT: 65536, SockRevNat: 1024,
}

// mustMaps opens fresh shared maps under a temporary bpffs root.
func mustMaps(tb testing.TB) *bpf.Maps {
	tb.Helper()
	m, err := bpf.OpenMaps(testutil.BPFRoot(tb), testSizes)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// mustLoad loads the program; cfg.Maps defaults to fresh maps.
func mustLoad(tb testing.TB, cfg Config) *Program {
	tb.Helper()
	if cfg.Maps == nil {
		cfg.Maps = mustMaps(tb)
	}
	p, err := Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// TestLoad loads the program with and without SNAT addresses (the
// verifier prunes what the constants rule out, so both are checked).
func TestLoad(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no SNAT": {},
		"SNAT":    {SNATv4: nodeV4, SNATv6: nodeV6},
	} {
		p := mustLoad(t, cfg)
		info, err := p.Entry().Info()
		if err != nil {
			t.Fatal(err)
		}
		if n, ok := info.VerifiedInstructions(); ok {
			t.Logf("%s: weir_xdp verified %d instructions", name, n)
		}
	}
}
