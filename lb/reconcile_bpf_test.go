package lb_test

import (
	"fmt"
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
	_, dp := bpfMapsAndDatapath(tb)
	return dp
}

// bpfMapsAndDatapath is bpfDatapath that also returns the maps.
func bpfMapsAndDatapath(tb testing.TB) (*bpf.Maps, *bpf.Datapath) {
	tb.Helper()
	root := testutil.BPFRoot(tb)
	m, err := bpf.OpenMaps(root, bpf.MapSizes{CT: 1024, Affinity: 1024, SNAT: 1024, SockRevNat: 1024})
	if err != nil {
		tb.Fatalf("open maps under %s: %v", root, err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	return m, bpf.NewDatapath(m)
}

// tableRuns returns where in the slab every table is: its index word
// (offset and size).
func tableRuns(tb testing.TB, m *bpf.Maps) map[lb.TableID]uint64 {
	tb.Helper()
	out := map[lb.TableID]uint64{}
	var key uint32
	var word uint64
	it := m.MaglevIndex.Iterate()
	for it.Next(&key, &word) {
		if word != 0 {
			out[lb.TableID(key)] = word
		}
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestBPFChangeRewritesInPlace: a backend change rewrites the spare table
// in place (the tables keep their runs in the slab: no index write) and
// the key switches to it; a new table size needs a new run for the
// generation written.
func TestBPFChangeRewritesInPlace(t *testing.T) {
	m, dp := bpfMapsAndDatapath(t)
	r := newReconciler(t, dp)
	s := genService(1, 4)
	r.Upsert(s)
	mustSync(t, r)
	inner := tableRuns(t, m)
	if len(inner) != 2 {
		t.Fatalf("a new service has %d tables, want 2: %v", len(inner), inner)
	}
	key := lb.ServiceKey{Addr: s.Frontends[0].Addr, Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	gen := dumpOf(t, dp).Services[key].TableGen
	for i := range 3 {
		s.Backends[1].State = []lb.BackendState{lb.BackendTerminating, lb.BackendActive}[i%2]
		r.Upsert(s)
		mustSync(t, r)
		if got := tableRuns(t, m); !maps.Equal(got, inner) {
			t.Errorf("change %d moved tables: %v, before %v", i, got, inner)
		}
		st := dumpOf(t, dp)
		e := st.Services[key]
		if e.TableGen == gen {
			t.Errorf("change %d: the key stayed on generation %d", i, gen)
		}
		gen = e.TableGen
		if err := lbtest.CheckState(st); err != nil {
			t.Errorf("change %d: %v", i, err)
		}
		if n := countSlots(st.Maglev[e.ServiceID.Table(gen)], st, s.Backends[1].Addr); (n == 0) != (i%2 == 0) {
			t.Errorf("change %d: the live table gives backend %s %d slots", i, s.Backends[1].Addr, n)
		}
	}

	// A new size needs a new run in the generation written; the next
	// change goes into the other one, still of the old size, so it needs
	// one too; from then on changes are in place again.
	s.Frontends[0].Scope, s.Frontends[0].Kind, s.MaglevTableSize = lb.ScopeExternal, lb.KindExternalIP, 251
	r.Upsert(s)
	mustSync(t, r)
	ext := lb.ServiceKey{Addr: s.Frontends[0].Addr, Port: 80, Protocol: lb.TCP, Scope: lb.ScopeExternal}
	for i, size := range []uint32{1021, 1021, 1021, 1021} {
		s.MaglevTableSize = size
		s.Backends[1].State = []lb.BackendState{lb.BackendActive, lb.BackendTerminating}[i%2]
		before := tableRuns(t, m)
		r.Upsert(s)
		mustSync(t, r)
		st := dumpOf(t, dp)
		if err := lbtest.CheckState(st); err != nil {
			t.Fatalf("resize step %d: %v", i, err)
		}
		e := st.Services[ext]
		if e.TableSize != size || len(st.Maglev[e.ServiceID.Table(e.TableGen)]) != int(size) {
			t.Fatalf("resize step %d: key %+v, table of %d slots", i, e, len(st.Maglev[e.ServiceID.Table(e.TableGen)]))
		}
		id := e.ServiceID.Table(e.TableGen)
		if swapped := tableRuns(t, m)[id] != before[id]; swapped != (i < 2) {
			t.Errorf("resize step %d: table %s swapped=%v, want %v", i, id, swapped, i < 2)
		}
	}
}

// countSlots counts the slots of table that hold the backend at addr.
func countSlots(table []lb.BackendID, st *lb.DatapathState, addr netip.Addr) int {
	n := 0
	for _, id := range table {
		if st.Backends[id].Addr == addr {
			n++
		}
	}
	return n
}

// emptyBPFDatapath returns dp after deleting everything a previous
// iteration synced into it.
func emptyBPFDatapath(tb testing.TB, dp *bpf.Datapath) *bpf.Datapath {
	tb.Helper()
	r := newReconciler(tb, dp)
	r.Replace(nil)
	settle(tb, r) // retired backends go in the Sync after
	return dp
}

func benchBPF(b *testing.B) {
	testutil.RequirePrivileged(b)
	// backends=1 is the shape of the kube-proxy comparison's services.
	for _, backends := range []int{1, 10} {
		b.Run(fmt.Sprintf("full/services=10000/backends=%d", backends), func(b *testing.B) {
			dp := bpfDatapath(b)
			benchFull(b, func(tb testing.TB) lb.Datapath { return emptyBPFDatapath(tb, dp) }, 10000, backends)
			emptyBPFDatapath(b, dp)
		})
	}
	for _, n := range []int{1000, 10000} {
		b.Run(benchName("change", n), func(b *testing.B) {
			dp := bpfDatapath(b)
			benchChange(b, dp, n)
			emptyBPFDatapath(b, dp)
		})
	}
	b.Run(benchName("change-latency", 10000), func(b *testing.B) {
		dp := bpfDatapath(b)
		benchChangeLatency(b, dp, 10000, 200)
		emptyBPFDatapath(b, dp)
	})
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
				syncAll(t, r)
				syncAll(t, rf)
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
			syncAll(t, r)
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
