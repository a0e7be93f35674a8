package lb_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// syncAll syncs until no Sync asks for another (retired backends are
// deleted by the Sync after the one that removed them) and merges what the
// Syncs report, so a test sees a change as a whole.
func syncAll(tb testing.TB, r *lb.Reconciler) lb.SyncResult {
	tb.Helper()
	var all lb.SyncResult
	for range 4 {
		res := mustSync(tb, r)
		all.Updated = mergeNames(all.Updated, res.Updated)
		all.Deleted = mergeNames(all.Deleted, res.Deleted)
		all.RemovedBackends = append(all.RemovedBackends, res.RemovedBackends...)
		all.Pruned += res.Pruned
		all.Writes += res.Writes
		if !res.Again {
			return all
		}
	}
	tb.Fatal("Sync still asks for another after 4 rounds")
	return all
}

func mergeNames(a, b []lb.ServiceName) []lb.ServiceName {
	for _, n := range b {
		if !slices.Contains(a, n) {
			a = append(a, n)
		}
	}
	return a
}

// backendIDs are the backend IDs in the fake's maps.
func backendIDs(tb testing.TB, f *lbtest.Fake) map[lb.BackendID]lb.BackendEntry {
	tb.Helper()
	st, err := f.Dump()
	if err != nil {
		tb.Fatal(err)
	}
	return st.Backends
}

// A removed backend stays in the maps (and keeps its ID) for the rest of
// the Sync that switched the table away from it, because a program may
// still read the old table; the next Sync deletes and reports it.
func TestRemovedBackendDeletedByNextSync(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
	syncAll(t, r)
	var goneID lb.BackendID
	for id, be := range backendIDs(t, fake) {
		if be.Addr == netip.MustParseAddr("10.0.0.2") {
			goneID = id
		}
	}
	if goneID == 0 {
		t.Fatalf("no backend 10.0.0.2:\n%s", fake)
	}

	// Sync N: a loses 10.0.0.2 and another service gets a new backend.
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	r.Upsert(clusterIP("default/b:http", "10.96.0.2", "10.0.0.9"))
	res := mustSync(t, r)
	if !res.Again {
		t.Error("the Sync that retired a backend did not ask for another")
	}
	if len(res.RemovedBackends) != 0 {
		t.Errorf("RemovedBackends = %+v in the Sync that retired it, want none", res.RemovedBackends)
	}
	bes := backendIDs(t, fake)
	if be, ok := bes[goneID]; !ok || be.Addr != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("backend %d was deleted or reused in the Sync that retired it:\n%s", goneID, fake)
	}
	st, _ := fake.Dump()
	for tid, slots := range st.Maglev {
		if slices.Contains(slots, goneID) && tid.Service() != 0 {
			for _, e := range st.Services {
				if e.ServiceID == tid.Service() && e.TableGen&1 == tid.Gen() {
					t.Errorf("the live table %s still names retired backend %d", tid, goneID)
				}
			}
		}
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)

	// Sync N+1: deleted, released, reported; nothing else pending.
	res = mustSync(t, r)
	if res.Again {
		t.Error("the Sync that deleted the retired backend asked for another")
	}
	want := lb.RemovedBackend{Service: parseName("default/a:http"), BackendID: goneID, Addr: netip.MustParseAddrPort("10.0.0.2:8080")}
	if len(res.RemovedBackends) != 1 || res.RemovedBackends[0].BackendID != want.BackendID ||
		res.RemovedBackends[0].Addr != want.Addr || res.RemovedBackends[0].Service != want.Service {
		t.Errorf("RemovedBackends = %+v, want %+v", res.RemovedBackends, want)
	}
	if _, ok := backendIDs(t, fake)[goneID]; ok {
		t.Errorf("backend %d not deleted by the next Sync:\n%s", goneID, fake)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// Deleting a service retires its backends the same way, and its service
// ID is not handed to another service while they exist.
func TestDeletedServiceBackendsRetired(t *testing.T) {
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	r := newReconciler(t, fake)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	syncAll(t, r)
	r.Delete(parseName("default/a:http"))
	r.Upsert(clusterIP("default/b:http", "10.96.0.2", "10.0.0.9"))
	res := mustSync(t, r)
	if !res.Again || len(res.RemovedBackends) != 0 {
		t.Errorf("Again = %v, RemovedBackends = %+v; want a retired backend", res.Again, res.RemovedBackends)
	}
	st, _ := fake.Dump()
	var aID lb.ServiceID
	for _, be := range st.Backends {
		if be.Addr == netip.MustParseAddr("10.0.0.1") {
			aID = be.ServiceID
		}
	}
	if aID == 0 {
		t.Fatalf("a's backend deleted in the Sync that deleted a:\n%s", fake)
	}
	for _, e := range st.Services {
		if e.ServiceID == aID {
			t.Errorf("service ID %d of a's retired backend went to another service:\n%s", aID, fake)
		}
	}
	res = syncAll(t, r)
	if len(res.RemovedBackends) != 1 {
		t.Errorf("RemovedBackends = %+v, want a's backend", res.RemovedBackends)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// A failed delete of a retired backend surfaces and is retried by the
// next Sync.
func TestRetiredBackendDeleteRetried(t *testing.T) {
	fake := lbtest.NewFake()
	faulty := lbtest.NewFaulty(fake)
	r := newReconciler(t, faulty)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
	syncAll(t, r)
	r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1"))
	mustSync(t, r)
	faulty.FailMethod(lbtest.DeleteBackend, 0)
	res, err := r.Sync()
	if !errors.Is(err, lbtest.ErrInjected) {
		t.Fatalf("Sync err = %v, want the injected fault", err)
	}
	if !res.Again || len(res.RemovedBackends) != 0 {
		t.Errorf("after a failed delete: Again = %v, RemovedBackends = %+v; want Again and none", res.Again, res.RemovedBackends)
	}
	if !strings.Contains(fake.String(), "10.0.0.2:8080") {
		t.Errorf("the backend went although its delete failed:\n%s", fake)
	}
	faulty.Clear()
	res = mustSync(t, r)
	if res.Again || len(res.RemovedBackends) != 1 || strings.Contains(fake.String(), "10.0.0.2:8080") {
		t.Errorf("retry: Again = %v, RemovedBackends = %+v, maps:\n%s", res.Again, res.RemovedBackends, fake)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// A restart between the Sync that retired a backend and the one that
// would delete it still deletes it.
func TestRestartDeletesRetiredBackend(t *testing.T) {
	for _, deleted := range []bool{false, true} {
		fake := lbtest.NewFake()
		r := newReconciler(t, fake)
		r.Upsert(clusterIP("default/a:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
		r.Upsert(clusterIP("default/b:http", "10.96.0.2", "10.0.0.3"))
		syncAll(t, r)
		want := []*lb.Service{clusterIP("default/a:http", "10.96.0.1", "10.0.0.1")}
		if deleted {
			want = append(want[:0], clusterIP("default/a:http", "10.96.0.1", "10.0.0.1", "10.0.0.2"))
		} else {
			want = append(want, clusterIP("default/b:http", "10.96.0.2", "10.0.0.3"))
		}
		r.Replace(want)
		if res := mustSync(t, r); !res.Again {
			t.Fatalf("deleted=%v: nothing retired", deleted)
		}

		r = newReconciler(t, fake)
		r.Replace(want)
		syncAll(t, r)
		for _, gone := range []string{"10.0.0.2:8080", "10.0.0.3:8080"} {
			if (gone == "10.0.0.3:8080") == deleted && strings.Contains(fake.String(), gone) {
				t.Errorf("deleted=%v: retired backend %s left after a restart:\n%s", deleted, gone, fake)
			}
		}
		checkFake(t, fake)
		checkNoLeaks(t, r, fake)
	}
}
