package lb_test

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// twoKeys is a ClusterIP with two addresses: one view, two keys.
func twoKeys(backends ...string) *lb.Service {
	s := clusterIP("default/m:http", "10.96.0.1", backends...)
	f := s.Frontends[0]
	f.Addr = netip.MustParseAddr("10.96.0.2")
	s.Frontends = append(s.Frontends, f)
	return s
}

var (
	firstKey  = lb.ServiceKey{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	secondKey = lb.ServiceKey{Addr: netip.MustParseAddr("10.96.0.2"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
)

// liveTable returns the table a key uses and its generation.
func liveTable(t *testing.T, dp lb.Datapath, k lb.ServiceKey) ([]lb.BackendID, uint8) {
	t.Helper()
	st := dumpOf(t, dp)
	e, ok := st.Services[k]
	if !ok {
		t.Fatalf("key %v missing", k)
	}
	return st.Maglev[e.ServiceID.Table(e.TableGen)], e.TableGen
}

// backendsIn returns the distinct backend addresses of a table.
func backendsIn(t *testing.T, dp lb.Datapath, table []lb.BackendID) map[netip.Addr]bool {
	t.Helper()
	st := dumpOf(t, dp)
	out := map[netip.Addr]bool{}
	for _, id := range table {
		out[st.Backends[id].Addr] = true
	}
	return out
}

// A change writes one table, into the generation no key uses, and the
// keys switch to it: the generations alternate, and no table a key uses
// is ever rewritten in place.
func TestTableGenerationsAlternate(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	s := clusterIP("default/g:http", "10.96.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")
	r.Upsert(s)
	mustSync(t, r)
	if st := dumpOf(t, fake); len(st.Maglev) != 2 {
		t.Fatalf("a new view has %d tables, want both generations:\n%s", len(st.Maglev), fake)
	}
	key := lb.ServiceKey{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	_, gen := liveTable(t, fake, key)
	for i := range 4 {
		s.Backends[0].State = []lb.BackendState{lb.BackendTerminating, lb.BackendActive}[i%2]
		fake.ResetCounts()
		r.Upsert(s)
		mustSync(t, r)
		if got := fake.CallCounts(); got[lbtest.UpsertMaglev] != 1 || got[lbtest.UpsertMaglevs] != 0 {
			t.Errorf("change %d: calls %v, want one table write", i, got)
		}
		table, next := liveTable(t, fake, key)
		if next == gen {
			t.Errorf("change %d: the key stayed on generation %d", i, gen)
		}
		gen = next
		if got := backendsIn(t, fake, table); got[netip.MustParseAddr("10.0.0.1")] != (i%2 == 1) || len(got) != 3-(1-i%2) {
			t.Errorf("change %d: the live table holds %v", i, got)
		}
	}
	checkFake(t, fake)
}

// A switch that fails halfway leaves the view's keys on both generations.
// A change then first moves the keys still on the old generation to the
// live one, so that the new table again goes into a generation no key
// uses; while that move fails, no table is written at all.
func TestTableSwitchFailedHalfway(t *testing.T) {
	fake, faulty, r := faultyReconciler(t)
	r.Upsert(twoKeys("10.0.0.1", "10.0.0.2"))
	mustSync(t, r)

	faulty.FailWhen(func(c lbtest.Call) bool { return c.Method == lbtest.UpsertService && c.Args[0] == secondKey })
	r.Upsert(twoKeys("10.0.0.1", "10.0.0.2", "10.0.0.3"))
	if _, err := r.Sync(); err == nil {
		t.Fatal("Sync succeeded with the second key's writes failing")
	}
	_, g1 := liveTable(t, fake, firstKey)
	_, g2 := liveTable(t, fake, secondKey)
	if g1 == g2 {
		t.Fatalf("want the keys on different generations after the failed switch, both are on %d", g1)
	}

	// Another change while the second key still can't be written: the
	// move fails, and no table is touched.
	before := dumpOf(t, fake).Maglev
	fake.ResetCounts()
	r.Upsert(twoKeys("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))
	if _, err := r.Sync(); err == nil {
		t.Fatal("Sync succeeded with the second key's writes failing")
	}
	if n := fake.Calls(lbtest.UpsertMaglev) + fake.Calls(lbtest.UpsertMaglevs); n != 0 {
		t.Errorf("%d table writes while both generations are in use", n)
	}
	if after := dumpOf(t, fake).Maglev; !maps.EqualFunc(before, after, slices.Equal) {
		t.Error("a table changed while both generations were in use")
	}

	faulty.Clear()
	mustSync(t, r)
	table, g1 := liveTable(t, fake, firstKey)
	if _, g2 := liveTable(t, fake, secondKey); g1 != g2 {
		t.Errorf("after recovery the keys are on generations %d and %d", g1, g2)
	}
	if got := backendsIn(t, fake, table); len(got) != 4 {
		t.Errorf("after recovery the live table holds %v, want 4 backends", got)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// A restart over keys left on both generations (a crash halfway through a
// switch) takes the first key's generation as the live one and moves the
// other key to it.
func TestRestartAfterSwitchFailedHalfway(t *testing.T) {
	fake, faulty, r := faultyReconciler(t)
	r.Upsert(twoKeys("10.0.0.1", "10.0.0.2"))
	mustSync(t, r)
	faulty.FailWhen(func(c lbtest.Call) bool { return c.Method == lbtest.UpsertService && c.Args[0] == secondKey })
	want := twoKeys("10.0.0.1", "10.0.0.2", "10.0.0.3")
	r.Upsert(want)
	if _, err := r.Sync(); err == nil {
		t.Fatal("Sync succeeded with the second key's writes failing")
	}
	live, gen := liveTable(t, fake, firstKey)

	fake.ResetCounts()
	r = newReconciler(t, fake)
	r.Replace([]*lb.Service{want})
	mustSync(t, r)
	if got := fake.CallCounts(); got[lbtest.UpsertService] != 1 || fake.Writes() != 1 {
		t.Errorf("calls %v, want only the second key rewritten", got)
	}
	table, g2 := liveTable(t, fake, secondKey)
	if g2 != gen || !slices.Equal(table, live) {
		t.Errorf("the second key is on generation %d, want %d with the first key's table", g2, gen)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}
