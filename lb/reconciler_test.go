package lb_test

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

func clusterIP(name string, vip string, backends ...string) *lb.Service {
	s := &lb.Service{
		Name: parseName(name),
		Frontends: []lb.Frontend{{
			Addr: netip.MustParseAddr(vip), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal, Kind: lb.KindClusterIP,
		}},
	}
	for _, b := range backends {
		s.Backends = append(s.Backends, lb.Backend{Addr: netip.MustParseAddr(b), Port: 8080, Weight: 1})
	}
	return s
}

func withExternal(s *lb.Service, vip string) *lb.Service {
	s.Frontends = append(s.Frontends, lb.Frontend{
		Addr: netip.MustParseAddr(vip), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindLoadBalancer,
	})
	s.MaglevTableSize = 251
	return s
}

func TestSyncAppliesOnlyChangedServices(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	var all []*lb.Service
	for i := range 50 {
		all = append(all, genService(i, 3))
	}
	r.Replace(all)
	res := mustSync(t, r)
	if len(res.Updated) != 50 {
		t.Fatalf("first Sync updated %d services, want 50", len(res.Updated))
	}

	// Replace with an equal set (fresh copies): nothing is marked.
	var again []*lb.Service
	for i := range 50 {
		again = append(again, genService(i, 3))
	}
	again[7].Backends = again[7].Backends[:2]
	fake.ResetCounts()
	r.Replace(again)
	res = syncAll(t, r)
	if !slices.Equal(res.Updated, []lb.ServiceName{again[7].Name}) {
		t.Errorf("Updated = %v, want only %s", res.Updated, again[7].Name)
	}
	// One table rewrite, one key (backend count), one backend delete.
	if got := fake.CallCounts(); got[lbtest.UpsertMaglev] != 1 || got[lbtest.UpsertService] != 1 || got[lbtest.DeleteBackend] != 1 || fake.Writes() != 3 {
		t.Errorf("calls = %v, want one table, one key and one backend delete", got)
	}
	third := genService(7, 3).Backends[2].AddrPort()
	if len(res.RemovedBackends) != 1 || res.RemovedBackends[0].Addr != third || res.RemovedBackends[0].Service != again[7].Name {
		t.Errorf("RemovedBackends = %+v, want the third backend of %s", res.RemovedBackends, again[7].Name)
	}
	checkFake(t, fake)
}

func TestRemovedBackendsAndDeleted(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
	mustSync(t, r)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	res := syncAll(t, r)
	want := netip.MustParseAddrPort("10.0.0.2:8080")
	if len(res.RemovedBackends) != 1 || res.RemovedBackends[0].Addr != want || res.RemovedBackends[0].BackendID == 0 {
		t.Errorf("RemovedBackends = %+v, want %s with its ID", res.RemovedBackends, want)
	}
	r.Delete(parseName("default/a:http"))
	res = syncAll(t, r)
	if !slices.Equal(res.Deleted, []lb.ServiceName{parseName("default/a:http")}) || len(res.RemovedBackends) != 1 {
		t.Errorf("Deleted = %v, RemovedBackends = %+v; want a deleted with its last backend", res.Deleted, res.RemovedBackends)
	}
	if fake.String() != "" {
		t.Errorf("maps not empty after delete:\n%s", fake)
	}
	checkNoLeaks(t, r, fake)
}

func TestTableNotRewrittenWhenUnchanged(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	s := clusterIP("default/t:http", "10.96.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")
	s.Backends[2].State = lb.BackendTerminating
	r.Upsert(s)
	mustSync(t, r)

	// A field the datapath doesn't store: no write at all.
	s.Backends[0].Zone = "zone-a"
	fake.ResetCounts()
	r.Upsert(s)
	mustSync(t, r)
	if n := fake.Writes(); n != 0 {
		t.Errorf("changing a backend's zone wrote %d times, want 0 (%v)", n, fake.CallCounts())
	}
	// A terminating backend becomes quarantined: its entry changes, the
	// table (which never held it) doesn't.
	s.Backends[2].State = lb.BackendQuarantined
	fake.ResetCounts()
	r.Upsert(s)
	mustSync(t, r)
	if got := fake.CallCounts(); got[lbtest.UpsertBackend] != 1 || fake.Writes() != 1 {
		t.Errorf("calls = %v, want one backend write and no table", got)
	}
}

func TestConflictingFrontend(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	first := clusterIP("default/first:http", "10.96.0.1", "10.0.0.1")
	second := clusterIP("default/second:http", "10.96.0.1", "10.0.0.2")
	r.Upsert(first)
	r.Upsert(second)
	_, err := r.Sync()
	if !errors.Is(err, lb.ErrConflict) {
		t.Fatalf("Sync err = %v, want ErrConflict", err)
	}
	var se *lb.ServiceError
	if !errors.As(err, &se) || se.Service != second.Name || se.Retry {
		t.Errorf("error %v: want a non-retried ServiceError for %s", err, second.Name)
	}
	if msg := err.Error(); !strings.Contains(msg, "default/first:http") || !strings.Contains(msg, "default/second:http") {
		t.Errorf("error %q must name both services", msg)
	}
	want := fake.String()
	if !strings.Contains(want, "default/first") || strings.Contains(want, "default/second") {
		t.Errorf("the first service must keep serving and the second not be written:\n%s", want)
	}
	// Not retried by itself: the next Sync has nothing to do.
	if res, err := r.Sync(); err != nil || res.Writes != 0 {
		t.Errorf("second Sync: %d writes, err %v; want nothing", res.Writes, err)
	}
	// The first moves away: the second takes the address over in the same
	// Sync, without being upserted again.
	r.Upsert(clusterIP("default/first:http", "10.96.0.2", "10.0.0.1"))
	res := mustSync(t, r)
	if !slices.Contains(res.Updated, second.Name) {
		t.Errorf("Updated = %v, want the waiting service too", res.Updated)
	}
	dump := fake.String()
	if !strings.Contains(dump, "10.96.0.1:80/TCP internal ClusterIP default/second") {
		t.Errorf("second service didn't take 10.96.0.1 over:\n%s", dump)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

func TestInvalidServiceKeepsOldState(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	good := clusterIP("default/v:http", "10.96.0.1", "10.0.0.1")
	r.Upsert(good)
	mustSync(t, r)
	before := fake.String()

	bad := clusterIP("default/v:http", "10.96.0.1", "10.0.0.1", "10.0.0.2")
	bad.Frontends[0].Port = 0
	r.Upsert(bad)
	_, err := r.Sync()
	var ve *lb.ValidationError
	var se *lb.ServiceError
	if !errors.As(err, &ve) || !errors.As(err, &se) || se.Service != good.Name || se.Retry {
		t.Fatalf("Sync err = %v, want a non-retried ServiceError wrapping a ValidationError", err)
	}
	if !strings.Contains(err.Error(), "default/v:http") {
		t.Errorf("error %q doesn't name the service", err)
	}
	if after := fake.String(); after != before {
		t.Errorf("an invalid update changed the maps:\n--- before\n%s--- after\n%s", before, after)
	}
	if _, err := r.Sync(); err != nil {
		t.Errorf("an invalid service was retried without a change: %v", err)
	}
	r.Upsert(clusterIP("default/v:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
	mustSync(t, r)
	if !strings.Contains(fake.String(), "10.0.0.2:8080") {
		t.Errorf("the fixed service wasn't applied:\n%s", fake)
	}
}

func TestDatapathErrorIsRetried(t *testing.T) {
	fake := lbtest.NewFake()
	faulty := lbtest.NewFaulty(fake)
	r := newReconciler(t, faulty)
	faulty.FailMethod(lbtest.UpsertService, 1)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	r.Upsert(clusterIP("default/b:http", "10.96.0.2", "10.0.0.2"))
	_, err := r.Sync()
	var se *lb.ServiceError
	if !errors.Is(err, lbtest.ErrInjected) || !errors.As(err, &se) || !se.Retry || se.Service != parseName("default/a:http") {
		t.Fatalf("Sync err = %v, want a retried ServiceError for default/a:http", err)
	}
	if !strings.Contains(fake.String(), "default/b") {
		t.Error("one service's failure stopped another")
	}
	res := mustSync(t, r)
	if !slices.Equal(res.Updated, []lb.ServiceName{parseName("default/a:http")}) {
		t.Errorf("retry Sync updated %v, want only the failed service", res.Updated)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

func TestScopeChangeKeepsFrontendID(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	s := clusterIP("default/s:http", "10.96.0.1", "10.0.0.1")
	r.Upsert(s)
	mustSync(t, r)
	// The same address becomes external: a new view, the frontend is
	// updated in place.
	s.Frontends[0].Scope, s.Frontends[0].Kind, s.MaglevTableSize = lb.ScopeExternal, lb.KindExternalIP, 251
	r.Upsert(s)
	syncAll(t, r)
	st, _ := fake.Dump()
	if len(st.Frontends) != 1 || st.Frontends[1].Scope != lb.ScopeExternal {
		t.Errorf("want frontend 1 kept and made external:\n%s", fake)
	}
	if len(st.Services) != 2 {
		t.Errorf("want an external and an internal key:\n%s", fake)
	}
	s.Frontends[0].Scope, s.Frontends[0].Kind = lb.ScopeInternal, lb.KindClusterIP
	r.Upsert(s)
	syncAll(t, r)
	st, _ = fake.Dump()
	if len(st.Services) != 1 || len(st.Maglev) != 2 || len(st.Backends) != 1 {
		t.Errorf("the external view wasn't removed (want the two tables of the internal view left):\n%s", fake)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

func TestRestartWithOneChange(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	var all []*lb.Service
	for i := range 20 {
		all = append(all, withExternal(genService(i, 4), "192.0.2.1"))
		all[i].Frontends[1].Port = uint16(1000 + i) // one VIP, a port per service
	}
	r.Replace(all)
	syncAll(t, r)

	fake.ResetCounts()
	r = newReconciler(t, fake)
	all[3].Backends = all[3].Backends[1:]
	r.Replace(all)
	res := syncAll(t, r)
	if !slices.Equal(res.Updated, []lb.ServiceName{all[3].Name}) {
		t.Errorf("after restart, Updated = %v, want only %s", res.Updated, all[3].Name)
	}
	// Two views: each loses a backend (delete), gets a new table, and
	// its keys a new backend count (one internal key per frontend, one
	// external key).
	got := fake.CallCounts()
	if got[lbtest.DeleteBackend] != 2 || got[lbtest.UpsertMaglevs]+got[lbtest.UpsertMaglev] == 0 || got[lbtest.UpsertService] != 3 || got[lbtest.UpsertBackend] != 0 {
		t.Errorf("calls = %v, want only the changed service's writes", got)
	}
	checkNoLeaks(t, r, fake)
}

func TestRestartWaitsForFullStateBeforePruning(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Replace([]*lb.Service{
		clusterIP("default/keep:http", "10.96.0.1", "10.0.0.1"),
		clusterIP("default/gone:http", "10.96.0.2", "10.0.0.2"),
	})
	mustSync(t, r)
	// Entries no service owns: a backend of an unknown service ID and a
	// key whose frontend is missing (a crash between writes).
	if err := fake.UpsertBackend(99, lb.BackendEntry{ServiceID: 42, Addr: netip.MustParseAddr("10.9.9.9"), Port: 1, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	orphanKey := lb.ServiceKey{Addr: netip.MustParseAddr("10.96.9.9"), Port: 9, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	if err := fake.UpsertService(orphanKey, lb.ServiceEntry{ServiceID: 42, FrontendID: 77}); err != nil {
		t.Fatal(err)
	}

	r = newReconciler(t, fake)
	r.Upsert(clusterIP("default/keep:http", "10.96.0.1", "10.0.0.1", "10.0.0.3"))
	mustSync(t, r)
	dump := fake.String()
	if !strings.Contains(dump, "default/gone") || !strings.Contains(dump, "backend 99:") || !strings.Contains(dump, "10.96.9.9") {
		t.Fatalf("entries were deleted before the full desired state arrived:\n%s", dump)
	}
	if !strings.Contains(dump, "10.0.0.3:8080") {
		t.Errorf("an upsert before MarkSynced wasn't applied:\n%s", dump)
	}
	r.MarkSynced()
	res := syncAll(t, r)
	dump = fake.String()
	if strings.Contains(dump, "default/gone") || strings.Contains(dump, "backend 99:") || strings.Contains(dump, "10.96.9.9") {
		t.Errorf("after MarkSynced, stale entries remain:\n%s", dump)
	}
	if !slices.Equal(res.Deleted, []lb.ServiceName{parseName("default/gone:http")}) || res.Pruned != 2 {
		t.Errorf("Deleted = %v, Pruned = %d; want default/gone:http and 2 orphans", res.Deleted, res.Pruned)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

func TestRestartAdoptsOrphanKey(t *testing.T) {
	fake := lbtest.NewFake()
	key := lb.ServiceKey{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	// A key left without its frontend: the service that wants the
	// address takes it over (overwrites it), and the prune leaves it.
	if err := fake.UpsertService(key, lb.ServiceEntry{ServiceID: 5, FrontendID: 5}); err != nil {
		t.Fatal(err)
	}
	r := newReconciler(t, fake)
	r.Replace([]*lb.Service{clusterIP("default/a:http", "10.96.0.1", "10.0.0.1")})
	mustSync(t, r)
	st, _ := fake.Dump()
	if e, ok := st.Services[key]; !ok || e.FrontendID == 5 {
		t.Errorf("key %v = %+v, %v; want it rewritten for default/a:http", key, e, ok)
	}
	checkFake(t, fake)
}

func TestNewReconcilerErrors(t *testing.T) {
	faulty := lbtest.NewFaulty(lbtest.NewFake())
	faulty.FailMethod(lbtest.Dump, 1)
	if _, err := lb.NewReconciler(faulty, lb.ReconcilerOptions{}); !errors.Is(err, lbtest.ErrInjected) {
		t.Errorf("Dump failing: err = %v, want it passed on", err)
	}
	if _, err := lb.NewReconciler(lbtest.NewFake(), lb.ReconcilerOptions{DefaultTableSize: 1000}); err == nil || !strings.Contains(err.Error(), "DefaultTableSize") {
		t.Errorf("bad table size: err = %v, want one naming DefaultTableSize", err)
	}
	if _, err := lb.NewReconciler(nil, lb.ReconcilerOptions{}); err == nil {
		t.Error("nil datapath accepted")
	}
}

func TestServicesReturnsCopies(t *testing.T) {
	r := newReconciler(t, lbtest.NewFake())
	s := clusterIP("default/b:http", "10.96.0.2", "10.0.0.1")
	r.Upsert(s)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	s.Backends[0].Port = 1 // the caller reuses its value
	got := r.Services()
	if len(got) != 2 || got[0].Name.Name != "a" || got[1].Backends[0].Port != 8080 {
		t.Fatalf("Services() = %+v; want a then b, unaffected by the caller's change", got)
	}
	got[1].Backends[0].Port = 2
	if r.Services()[1].Backends[0].Port != 8080 {
		t.Error("Services() returned the reconciler's own copy")
	}
}

func TestVisitDesiredSeesEveryDesiredService(t *testing.T) {
	r := newReconciler(t, lbtest.NewFake())
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	r.Upsert(clusterIP("default/b:http", "10.96.0.2", "10.0.0.2"))
	r.Upsert(clusterIP("default/c:http", "10.96.0.3", "10.0.0.3"))
	r.Delete(lb.ServiceName{Namespace: "default", Name: "c", Port: "http"})
	var names []string
	r.VisitDesired(func(s *lb.Service) { names = append(names, s.Name.Name) })
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Errorf("visited %v, want [a b]", names)
	}
}

func TestResyncWritesNothingWhenInStep(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Replace([]*lb.Service{genService(1, 3), genService(2, 3)})
	mustSync(t, r)
	fake.ResetCounts()
	r.Resync()
	res := mustSync(t, r)
	if fake.Writes() != 0 || len(res.Updated) != 0 {
		t.Errorf("Resync wrote %d times (%v)", fake.Writes(), res.Updated)
	}
}

func TestPlainDatapathWithoutBatches(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, lbtest.Plain(fake))
	r.Replace([]*lb.Service{genService(1, 3), genService(2, 3)})
	mustSync(t, r)
	// Two services, two table generations each.
	if got := fake.CallCounts(); got[lbtest.UpsertMaglevs] != 0 || got[lbtest.UpsertMaglev] != 4 {
		t.Errorf("calls = %v, want single table writes on a plain datapath", got)
	}
	r.Replace(nil)
	mustSync(t, r)
	if got := fake.CallCounts(); got[lbtest.DeleteMaglevs] != 0 || got[lbtest.DeleteMaglev] != 4 {
		t.Errorf("calls = %v, want single table deletes on a plain datapath", got)
	}
}

func TestTableResize(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	s := withExternal(clusterIP("default/z:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"), "192.0.2.1")
	for _, size := range []uint32{1021, 251, 4093, 509} {
		s.MaglevTableSize = size
		r.Upsert(s)
		mustSync(t, r)
		if !strings.Contains(fake.String(), "table="+strconv.Itoa(int(size))) {
			t.Errorf("table size %d not applied:\n%s", size, fake)
		}
	}
	// Every write in between was checked: no key ever had a size larger
	// than its table.
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// Replacing every backend in one Sync, with more new backends than old
// ones, allocates IDs for all of them (it once sized its allocation from
// the old set and panicked).
func TestReplaceAllBackendsInOneSync(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	mustSync(t, r)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))
	res := syncAll(t, r)
	if len(res.RemovedBackends) != 1 {
		t.Errorf("RemovedBackends = %+v, want the one old backend", res.RemovedBackends)
	}
	st, err := fake.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Backends) != 3 {
		t.Errorf("%d backends programmed, want 3:\n%s", len(st.Backends), fake)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// The two halves of a dual-stack service share a name and are told apart
// by their frontends' family, also after a restart.
func TestDualStackHalves(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	v4 := clusterIP("default/ds:http", "10.96.0.7", "10.0.0.1")
	v6 := clusterIP("default/ds:http", "fd00:96::7", "fd00::1")
	r.Replace([]*lb.Service{v4, v6})
	if res := mustSync(t, r); len(res.Updated) != 2 {
		t.Fatalf("Updated = %v, want both halves", res.Updated)
	}
	st, err := fake.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 2 || len(st.Backends) != 2 {
		t.Fatalf("want 2 keys and 2 backends, got:\n%s", fake)
	}

	fake.ResetCounts()
	again := newReconciler(t, fake)
	again.Replace([]*lb.Service{v4, v6})
	mustSync(t, again)
	if fake.Writes() != 0 {
		t.Errorf("restart wrote %d entries, want 0: %v", fake.Writes(), fake.CallCounts())
	}

	name6 := v6.Name
	name6.IPv6 = true
	again.Delete(name6)
	syncAll(t, again)
	st, _ = fake.Dump()
	if len(st.Services) != 1 || len(st.Backends) != 1 {
		t.Fatalf("after deleting the IPv6 half, want the IPv4 half only:\n%s", fake)
	}
	for k := range st.Services {
		if !k.Addr.Is4() {
			t.Errorf("the IPv4 half's key is gone, %s is left", k.Addr)
		}
	}
	checkNoLeaks(t, again, fake)
}

// A large round programs every service with both table generations, the
// same table in each, and needs no follow-up Sync; a later change then
// has its spare ready.
func TestLargeRoundWritesSpareTables(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	var all []*lb.Service
	for i := range 300 {
		all = append(all, genService(i, 2))
	}
	r.Replace(all)
	if res := mustSync(t, r); res.Again {
		t.Fatal("a round of 300 services asked for another Sync")
	}
	st, err := fake.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Maglev) != 600 {
		t.Fatalf("after the first Sync: %d tables, want two per service (600)", len(st.Maglev))
	}
	for k, e := range st.Services {
		live, spare := st.Maglev[e.ServiceID.Table(e.TableGen)], st.Maglev[e.ServiceID.Table(1-e.TableGen)]
		if len(live) == 0 || !slices.Equal(live, spare) {
			t.Fatalf("key %v: the spare table differs from the live one", k)
		}
	}
	checkFake(t, fake)

	// Both generations exist, so a change writes the spare and flips.
	s := genService(7, 2)
	s.Backends = s.Backends[:1]
	r.Upsert(s)
	fake.ResetCounts()
	mustSync(t, r)
	st, _ = fake.Dump()
	if len(st.Maglev) != 600 {
		t.Errorf("a change created or dropped tables: %d", len(st.Maglev))
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}
