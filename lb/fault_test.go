package lb_test

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// canonical renders a datapath state with every ID replaced by what it
// stands for (a view by its service and scope, a backend by its view and
// address, a frontend by its address), so that two states that differ only
// in ID assignment render the same. A failure can change which IDs are
// free when, so after one the reconciler must converge to this form of a
// clean run, not to its exact IDs. For the same reason table generations
// are left out: a key shows the content of the table it uses, a table
// used by a key is "live" with its content, any other is a "spare" whose
// content is not shown (it may hold the previous table or a copy of the
// live one, depending on which writes failed).
func canonical(s *lb.DatapathState) string {
	feLabel := func(id lb.FrontendID) string {
		e, ok := s.Frontends[id]
		if !ok {
			return fmt.Sprintf("missing-fe-%d", id)
		}
		return fmt.Sprintf("%s:%s@%s", e.Service, e.PortName, netip.AddrPortFrom(e.Addr, e.Port))
	}
	viewLabel := map[lb.ServiceID]string{}
	for k, e := range s.Services {
		fe := s.Frontends[e.FrontendID]
		viewLabel[e.ServiceID] = fmt.Sprintf("%s:%s/%s", fe.Service, fe.PortName, k.Scope)
	}
	view := func(id lb.ServiceID) string {
		if l, ok := viewLabel[id]; ok {
			return l
		}
		return fmt.Sprintf("unreachable-view-%d", id)
	}
	beLabel := func(id lb.BackendID) string {
		e, ok := s.Backends[id]
		if !ok {
			return fmt.Sprintf("missing-be-%d", id)
		}
		return view(e.ServiceID) + "|" + netip.AddrPortFrom(e.Addr, e.Port).String()
	}
	slots := func(id lb.TableID) string {
		t, ok := s.Maglev[id]
		if !ok {
			return "missing"
		}
		h := fnv.New64a()
		for _, be := range t {
			fmt.Fprintln(h, beLabel(be))
		}
		return fmt.Sprintf("size=%d slots=%x", len(t), h.Sum64())
	}
	live := map[lb.TableID]bool{}
	var lines []string
	for k, e := range s.Services {
		uses := "-"
		if e.Backends > 0 {
			tid := e.ServiceID.Table(e.TableGen)
			live[tid], uses = true, slots(tid)
		}
		lines = append(lines, fmt.Sprintf("key %s/%s %s: view=%s fe=%s backends=%d table=%d (%s) mode=%s flags=%d aff=%s",
			netip.AddrPortFrom(k.Addr, k.Port), k.Protocol, k.Scope, view(e.ServiceID), feLabel(e.FrontendID),
			e.Backends, e.TableSize, uses, e.Mode, e.Flags, e.AffinityTimeout))
	}
	for id, e := range s.Frontends {
		lines = append(lines, fmt.Sprintf("frontend %s: view=%s %s %s %s", feLabel(id), view(e.ServiceID), e.Protocol, e.Scope, e.Kind))
	}
	for id, e := range s.Backends {
		lines = append(lines, fmt.Sprintf("backend %s: tunnel=%s weight=%d %s", beLabel(id), e.Tunnel, e.Weight, e.State))
	}
	for id := range s.Maglev {
		if live[id] {
			lines = append(lines, fmt.Sprintf("maglev %s live: %s", view(id.Service()), slots(id)))
		} else {
			lines = append(lines, fmt.Sprintf("maglev %s spare", view(id.Service())))
		}
	}
	for id, rs := range s.SourceRanges {
		rs = slices.Clone(rs)
		slices.SortFunc(rs, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		lines = append(lines, fmt.Sprintf("ranges %s: %v", view(id), rs))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func canonicalOf(tb testing.TB, dp lb.Datapath) string {
	tb.Helper()
	st, err := dp.Dump()
	if err != nil {
		tb.Fatal(err)
	}
	return canonical(st)
}

// faultSteps is a sequence of desired states that exercises every kind of
// write and delete: new services, views appearing and disappearing, a
// frontend changing scope, source ranges changing and going, a table
// shrinking, backends changing state, a table going away (no usable
// backend), deletions.
func faultSteps() [][]*lb.Service {
	a := func(backends int, ranges ...string) *lb.Service {
		s := withExternal(genService(1, backends), "192.0.2.1")
		for _, r := range ranges {
			s.SourceRanges = append(s.SourceRanges, netip.MustParsePrefix(r))
		}
		return s
	}
	b := genService(2, 2)
	c := func(external bool) *lb.Service {
		s := genService(3, 3)
		s.ExternalLocal = true
		s.Backends[0].Local = true
		if external {
			s.Frontends[0].Scope, s.Frontends[0].Kind, s.MaglevTableSize = lb.ScopeExternal, lb.KindExternalIP, 251
		}
		return s
	}
	d := genService(4, 1)

	a1 := a(2, "198.51.100.0/24")
	a1.Frontends = append(a1.Frontends, lb.Frontend{Addr: netip.MustParseAddr("192.0.2.2"), Port: 443, Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindLoadBalancer})
	a2 := a(2)
	for i := range a2.Backends {
		a2.Backends[i].State = lb.BackendQuarantined
	}
	a0 := a(3, "198.51.100.0/24", "203.0.113.0/24")
	a0.MaglevTableSize = 1021 // a1 shrinks it back to 251
	return [][]*lb.Service{
		{a0, b, c(true)},
		{a1, c(false), d},
		{a2, c(true), d},
		{},
	}
}

// cleanRun applies the steps without faults and returns each step's
// canonical state and number of datapath calls.
func cleanRun(t *testing.T, plain bool) (states []string, calls []int) {
	t.Helper()
	fake := lbtest.NewFake()
	faulty := lbtest.NewFaulty(fake)
	r := newReconciler(t, datapathFor(faulty, plain))
	for _, step := range faultSteps() {
		n := faulty.Calls()
		r.Replace(step)
		syncAll(t, r)
		states = append(states, canonicalOf(t, fake))
		calls = append(calls, faulty.Calls()-n)
	}
	return states, calls
}

// datapathFor hides the batch methods when plain.
func datapathFor(f *lbtest.Faulty, plain bool) lb.Datapath {
	if plain {
		return lbtest.Plain(f)
	}
	return f
}

// TestFaultEveryCall fails each datapath call of each step in turn, then
// checks that the failed Sync left a consistent datapath that kept every
// key the step keeps, and that the next Syncs converge to the clean run,
// without leaking an ID.
func TestFaultEveryCall(t *testing.T) {
	for _, plain := range []bool{false, true} {
		t.Run(fmt.Sprintf("plain=%v", plain), func(t *testing.T) {
			states, calls := cleanRun(t, plain)
			steps := faultSteps()
			for k := range steps {
				for n := 1; n <= calls[k]; n++ {
					t.Run(fmt.Sprintf("step%d/call%d", k, n), func(t *testing.T) {
						faultAt(t, plain, states, k, func(f *lbtest.Faulty) { f.FailNth(n) })
					})
				}
			}
		})
	}
}

// TestFaultEveryMethod makes every call of one method fail for a whole
// step, so that a service retried while still failing is covered too.
func TestFaultEveryMethod(t *testing.T) {
	states, _ := cleanRun(t, false)
	for k := range faultSteps() {
		for _, m := range lbtest.WriteMethods() {
			t.Run(fmt.Sprintf("step%d/%s", k, m), func(t *testing.T) {
				faultAt(t, false, states, k, func(f *lbtest.Faulty) { f.FailMethod(m, 0) })
			})
		}
	}
}

func faultAt(t *testing.T, plain bool, states []string, k int, inject func(*lbtest.Faulty)) {
	t.Helper()
	steps := faultSteps()
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	faulty := lbtest.NewFaulty(fake)
	r := newReconciler(t, datapathFor(faulty, plain))
	for _, step := range steps[:k] {
		r.Replace(step)
		syncAll(t, r)
	}
	before, _ := fake.Dump()

	inject(faulty)
	r.Replace(steps[k])
	_, err := r.Sync()
	// A failed batch is retried table by table within the Sync, so only a
	// failed single call must surface.
	singleFailed := slices.ContainsFunc(faulty.Injected(), func(c lbtest.Call) bool {
		return c.Method != lbtest.UpsertMaglevs && c.Method != lbtest.DeleteMaglevs
	})
	if singleFailed && !errors.Is(err, lbtest.ErrInjected) {
		t.Fatalf("a call failed but Sync returned %v", err)
	}
	if !singleFailed && err != nil {
		t.Fatalf("no single call failed but Sync returned %v", err)
	}
	// A second Sync while the fault persists must not make things worse.
	_, _ = r.Sync()
	checkFake(t, fake)
	kept := wantedKeys(t, steps[k])
	after, _ := fake.Dump()
	for key := range before.Services {
		if _, ok := after.Services[key]; kept[key] && !ok {
			t.Errorf("key %v, served before and wanted after, disappeared on a failure", key)
		}
	}

	faulty.Clear()
	for range 3 {
		res, err := r.Sync()
		if err != nil {
			t.Fatalf("Sync after clearing the fault: %v", err)
		}
		if !res.Again {
			break
		}
	}
	if got := canonicalOf(t, fake); got != states[k] {
		t.Fatalf("after recovery the maps differ from a clean run:\n--- got\n%s\n--- want\n%s", got, states[k])
	}
	checkNoLeaks(t, r, fake)
	for i := k + 1; i < len(steps); i++ {
		r.Replace(steps[i])
		syncAll(t, r)
		if got := canonicalOf(t, fake); got != states[i] {
			t.Fatalf("step %d after a recovered fault differs from a clean run:\n--- got\n%s\n--- want\n%s", i, got, states[i])
		}
	}
	if fake.String() != "" {
		t.Errorf("maps not empty at the end:\n%s", fake)
	}
	if s, fe, be := r.IDsInUse(); s+fe+be != 0 {
		t.Errorf("IDs still in use at the end: services %d frontends %d backends %d", s, fe, be)
	}
	checkFake(t, fake)
}

// wantedKeys are the service keys a desired state has.
func wantedKeys(t *testing.T, svcs []*lb.Service) map[lb.ServiceKey]bool {
	t.Helper()
	keys := map[lb.ServiceKey]bool{}
	for _, s := range svcs {
		for _, f := range s.Frontends {
			keys[lb.ServiceKey{Addr: f.Addr, Port: f.Port, Protocol: f.Protocol, Scope: lb.ScopeInternal}] = true
			if f.Scope == lb.ScopeExternal {
				keys[lb.ServiceKey{Addr: f.Addr, Port: f.Port, Protocol: f.Protocol, Scope: lb.ScopeExternal}] = true
			}
		}
	}
	return keys
}

// TestFaultDuringRestartPrune fails the prune after a restart and checks
// the next Sync finishes it.
func TestFaultDuringRestartPrune(t *testing.T) {
	fake := lbtest.NewFake()
	r := newReconciler(t, fake)
	r.Replace(faultSteps()[0])
	mustSync(t, r)
	if err := fake.UpsertBackend(99, lb.BackendEntry{ServiceID: 42, Addr: netip.MustParseAddr("10.9.9.9"), Port: 1}); err != nil {
		t.Fatal(err)
	}
	faulty := lbtest.NewFaulty(fake)
	r = newReconciler(t, faulty)
	faulty.FailMethod(lbtest.DeleteBackend, 0)
	r.Replace(faultSteps()[0][:1]) // drops two services and the orphan
	if _, err := r.Sync(); !errors.Is(err, lbtest.ErrInjected) {
		t.Fatalf("Sync err = %v, want the injected fault", err)
	}
	checkFake(t, fake)
	faulty.Clear()
	res := mustSync(t, r)
	if res.Pruned == 0 || strings.Contains(fake.String(), "backend 99:") {
		t.Errorf("the orphan wasn't pruned on retry (Pruned=%d):\n%s", res.Pruned, fake)
	}
	checkNoLeaks(t, r, fake)
}
