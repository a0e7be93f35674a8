package lbtest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/weir-lb/weir/lb"
)

// Method names of lb.Datapath, as Fake counts them and Faulty matches them.
const (
	UpsertBackend     = "UpsertBackend"
	DeleteBackend     = "DeleteBackend"
	UpsertMaglev      = "UpsertMaglev"
	DeleteMaglev      = "DeleteMaglev"
	UpsertFrontend    = "UpsertFrontend"
	DeleteFrontend    = "DeleteFrontend"
	UpsertSourceRange = "UpsertSourceRange"
	DeleteSourceRange = "DeleteSourceRange"
	UpsertService     = "UpsertService"
	DeleteService     = "DeleteService"
	UpsertMaglevs     = "UpsertMaglevs"   // lb.MaglevBatcher
	DeleteMaglevs     = "DeleteMaglevs"   // lb.MaglevBatcher
	UpsertBackends    = "UpsertBackends"  // lb.EntryBatcher
	UpsertFrontends   = "UpsertFrontends" // lb.EntryBatcher
	UpsertServices    = "UpsertServices"  // lb.EntryBatcher
	Dump              = "Dump"
)

// WriteMethods lists the lb.Datapath, lb.MaglevBatcher and
// lb.EntryBatcher methods that change state.
func WriteMethods() []string {
	return []string{
		UpsertBackend, DeleteBackend, UpsertMaglev, DeleteMaglev, UpsertFrontend,
		DeleteFrontend, UpsertSourceRange, DeleteSourceRange, UpsertService, DeleteService,
		UpsertMaglevs, DeleteMaglevs, UpsertBackends, UpsertFrontends, UpsertServices,
	}
}

// Fake is an in-memory lb.Datapath, lb.MaglevBatcher and lb.EntryBatcher
// (wrap it in Plain to hide the batch methods). Like the maps, it stores what it is given
// without judging it, except that it rejects ID 0 (never allocated) and
// empty tables, so that a reconciler bug shows up as an error. Like the
// BPF datapath, it counts a table written over one of the same size as
// rewritten in place (see CheckEveryWrite). Use NewFake.
type Fake struct {
	mu         sync.Mutex
	st         *lb.DatapathState
	calls      map[string]int
	checkEach  bool
	violations []error
}

var (
	_ lb.Datapath      = (*Fake)(nil)
	_ lb.MaglevBatcher = (*Fake)(nil)
	_ lb.EntryBatcher  = (*Fake)(nil)
)

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{st: lb.NewDatapathState(), calls: map[string]int{}}
}

// CheckEveryWrite makes the Fake run Check after every successful write
// and remember what it finds (see Violations): a test of make-before-break
// ordering. It also records every table rewritten in place (same size,
// other content) while a service key with backends uses it: packets would
// see a mix of the old and the new table. It costs a full scan per write;
// use it on small states.
func (f *Fake) CheckEveryWrite(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkEach = on
}

// Violations returns the inconsistencies CheckEveryWrite found, each
// naming the write after which it appeared, joined.
func (f *Fake) Violations() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.violations...)
}

// Calls returns how often method was called, failed calls included.
func (f *Fake) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// Writes returns the number of calls to methods that change state.
func (f *Fake) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range WriteMethods() {
		n += f.calls[m]
	}
	return n
}

// CallCounts returns the calls per method (only methods that were called).
func (f *Fake) CallCounts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.calls)
}

// ResetCounts zeroes the call counters; the content stays.
func (f *Fake) ResetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.calls)
}

// String is the deterministic dump of the content (see Format).
func (f *Fake) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Format(f.st)
}

// Check reports the references between tables that don't resolve (see
// CheckState).
func (f *Fake) Check() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return CheckState(f.st)
}

// write runs one state change under the lock and counts it. arg names
// the object in errors.
func (f *Fake) write(method string, arg any, fn func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	if err := fn(); err != nil {
		return fmt.Errorf("lbtest.Fake: %s %v: %w", method, arg, err)
	}
	if f.checkEach {
		if err := CheckState(f.st); err != nil {
			f.violations = append(f.violations, fmt.Errorf("after %s %v: %w", method, arg, err))
		}
	}
	return nil
}

func nonZero[T ~uint32](what string, id T) error {
	if id == 0 {
		return fmt.Errorf("%s ID 0 is never allocated (a reconciler bug)", what)
	}
	return nil
}

func (f *Fake) UpsertBackend(id lb.BackendID, e lb.BackendEntry) error {
	return f.write(UpsertBackend, id, func() error { return put(f.st.Backends, id, e, checkBackend) })
}

// UpsertBackends writes backends in order, stopping at the first invalid
// one, as a kernel batch update stops at the first failure.
func (f *Fake) UpsertBackends(ids []lb.BackendID, es []lb.BackendEntry) (int, error) {
	return putEach(f, UpsertBackends, f.st.Backends, ids, es, checkBackend)
}

func checkBackend(id lb.BackendID, e lb.BackendEntry) error {
	return errors.Join(nonZero("backend", id), nonZero("service", e.ServiceID))
}

// put stores e at k when check accepts it.
func put[K comparable, V any](m map[K]V, k K, e V, check func(K, V) error) error {
	if err := check(k, e); err != nil {
		return err
	}
	m[k] = e
	return nil
}

// putEach is one batch write: entries in order, up to the first that
// check refuses; it returns how many it stored.
func putEach[K comparable, V any](f *Fake, method string, m map[K]V, ks []K, es []V, check func(K, V) error) (int, error) {
	n := 0
	err := f.write(method, len(ks), func() error {
		for i, k := range ks {
			if err := put(m, k, es[i], check); err != nil {
				return fmt.Errorf("entry %d (%v): %w", i, k, err)
			}
			n++
		}
		return nil
	})
	return n, err
}

func (f *Fake) DeleteBackend(id lb.BackendID) error {
	return f.write(DeleteBackend, id, func() error {
		delete(f.st.Backends, id)
		return nil
	})
}

func checkTable(id lb.TableID, table []lb.BackendID) error {
	if err := nonZero("service", id.Service()); err != nil {
		return err
	}
	if len(table) == 0 {
		return fmt.Errorf("empty Maglev table %s (delete the table instead)", id)
	}
	if slices.Contains(table, 0) {
		return fmt.Errorf("a Maglev slot of table %s holds backend ID 0", id)
	}
	return nil
}

func (f *Fake) UpsertMaglev(id lb.TableID, table []lb.BackendID) error {
	return f.write(UpsertMaglev, id, func() error {
		if err := checkTable(id, table); err != nil {
			return err
		}
		f.putTable(id, table)
		return nil
	})
}

// UpsertMaglevs writes all tables, or none when one is invalid.
func (f *Fake) UpsertMaglevs(tables map[lb.TableID][]lb.BackendID) error {
	return f.write(UpsertMaglevs, len(tables), func() error {
		for id, t := range tables {
			if err := checkTable(id, t); err != nil {
				return err
			}
		}
		for _, id := range slices.Sorted(maps.Keys(tables)) {
			f.putTable(id, tables[id])
		}
		return nil
	})
}

// putTable stores a table, recording a violation when CheckEveryWrite is
// on and the write is an in-place rewrite of a table a key uses.
func (f *Fake) putTable(id lb.TableID, table []lb.BackendID) {
	if old, ok := f.st.Maglev[id]; f.checkEach && ok && len(old) == len(table) && !slices.Equal(old, table) {
		for _, k := range slices.SortedFunc(maps.Keys(f.st.Services), compareKey) {
			if e := f.st.Services[k]; e.Backends > 0 && e.ServiceID.Table(e.TableGen) == id {
				f.violations = append(f.violations, fmt.Errorf("maglev table %s rewritten in place while service key %s %s uses it",
					id, frontendString(k.Addr, k.Port, k.Protocol), k.Scope))
				break
			}
		}
	}
	f.st.Maglev[id] = slices.Clone(table)
}

func (f *Fake) DeleteMaglevs(ids []lb.TableID) error {
	return f.write(DeleteMaglevs, len(ids), func() error {
		for _, id := range ids {
			delete(f.st.Maglev, id)
		}
		return nil
	})
}

func (f *Fake) DeleteMaglev(id lb.TableID) error {
	return f.write(DeleteMaglev, id, func() error {
		delete(f.st.Maglev, id)
		return nil
	})
}

func (f *Fake) UpsertFrontend(id lb.FrontendID, e lb.FrontendEntry) error {
	return f.write(UpsertFrontend, id, func() error { return put(f.st.Frontends, id, e, checkFrontend) })
}

// UpsertFrontends is UpsertBackends for frontends.
func (f *Fake) UpsertFrontends(ids []lb.FrontendID, es []lb.FrontendEntry) (int, error) {
	return putEach(f, UpsertFrontends, f.st.Frontends, ids, es, checkFrontend)
}

func checkFrontend(id lb.FrontendID, e lb.FrontendEntry) error {
	return errors.Join(nonZero("frontend", id), nonZero("service", e.ServiceID))
}

func (f *Fake) DeleteFrontend(id lb.FrontendID) error {
	return f.write(DeleteFrontend, id, func() error {
		delete(f.st.Frontends, id)
		return nil
	})
}

func (f *Fake) UpsertSourceRange(id lb.ServiceID, p netip.Prefix) error {
	return f.write(UpsertSourceRange, p, func() error {
		if err := nonZero("service", id); err != nil {
			return err
		}
		if !p.IsValid() {
			return errors.New("invalid prefix")
		}
		if !slices.Contains(f.st.SourceRanges[id], p) {
			f.st.SourceRanges[id] = append(f.st.SourceRanges[id], p)
		}
		return nil
	})
}

func (f *Fake) DeleteSourceRange(id lb.ServiceID, p netip.Prefix) error {
	return f.write(DeleteSourceRange, p, func() error {
		rs := slices.DeleteFunc(f.st.SourceRanges[id], func(q netip.Prefix) bool { return q == p })
		if len(rs) == 0 {
			delete(f.st.SourceRanges, id)
		} else {
			f.st.SourceRanges[id] = rs
		}
		return nil
	})
}

func (f *Fake) UpsertService(k lb.ServiceKey, e lb.ServiceEntry) error {
	return f.write(UpsertService, k, func() error { return put(f.st.Services, k, e, checkService) })
}

// UpsertServices is UpsertBackends for service keys.
func (f *Fake) UpsertServices(ks []lb.ServiceKey, es []lb.ServiceEntry) (int, error) {
	return putEach(f, UpsertServices, f.st.Services, ks, es, checkService)
}

func checkService(_ lb.ServiceKey, e lb.ServiceEntry) error {
	return errors.Join(nonZero("service", e.ServiceID), nonZero("frontend", e.FrontendID))
}

func (f *Fake) DeleteService(k lb.ServiceKey) error {
	return f.write(DeleteService, k, func() error {
		delete(f.st.Services, k)
		return nil
	})
}

// Dump returns a deep copy of the content.
func (f *Fake) Dump() (*lb.DatapathState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[Dump]++
	return CloneState(f.st), nil
}

// CloneState deep-copies a datapath state.
func CloneState(s *lb.DatapathState) *lb.DatapathState {
	c := &lb.DatapathState{
		Services:     maps.Clone(s.Services),
		Backends:     maps.Clone(s.Backends),
		Frontends:    maps.Clone(s.Frontends),
		Maglev:       make(map[lb.TableID][]lb.BackendID, len(s.Maglev)),
		SourceRanges: make(map[lb.ServiceID][]netip.Prefix, len(s.SourceRanges)),
	}
	for id, t := range s.Maglev {
		c.Maglev[id] = slices.Clone(t)
	}
	for id, rs := range s.SourceRanges {
		c.SourceRanges[id] = slices.Clone(rs)
	}
	return c
}

// Plain hides every method of dp beyond lb.Datapath (such as the
// lb.MaglevBatcher ones), to test the code path for simple datapaths.
func Plain(dp lb.Datapath) lb.Datapath { return plain{dp} }

type plain struct{ lb.Datapath }
