package lbtest_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

var (
	key = lb.ServiceKey{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}
	fe  = lb.FrontendEntry{ServiceID: 1, Addr: key.Addr, Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal, Service: "default/web", PortName: "http"}
	be  = lb.BackendEntry{ServiceID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080, Tunnel: netip.MustParseAddr("10.0.0.1"), Weight: 1}
	// Service 1's tables.
	tbl0, tbl1 = lb.ServiceID(1).Table(0), lb.ServiceID(1).Table(1)
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// populate writes one consistent service into dp.
func populate(t *testing.T, dp lb.Datapath) {
	t.Helper()
	must(t, dp.UpsertBackend(1, be))
	must(t, dp.UpsertMaglev(tbl0, []lb.BackendID{1, 1, 1}))
	must(t, dp.UpsertFrontend(1, fe))
	must(t, dp.UpsertService(key, lb.ServiceEntry{ServiceID: 1, FrontendID: 1, Backends: 1, TableSize: 3}))
}

func TestFakeFormatAndCounts(t *testing.T) {
	f := lbtest.NewFake()
	if f.String() != "" {
		t.Fatalf("empty fake dumps %q", f.String())
	}
	populate(t, f)
	want := `service 10.96.0.1:80/TCP internal: svc=1 fe=1 backends=1 table=3 gen=0 mode=dsr flags=-
frontend 1: svc=1 10.96.0.1:80/TCP internal ClusterIP default/web port=http
backend 1: svc=1 10.0.0.1:8080 weight=1 active
maglev 1/0: size=3 1:3
`
	if got := f.String(); got != want {
		t.Errorf("dump:\n%s\nwant:\n%s", got, want)
	}
	if f.Writes() != 4 || f.Calls(lbtest.UpsertMaglev) != 1 {
		t.Errorf("counts %v, want 4 writes", f.CallCounts())
	}
	if _, err := f.Dump(); err != nil || f.Writes() != 4 {
		t.Errorf("Dump counted as a write (%v)", f.CallCounts())
	}
	f.ResetCounts()
	if f.Writes() != 0 {
		t.Error("ResetCounts kept counts")
	}
	if err := f.Check(); err != nil {
		t.Errorf("consistent state reported: %v", err)
	}
}

func TestFakeRejectsZeroIDs(t *testing.T) {
	f := lbtest.NewFake()
	for name, err := range map[string]error{
		"backend 0":       f.UpsertBackend(0, be),
		"maglev slot 0":   f.UpsertMaglev(tbl0, []lb.BackendID{1, 0}),
		"empty table":     f.UpsertMaglev(tbl0, nil),
		"table of svc 0":  f.UpsertMaglev(lb.ServiceID(0).Table(1), []lb.BackendID{1}),
		"frontend svc 0":  f.UpsertFrontend(1, lb.FrontendEntry{}),
		"service fe 0":    f.UpsertService(key, lb.ServiceEntry{ServiceID: 1}),
		"batch with zero": f.UpsertMaglevs(map[lb.TableID][]lb.BackendID{tbl0: {1}, tbl1: {0}}),
	} {
		if err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if st, _ := f.Dump(); len(st.Maglev) != 0 {
		t.Error("a rejected batch wrote some tables")
	}
}

func TestCheckStateFindsDanglingReferences(t *testing.T) {
	f := lbtest.NewFake()
	populate(t, f)
	must(t, f.DeleteBackend(1))
	must(t, f.DeleteFrontend(1))
	must(t, f.UpsertService(key, lb.ServiceEntry{ServiceID: 1, FrontendID: 1, Backends: 1, TableSize: 5, Flags: lb.FlagSourceRanges}))
	err := f.Check()
	for _, want := range []string{"frontend 1 is missing", "has 3 slots", "no range", "slot backend 1 is missing"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check() = %v, want it to say %q", err, want)
		}
	}
	// The key's generation names its table.
	must(t, f.UpsertService(key, lb.ServiceEntry{ServiceID: 1, FrontendID: 1, Backends: 1, TableSize: 3, TableGen: 1}))
	if err := f.Check(); err == nil || !strings.Contains(err.Error(), "Maglev table 1/1 is missing") {
		t.Errorf("Check() = %v, want table 1/1 missing", err)
	}
	// Unreachable tables may dangle: a view being torn down.
	must(t, f.UpsertService(key, lb.ServiceEntry{ServiceID: 1, FrontendID: 1}))
	must(t, f.UpsertFrontend(1, fe))
	if err := f.Check(); err != nil {
		t.Errorf("unreachable table reported: %v", err)
	}
}

// A table of unchanged size rewritten while a key uses it is a violation
// (the BPF datapath would rewrite it in place, under the packets); the
// spare generation, a new size or the same content are not.
func TestCheckEveryWriteInPlace(t *testing.T) {
	f := lbtest.NewFake()
	populate(t, f)
	f.CheckEveryWrite(true)
	must(t, f.UpsertBackend(2, be))
	must(t, f.UpsertMaglev(tbl1, []lb.BackendID{1, 2, 1}))
	must(t, f.UpsertMaglev(tbl0, []lb.BackendID{1, 1, 1}))
	must(t, f.UpsertMaglev(tbl0, []lb.BackendID{1, 1, 1, 1, 1}))
	if err := f.Violations(); err != nil {
		t.Fatalf("Violations() = %v, want none", err)
	}
	must(t, f.UpsertMaglevs(map[lb.TableID][]lb.BackendID{tbl0: {2, 2, 2, 2, 2}}))
	if err := f.Violations(); err == nil || !strings.Contains(err.Error(), "maglev table 1/0 rewritten in place while service key 10.96.0.1:80/TCP internal uses it") {
		t.Errorf("Violations() = %v, want the in-place rewrite of 1/0", err)
	}
}

func TestCheckEveryWrite(t *testing.T) {
	f := lbtest.NewFake()
	f.CheckEveryWrite(true)
	must(t, f.UpsertService(key, lb.ServiceEntry{ServiceID: 1, FrontendID: 1})) // frontend missing
	must(t, f.UpsertFrontend(1, fe))
	if err := f.Violations(); err == nil || !strings.Contains(err.Error(), "after UpsertService") {
		t.Errorf("Violations() = %v, want the key written before its frontend", err)
	}
}

func TestFaultyRules(t *testing.T) {
	f := lbtest.NewFake()
	x := lbtest.NewFaulty(f)
	must(t, x.UpsertBackend(1, be))
	x.FailNth(2)
	must(t, x.UpsertBackend(2, be))
	if err := x.UpsertBackend(3, be); !errors.Is(err, lbtest.ErrInjected) {
		t.Errorf("second call after FailNth(2): %v", err)
	}
	must(t, x.UpsertBackend(3, be))

	x.FailMethod(lbtest.DeleteBackend, 2)
	for i := range 3 {
		err := x.DeleteBackend(1)
		if (i < 2) != errors.Is(err, lbtest.ErrInjected) {
			t.Errorf("DeleteBackend call %d: %v", i+1, err)
		}
	}
	x.FailWhen(func(c lbtest.Call) bool { return c.Method == lbtest.UpsertBackend && c.Args[0] == lb.BackendID(9) })
	if err := x.UpsertBackend(9, be); !errors.Is(err, lbtest.ErrInjected) {
		t.Errorf("predicate: %v", err)
	}
	must(t, x.UpsertBackend(8, be))
	if st, _ := f.Dump(); len(st.Backends) != 3 || st.Backends[9] != (lb.BackendEntry{}) {
		t.Errorf("failed calls reached the fake: %v", st.Backends)
	}
	if n := len(x.Injected()); n != 4 {
		t.Errorf("Injected() has %d calls, want 4", n)
	}
	x.Clear()
	must(t, x.UpsertBackend(9, be))
}

func TestFaultyBatchAppliesHalf(t *testing.T) {
	f := lbtest.NewFake()
	x := lbtest.NewFaulty(lbtest.Plain(f))
	x.FailMethod(lbtest.UpsertMaglevs, 1)
	tables := map[lb.TableID][]lb.BackendID{2: {1}, 3: {1}, 4: {1}, 5: {1}}
	if err := x.UpsertMaglevs(tables); !errors.Is(err, lbtest.ErrInjected) {
		t.Fatalf("UpsertMaglevs: %v", err)
	}
	st, _ := f.Dump()
	if len(st.Maglev) != 2 || st.Maglev[2] == nil || st.Maglev[3] == nil {
		t.Errorf("a failed batch wrote %v, want the first half", st.Maglev)
	}
	must(t, x.UpsertMaglevs(tables)) // the plain fake gets them one by one
	if st, _ := f.Dump(); len(st.Maglev) != 4 {
		t.Errorf("batch through a plain datapath wrote %d tables", len(st.Maglev))
	}
	if _, ok := lbtest.Plain(f).(lb.MaglevBatcher); ok {
		t.Error("Plain kept the batch methods")
	}
}

func TestClock(t *testing.T) {
	start := time.Unix(1000, 0)
	c := lbtest.NewClock(start)
	tm := c.NewTimer(time.Second)
	if c.Arms() != 1 || c.Advance(999*time.Millisecond) != 0 {
		t.Fatal("timer fired early")
	}
	if c.Advance(time.Millisecond) != 1 {
		t.Fatal("timer didn't fire at its deadline")
	}
	if got := <-tm.C(); !got.Equal(start.Add(time.Second)) {
		t.Errorf("fired at %v", got)
	}
	tm.Reset(time.Second)
	c.Advance(time.Second)
	tm.Reset(time.Minute) // discards the unreceived expiry
	select {
	case <-tm.C():
		t.Error("Reset kept a stale expiry")
	default:
	}
	if !tm.Stop() || len(c.Pending()) != 0 {
		t.Error("Stop didn't disarm")
	}
	if !c.WaitArms(3, time.Second) || c.WaitArms(4, time.Millisecond) {
		t.Error("WaitArms miscounted")
	}
}
