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

// ErrInjected is wrapped by every error a Faulty injects.
var ErrInjected = errors.New("lbtest: injected fault")

// Call describes one call a Faulty sees.
type Call struct {
	Method string
	// Seq counts all calls through the Faulty, from 1.
	Seq int
	// MethodSeq counts the calls of Method, from 1.
	MethodSeq int
	// Args are the call's arguments, e.g. (lb.BackendID, lb.BackendEntry).
	Args []any
}

// Faulty wraps an lb.Datapath and fails chosen calls with an error
// wrapping ErrInjected. A failed call doesn't reach the wrapped datapath,
// as a map update the kernel refused leaves the map unchanged, except a
// failed batch call (lb.MaglevBatcher and lb.EntryBatcher, which Faulty
// always offers): it applies the first half of its tables (in ID order)
// or entries (in the order given), as a real batch that fails midway
// does. A batch of entries is one call of its own method (UpsertBackends,
// ...), with the keys and entries as Args. Rules stay until Clear; the first matching rule fails
// the call.
type Faulty struct {
	inner lb.Datapath

	mu        sync.Mutex
	seq       int
	methodSeq map[string]int
	rules     []*faultRule
	injected  []Call
}

type faultRule struct {
	match func(Call) bool
	left  int // calls still to fail; < 0: unlimited
}

var (
	_ lb.Datapath      = (*Faulty)(nil)
	_ lb.MaglevBatcher = (*Faulty)(nil)
	_ lb.EntryBatcher  = (*Faulty)(nil)
)

// NewFaulty wraps inner, failing nothing until told.
func NewFaulty(inner lb.Datapath) *Faulty {
	return &Faulty{inner: inner, methodSeq: map[string]int{}}
}

// FailNth fails the n-th call (n >= 1) made after FailNth returns,
// whatever its method.
func (f *Faulty) FailNth(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	target := f.seq + n
	f.rules = append(f.rules, &faultRule{match: func(c Call) bool { return c.Seq == target }, left: 1})
}

// FailMethod fails the next times calls of method; times <= 0 fails all.
func (f *Faulty) FailMethod(method string, times int) {
	if times <= 0 {
		times = -1
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &faultRule{match: func(c Call) bool { return c.Method == method }, left: times})
}

// FailWhen fails every call for which match returns true. match runs with
// the Faulty's lock held: it must not call the Faulty.
func (f *Faulty) FailWhen(match func(Call) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &faultRule{match: match, left: -1})
}

// Clear removes every rule.
func (f *Faulty) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// Calls returns how many calls went through the Faulty, failed ones
// included.
func (f *Faulty) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// Injected returns the calls that were failed, in order.
func (f *Faulty) Injected() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.injected...)
}

// check counts a call and returns the injected error, if any.
func (f *Faulty) check(method string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	f.methodSeq[method]++
	c := Call{Method: method, Seq: f.seq, MethodSeq: f.methodSeq[method], Args: args}
	for _, r := range f.rules {
		if r.left == 0 || !r.match(c) {
			continue
		}
		if r.left > 0 {
			r.left--
		}
		f.injected = append(f.injected, c)
		return fmt.Errorf("%s (call %d, %s call %d): %w", method, c.Seq, method, c.MethodSeq, ErrInjected)
	}
	return nil
}

func (f *Faulty) UpsertBackend(id lb.BackendID, e lb.BackendEntry) error {
	if err := f.check(UpsertBackend, id, e); err != nil {
		return err
	}
	return f.inner.UpsertBackend(id, e)
}

func (f *Faulty) DeleteBackend(id lb.BackendID) error {
	if err := f.check(DeleteBackend, id); err != nil {
		return err
	}
	return f.inner.DeleteBackend(id)
}

func (f *Faulty) UpsertMaglev(id lb.TableID, t []lb.BackendID) error {
	if err := f.check(UpsertMaglev, id, t); err != nil {
		return err
	}
	return f.inner.UpsertMaglev(id, t)
}

func (f *Faulty) DeleteMaglev(id lb.TableID) error {
	if err := f.check(DeleteMaglev, id); err != nil {
		return err
	}
	return f.inner.DeleteMaglev(id)
}

func (f *Faulty) UpsertFrontend(id lb.FrontendID, e lb.FrontendEntry) error {
	if err := f.check(UpsertFrontend, id, e); err != nil {
		return err
	}
	return f.inner.UpsertFrontend(id, e)
}

func (f *Faulty) DeleteFrontend(id lb.FrontendID) error {
	if err := f.check(DeleteFrontend, id); err != nil {
		return err
	}
	return f.inner.DeleteFrontend(id)
}

func (f *Faulty) UpsertSourceRange(id lb.ServiceID, p netip.Prefix) error {
	if err := f.check(UpsertSourceRange, id, p); err != nil {
		return err
	}
	return f.inner.UpsertSourceRange(id, p)
}

func (f *Faulty) DeleteSourceRange(id lb.ServiceID, p netip.Prefix) error {
	if err := f.check(DeleteSourceRange, id, p); err != nil {
		return err
	}
	return f.inner.DeleteSourceRange(id, p)
}

func (f *Faulty) UpsertService(k lb.ServiceKey, e lb.ServiceEntry) error {
	if err := f.check(UpsertService, k, e); err != nil {
		return err
	}
	return f.inner.UpsertService(k, e)
}

func (f *Faulty) DeleteService(k lb.ServiceKey) error {
	if err := f.check(DeleteService, k); err != nil {
		return err
	}
	return f.inner.DeleteService(k)
}

func (f *Faulty) Dump() (*lb.DatapathState, error) {
	if err := f.check(Dump); err != nil {
		return nil, err
	}
	return f.inner.Dump()
}

// UpsertMaglevs passes the batch on, as a batch when the wrapped datapath
// takes one, else table by table.
func (f *Faulty) UpsertMaglevs(tables map[lb.TableID][]lb.BackendID) error {
	ids := slices.Sorted(maps.Keys(tables))
	if err := f.check(UpsertMaglevs, tables); err != nil {
		for _, id := range ids[:len(ids)/2] {
			_ = f.inner.UpsertMaglev(id, tables[id])
		}
		return err
	}
	if b, ok := f.inner.(lb.MaglevBatcher); ok {
		return b.UpsertMaglevs(tables)
	}
	for _, id := range ids {
		if err := f.inner.UpsertMaglev(id, tables[id]); err != nil {
			return err
		}
	}
	return nil
}

// DeleteMaglevs is UpsertMaglevs for deletes.
func (f *Faulty) DeleteMaglevs(ids []lb.TableID) error {
	sorted := slices.Sorted(slices.Values(ids))
	if err := f.check(DeleteMaglevs, ids); err != nil {
		for _, id := range sorted[:len(sorted)/2] {
			_ = f.inner.DeleteMaglev(id)
		}
		return err
	}
	if b, ok := f.inner.(lb.MaglevBatcher); ok {
		return b.DeleteMaglevs(ids)
	}
	for _, id := range sorted {
		if err := f.inner.DeleteMaglev(id); err != nil {
			return err
		}
	}
	return nil
}

func (f *Faulty) UpsertBackends(ids []lb.BackendID, es []lb.BackendEntry) (int, error) {
	return upsertBatch(f, UpsertBackends, ids, es, f.inner.UpsertBackend, lb.EntryBatcher.UpsertBackends)
}

func (f *Faulty) UpsertFrontends(ids []lb.FrontendID, es []lb.FrontendEntry) (int, error) {
	return upsertBatch(f, UpsertFrontends, ids, es, f.inner.UpsertFrontend, lb.EntryBatcher.UpsertFrontends)
}

func (f *Faulty) UpsertServices(ks []lb.ServiceKey, es []lb.ServiceEntry) (int, error) {
	return upsertBatch(f, UpsertServices, ks, es, f.inner.UpsertService, lb.EntryBatcher.UpsertServices)
}

// upsertBatch passes a batch of entries on, as a batch when the wrapped
// datapath takes one, else entry by entry. An injected failure writes the
// first half and reports that count.
func upsertBatch[K, V any](f *Faulty, method string, ks []K, es []V, one func(K, V) error, batch func(lb.EntryBatcher, []K, []V) (int, error)) (int, error) {
	if err := f.check(method, ks, es); err != nil {
		n, _ := upsertEach(ks[:len(ks)/2], es, one)
		return n, err
	}
	if b, ok := f.inner.(lb.EntryBatcher); ok {
		return batch(b, ks, es)
	}
	return upsertEach(ks, es, one)
}

func upsertEach[K, V any](ks []K, es []V, one func(K, V) error) (int, error) {
	for i, k := range ks {
		if err := one(k, es[i]); err != nil {
			return i, err
		}
	}
	return len(ks), nil
}
