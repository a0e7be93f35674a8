package lb_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// batchRound is a round large enough that backends, frontends and keys
// go to the datapath in batches.
const batchRound = 300

// TestBatchFallbackNamesFailingObject: when a batch fails, the entries it
// may not have written go one by one, so the one entry the datapath
// refuses fails only its service, with an error naming the backend, and
// every other service is programmed in the same Sync.
func TestBatchFallbackNamesFailingObject(t *testing.T) {
	fake, faulty, r := faultyReconciler(t)
	all := genServices(batchRound, 2)
	// Services go in name order: svc-99 is last, its backends in the
	// part of the batch that fails.
	failing := all[99]
	bad := failing.Backends[1]
	faulty.FailMethod(lbtest.UpsertBackends, 0)
	faulty.FailWhen(func(c lbtest.Call) bool {
		if c.Method != lbtest.UpsertBackend {
			return false
		}
		e := c.Args[1].(lb.BackendEntry)
		return e.Addr == bad.Addr && e.Port == bad.Port
	})
	r.Replace(all)
	_, err := r.Sync()

	var se *lb.ServiceError
	if !errors.As(err, &se) || se.Service != failing.Name || !se.Retry {
		t.Fatalf("Sync: %v; want a retried error of %s", err, failing.Name)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
		t.Errorf("%d errors, want only the one service's: %v", n, err)
	}
	if want := "write backend " + bad.AddrPort().String(); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the backend (%q)", err, want)
	}
	if !errors.Is(err, lbtest.ErrInjected) {
		t.Errorf("error %v does not wrap the injected fault", err)
	}
	if !injected(faulty, lbtest.UpsertBackends) {
		t.Error("the round's backends did not go in a batch")
	}
	st, _ := fake.Dump()
	served := wantedKeys(t, all)
	for k := range served {
		_, ok := st.Services[k]
		if isFrontendOf(k, failing) {
			if ok {
				t.Errorf("key %v of the failed service was written before its backends", k)
			}
		} else if !ok {
			t.Errorf("key %v of a service whose writes succeeded is missing", k)
		}
	}
	checkFake(t, fake)

	faulty.Clear()
	settle(t, r)
	if got, want := canonicalOf(t, fake), cleanState(t, all); got != want {
		t.Errorf("after the fault cleared, the state differs from a clean run:\n%s\nwant:\n%s", got, want)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// TestBatchFailureConverges: failed batches of every kind are completed
// one by one within the Sync, which then succeeds.
func TestBatchFailureConverges(t *testing.T) {
	fake, faulty, r := faultyReconciler(t)
	all := genServices(batchRound, 2)
	for _, m := range []string{lbtest.UpsertBackends, lbtest.UpsertFrontends, lbtest.UpsertServices} {
		faulty.FailMethod(m, 0)
	}
	r.Replace(all)
	settle(t, r)
	for _, m := range []string{lbtest.UpsertBackends, lbtest.UpsertFrontends, lbtest.UpsertServices} {
		if !injected(faulty, m) {
			t.Errorf("no %s batch was tried", m)
		}
	}
	if got, want := canonicalOf(t, fake), cleanState(t, all); got != want {
		t.Errorf("the state differs from a clean run:\n%s\nwant:\n%s", got, want)
	}
	checkFake(t, fake)
	checkNoLeaks(t, r, fake)
}

// TestBatchMapFullKeepsServing: a round that runs the real backend map
// full midway programs the services that fit, reports a MapFullError for
// those that don't, and leaves every service that served before serving
// its tables and backends.
func TestBatchMapFullKeepsServing(t *testing.T) {
	testutil.RequirePrivileged(t)
	root := testutil.BPFRoot(t)
	m, err := bpf.OpenMaps(root, bpf.MapSizes{Backends: 2*batchRound + 100, CT: 1024, Affinity: 1024, SNAT: 1024, SockRevNat: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	dp := bpf.NewDatapath(m)
	r := newReconciler(t, dp)
	old := genServices(batchRound, 2)
	r.Replace(old)
	settle(t, r)
	before, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}

	// 100 more services want 200 backends; 100 fit.
	all := genServices(batchRound+100, 2)
	r.Replace(all)
	_, syncErr := r.Sync()
	var full *bpf.MapFullError
	if !errors.As(syncErr, &full) || full.Map != "weir_backends" {
		t.Fatalf("Sync: %v; want a full weir_backends", syncErr)
	}
	after, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for k, e := range before.Services {
		got, ok := after.Services[k]
		if !ok || got != e {
			t.Errorf("key %v served %+v before the round, %+v (present %v) after", k, e, got, ok)
			continue
		}
		for _, id := range after.Maglev[e.ServiceID.Table(e.TableGen)] {
			if _, ok := after.Backends[id]; !ok {
				t.Fatalf("key %v: its table names backend %d, which is gone", k, id)
			}
		}
	}
	if len(after.Services) <= len(before.Services) {
		t.Errorf("no new service was programmed (%d keys before, %d after)", len(before.Services), len(after.Services))
	}
	var failed int
	for _, e := range flatten(syncErr) {
		var se *lb.ServiceError
		if !errors.As(e, &se) || !se.Retry || !strings.Contains(se.Error(), "write backend ") {
			t.Errorf("error %v: want a retried ServiceError naming a backend", e)
		}
		failed++
	}
	if programmed := len(after.Services) - len(before.Services); programmed+failed != 100 {
		t.Errorf("%d new services programmed and %d failed, want 100 in all", programmed, failed)
	}
}

// injected reports whether the Faulty failed a call of method.
func injected(f *lbtest.Faulty, method string) bool {
	for _, c := range f.Injected() {
		if c.Method == method {
			return true
		}
	}
	return false
}

// isFrontendOf reports whether k is a key of one of s's frontends.
func isFrontendOf(k lb.ServiceKey, s *lb.Service) bool {
	for _, f := range s.Frontends {
		if f.Addr == k.Addr && f.Port == k.Port && f.Protocol == k.Protocol {
			return true
		}
	}
	return false
}

// cleanState is the canonical state of all synced into a fresh fake.
func cleanState(t *testing.T, all []*lb.Service) string {
	t.Helper()
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Replace(all)
	settle(t, r)
	return canonicalOf(t, fake)
}

// flatten returns the errors joined in err.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
