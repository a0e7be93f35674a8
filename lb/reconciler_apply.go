package lb

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// plan is a flattened service being diffed against the bookkeeping. Its
// lists are sorted, so membership is a binary search: no per-sync index.
type plan struct {
	flat     *flatService
	keyOrder []ServiceKey // in frontend order
}

func newPlan(flat *flatService) *plan {
	p := &plan{flat: flat, keyOrder: make([]ServiceKey, 0, 2*len(flat.frontends))}
	for _, f := range flat.frontends {
		for _, scope := range f.keyScopes() {
			p.keyOrder = append(p.keyOrder, f.key(scope))
		}
	}
	return p
}

// coversAll reports whether the service owns nothing p doesn't want.
// Everything p wants is owned by now (IDs assigned, keys claimed), so equal
// counts mean nothing is stale, and the per-item scan can be skipped.
func (p *plan) coversAll(st *svcState) bool {
	if p == nil || len(st.keys) != len(p.keyOrder) || len(st.frontends) != len(p.flat.frontends) {
		return false
	}
	for scope, vs := range st.views {
		fv := p.flat.views[scope]
		if vs == nil {
			continue
		}
		if fv == nil || len(vs.backends) != len(fv.backends) || len(vs.ranges) != len(fv.sourceRanges) {
			return false
		}
	}
	return true
}

func (p *plan) frontend(id frontendIdent) (flatFrontend, bool) {
	if p == nil {
		return flatFrontend{}, false
	}
	i, ok := slices.BinarySearchFunc(p.flat.frontends, id, func(f flatFrontend, id frontendIdent) int {
		return compareIdent(f.ident(), id)
	})
	if !ok {
		return flatFrontend{}, false
	}
	return p.flat.frontends[i], true
}

func (p *plan) hasFrontend(id frontendIdent) bool {
	_, ok := p.frontend(id)
	return ok
}

func (p *plan) hasKey(k ServiceKey) bool {
	f, ok := p.frontend(frontendIdent{k.Addr, k.Port, k.Protocol})
	return ok && (k.Scope == ScopeInternal || f.Scope == ScopeExternal)
}

func (p *plan) hasBackend(scope int, ap netip.AddrPort) bool {
	v := p.view(Scope(scope))
	if v == nil {
		return false
	}
	_, ok := slices.BinarySearchFunc(v.backends, ap, func(b Backend, ap netip.AddrPort) int {
		return b.AddrPort().Compare(ap)
	})
	return ok
}

func (p *plan) hasRange(scope int, pr netip.Prefix) bool {
	v := p.view(Scope(scope))
	if v == nil {
		return false
	}
	_, ok := slices.BinarySearchFunc(v.sourceRanges, pr, comparePrefix)
	return ok
}

// view returns the flattened view of a scope; nil when the plan (nil:
// the service is being removed) has none.
func (p *plan) view(scope Scope) *flatView {
	if p == nil {
		return nil
	}
	return p.flat.views[scope]
}

// writer applies one service and counts its writes.
type writer struct {
	r      *Reconciler
	run    *syncRun
	st     *svcState
	writes int
}

func (w *writer) wrote() {
	w.writes++
	w.run.res.Writes++
}

// assignIDs gives every new view, backend and frontend an ID. The
// bookkeeping owns the ID from here on, before anything is written, so
// that a failure at any later point can't leak it.
func (w *writer) assignIDs(p *plan) error {
	r, st := w.r, w.st
	for scope, fv := range p.flat.views {
		if fv == nil {
			continue
		}
		vs := st.views[scope]
		if vs == nil {
			id, err := r.svcIDs.alloc()
			if err != nil {
				return fmt.Errorf("allocate a service ID for the %s view: %w (the node serves too many services)", Scope(scope), err)
			}
			vs = newViewState(ServiceID(id), len(fv.backends))
			st.views[scope] = vs
		}
		if err := r.addBackends(vs, fv.backends); err != nil {
			return err
		}
	}
	for _, f := range p.flat.frontends {
		if st.frontend(f.ident()) != nil {
			continue
		}
		id, err := r.feIDs.alloc()
		if err != nil {
			return fmt.Errorf("allocate a frontend ID for %s: %w (the node serves too many frontends)", f.ident(), err)
		}
		st.addFrontend(f.ident(), frontendState{id: FrontendID(id)})
	}
	return nil
}

// addBackends gives the view's new backends IDs and adds them to its
// sorted list (backends about to be removed are still in it). Even on
// error, every ID allocated is in the list.
func (r *Reconciler) addBackends(vs *viewState, want []Backend) error {
	known := len(vs.backends)
	defer func() {
		if len(vs.backends) > known {
			slices.SortFunc(vs.backends, compareViewBackend)
		}
	}()
	for _, b := range want {
		ap := b.AddrPort()
		if _, ok := findBackend(vs.backends[:known], ap); ok {
			continue
		}
		id, err := r.beIDs.alloc()
		if err != nil {
			return fmt.Errorf("allocate a backend ID for %s: %w (the node serves too many backends)", ap, err)
		}
		vs.backends = append(vs.backends, viewBackend{ap: ap, backendState: backendState{id: BackendID(id)}})
	}
	return nil
}

func (w *writer) sourceRanges(p *plan) error {
	ext := p.flat.views[ScopeExternal]
	if ext == nil {
		return nil
	}
	vs := w.st.views[ScopeExternal]
	for _, pr := range ext.sourceRanges {
		if vs.ranges[pr] {
			continue
		}
		vs.addRange(pr, false)
		if err := w.r.dp.UpsertSourceRange(vs.id, pr); err != nil {
			return fmt.Errorf("write source range %s of service ID %d: %w", pr, vs.id, err)
		}
		vs.ranges[pr] = true
		w.wrote()
	}
	return nil
}

// writeKey writes a key's entry and keeps its bookkeeping.
func (w *writer) writeKey(k ServiceKey, ks *keyState, e ServiceEntry) error {
	ks.try(e)
	if err := w.r.dp.UpsertService(k, e); err != nil {
		return err
	}
	ks.confirm(e)
	w.wrote()
	return nil
}

// removeStale deletes what the service owns but p doesn't want (p nil:
// everything), in the order that never leaves a reference dangling: keys,
// frontends, source ranges, backends (retired: deleted by the next Sync);
// the tables follow in deleteTables. IDs are released only after their
// entries' deletes succeeded.
func (w *writer) removeStale(p *plan) error {
	r, st := w.r, w.st
	if p.coversAll(st) {
		return nil
	}
	for i := 0; i < len(st.keys); {
		k := st.keys[i].k
		if p.hasKey(k) {
			i++
			continue
		}
		if err := r.dp.DeleteService(k); err != nil {
			return fmt.Errorf("delete service key %s (%s): %w", frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, err)
		}
		st.keys = slices.Delete(st.keys, i, i+1)
		r.releaseKey(w.run, k, st.name)
		w.wrote()
	}
	for i := 0; i < len(st.frontends); {
		f := st.frontends[i]
		if p.hasFrontend(f.ident) {
			i++
			continue
		}
		if err := r.dp.DeleteFrontend(f.id); err != nil {
			return fmt.Errorf("delete frontend %s (ID %d): %w", f.ident, f.id, err)
		}
		st.frontends = slices.Delete(st.frontends, i, i+1)
		r.feIDs.release(uint32(f.id))
		w.wrote()
	}
	for scope, vs := range st.views {
		if vs == nil {
			continue
		}
		keep := func(pr netip.Prefix) bool { return p.hasRange(scope, pr) }
		for _, pr := range stale(vs.ranges, comparePrefix, keep) {
			if err := r.dp.DeleteSourceRange(vs.id, pr); err != nil {
				return fmt.Errorf("delete source range %s of service ID %d: %w", pr, vs.id, err)
			}
			delete(vs.ranges, pr)
			w.wrote()
		}
	}
	for scope, vs := range st.views {
		if vs == nil {
			continue
		}
		if err := w.removeStaleBackends(vs, func(ap netip.AddrPort) bool { return p.hasBackend(scope, ap) }); err != nil {
			return err
		}
	}
	return nil
}

// removeStaleBackends retires the view's backends that keep rejects, in
// address order: they leave the view's list, but their entries stay until
// the next Sync, because a program may still read them through the table
// this Sync just switched away from (see retire).
func (w *writer) removeStaleBackends(vs *viewState, keep func(netip.AddrPort) bool) error {
	vs.backends = slices.DeleteFunc(vs.backends, func(b viewBackend) bool {
		if keep(b.ap) {
			return false
		}
		w.retire(vs, &b)
		return true
	})
	return nil
}

func compareServiceKey(a, b ServiceKey) int {
	return cmp.Or(
		compareIdent(frontendIdent{a.Addr, a.Port, a.Protocol}, frontendIdent{b.Addr, b.Port, b.Protocol}),
		cmp.Compare(a.Scope, b.Scope))
}

// stale returns the keys of m that keep rejects, sorted so that deletes
// happen in a deterministic order (golden tests, fault injection by call
// number).
func stale[K comparable, V any](m map[K]V, cmp func(a, b K) int, keep func(K) bool) []K {
	var keys []K
	for k := range m {
		if !keep(k) {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, cmp)
	return keys
}
