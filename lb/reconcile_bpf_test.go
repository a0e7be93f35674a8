package lb_test

import (
	"maps"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// bpfDatapath opens fresh pinned maps in a temporary bpffs directory,
// removed with the test. The service maps have their default sizes; the
// preallocated connection-tracking maps, which the reconciler never
// touches, are kept small.
func bpfDatapath(tb testing.TB) *bpf.Datapath {
	tb.Helper()
	root := testutil.BPFRoot(tb)
	m, err := bpf.OpenMaps(root, bpf.MapSizes{CT: 1024, Affinity: 1024, SNAT: 1024, SockRevNat: 1024})
	if err != nil {
		tb.Fatalf("open maps under %s: %v", root, err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	return bpf.NewDatapath(m)
}

// emptyBPFDatapath returns dp after deleting everything a previous
// iteration synced into it.
func emptyBPFDatapath(tb testing.TB, dp *bpf.Datapath) *bpf.Datapath {
	tb.Helper()
	r := newReconciler(tb, dp)
	r.Replace(nil)
	mustSync(tb, r)
	return dp
}

func benchBPF(b *testing.B) {
	testutil.RequirePrivileged(b)
	b.Run("full/services=10000/backends=10", func(b *testing.B) {
		dp := bpfDatapath(b)
		benchFull(b, func(tb testing.TB) lb.Datapath { return emptyBPFDatapath(tb, dp) }, 10000, 10)
		emptyBPFDatapath(b, dp)
	})
	for _, n := range []int{1000, 10000} {
		b.Run(benchName("change", n), func(b *testing.B) {
			dp := bpfDatapath(b)
			benchChange(b, dp, n)
			emptyBPFDatapath(b, dp)
		})
	}
}

// TestGoldenBPF syncs every golden case into the real maps and into a
// fake side by side, and expects the maps to read back exactly as the
// fake holds them (Maglev slots included), the golden text to match, a
// restart to write nothing, and deleting everything to empty the maps.
func TestGoldenBPF(t *testing.T) {
	for _, path := range goldenFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			_, steps := loadGolden(t, path)
			real := bpfDatapath(t)
			fake := lbtest.NewFake()
			r, rf := newReconciler(t, real), newReconciler(t, fake)
			for _, st := range steps {
				r.Replace(st.services)
				rf.Replace(st.services)
				mustSync(t, r)
				mustSync(t, rf)
				got := dumpOf(t, real)
				want, _ := fake.Dump()
				if !reflect.DeepEqual(normalizeState(got), normalizeState(want)) {
					t.Errorf("after %s the real maps differ from the fake:\n--- real\n%s--- fake\n%s", st.name, lbtest.Format(got), fake)
				}
				if text := lbtest.Format(got); text != string(st.golden.data) {
					t.Errorf("after %s the real maps differ from %s:\n--- got\n%s--- want\n%s", st.name, st.golden.name, text, st.golden.data)
				}
				if err := lbtest.CheckState(got); err != nil {
					t.Errorf("after %s the real maps are inconsistent: %v", st.name, err)
				}

				counter := lbtest.NewFaulty(real) // no rules: it only counts
				r = newReconciler(t, counter)
				r.Replace(st.services)
				if res := mustSync(t, r); res.Writes != 0 || counter.Calls() != 1 {
					t.Errorf("after %s a restart over the real maps made %d calls besides Dump (%d writes)", st.name, counter.Calls()-1, res.Writes)
				}
			}
			r.Replace(nil)
			mustSync(t, r)
			if text := lbtest.Format(dumpOf(t, real)); text != "" {
				t.Errorf("after deleting every service the real maps still hold:\n%s", text)
			}
		})
	}
}

func dumpOf(t *testing.T, dp lb.Datapath) *lb.DatapathState {
	t.Helper()
	st, err := dp.Dump()
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return st
}

// normalizeState sorts what has no order in the maps.
func normalizeState(s *lb.DatapathState) *lb.DatapathState {
	c := lbtest.CloneState(s)
	for _, id := range slices.Collect(maps.Keys(c.SourceRanges)) {
		slices.SortFunc(c.SourceRanges[id], func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	}
	return c
}
