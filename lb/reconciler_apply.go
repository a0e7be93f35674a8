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
		// One allocation for the view's new backends, not one each. Count
		// them first: backends about to be removed are still in vs.
		missing := 0
		for _, b := range fv.backends {
			if vs.backends[b.AddrPort()] == nil {
				missing++
			}
		}
		slab := make([]backendState, missing)
		for _, b := range fv.backends {
			ap := b.AddrPort()
			if vs.backends[ap] != nil {
				continue
			}
			id, err := r.beIDs.alloc()
			if err != nil {
				return fmt.Errorf("allocate a backend ID for %s: %w (the node serves too many backends)", ap, err)
			}
			bs := &slab[0]
			slab = slab[1:]
			*bs = backendState{id: BackendID(id), key: ap.String()}
			vs.backends[ap] = bs
		}
	}
	for _, f := range p.flat.frontends {
		if st.frontends[f.ident()] != nil {
			continue
		}
		id, err := r.feIDs.alloc()
		if err != nil {
			return fmt.Errorf("allocate a frontend ID for %s: %w (the node serves too many frontends)", f.ident(), err)
		}
		st.frontends[f.ident()] = &frontendState{id: FrontendID(id)}
	}
	return nil
}

func (w *writer) backends(p *plan) error {
	for scope, fv := range p.flat.views {
		if fv == nil {
			continue
		}
		vs := w.st.views[scope]
		for _, b := range fv.backends {
			bs := vs.backends[b.AddrPort()]
			want := BackendEntry{ServiceID: vs.id, Addr: b.Addr, Port: b.Port, Tunnel: b.Tunnel, Weight: b.Weight, State: b.State}
			if bs.ok && bs.entry == want {
				continue
			}
			bs.ok = false
			if err := w.r.dp.UpsertBackend(bs.id, want); err != nil {
				return fmt.Errorf("write backend %s (ID %d) of service ID %d: %w", b.AddrPort(), bs.id, vs.id, err)
			}
			bs.entry, bs.ok = want, true
			w.wrote()
		}
	}
	return nil
}

func (w *writer) frontends(p *plan) error {
	svc, port := entryName(w.st.name)
	for _, f := range p.flat.frontends {
		fs := w.st.frontends[f.ident()]
		want := FrontendEntry{
			ServiceID: w.st.views[f.Scope].id,
			Addr:      f.Addr,
			Port:      f.Port,
			Protocol:  f.Protocol,
			Scope:     f.Scope,
			Kind:      f.Kind,
			Service:   svc,
			PortName:  port,
		}
		if fs.ok && fs.entry == want {
			continue
		}
		fs.ok = false
		if err := w.r.dp.UpsertFrontend(fs.id, want); err != nil {
			return fmt.Errorf("write frontend %s (ID %d): %w", f.ident(), fs.id, err)
		}
		fs.entry, fs.ok = want, true
		w.wrote()
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
		vs.ranges[pr] = false
		if err := w.r.dp.UpsertSourceRange(vs.id, pr); err != nil {
			return fmt.Errorf("write source range %s of service ID %d: %w", pr, vs.id, err)
		}
		vs.ranges[pr] = true
		w.wrote()
	}
	return nil
}

func (w *writer) keys(p *plan) error {
	for _, f := range p.flat.frontends {
		fs := w.st.frontends[f.ident()]
		for _, scope := range f.keyScopes() {
			k := f.key(scope)
			fv, vs := p.flat.views[scope], w.st.views[scope]
			want := ServiceEntry{
				ServiceID:       vs.id,
				FrontendID:      fs.id,
				Backends:        uint32(len(fv.usable)),
				TableSize:       fv.tableSize,
				TableGen:        vs.active,
				Mode:            fv.mode,
				Flags:           fv.flags,
				AffinityTimeout: fv.affinityTimeout,
			}
			ks := w.st.keys[k]
			if ks.ok && ks.entry == want {
				continue
			}
			if err := w.writeKey(k, ks, want); err != nil {
				return fmt.Errorf("write service key %s (%s): %w", f.ident(), scope, err)
			}
		}
	}
	return nil
}

// writeKey writes a key's entry and keeps its bookkeeping.
func (w *writer) writeKey(k ServiceKey, ks *keyState, e ServiceEntry) error {
	ks.ok, ks.tried = false, e
	if err := w.r.dp.UpsertService(k, e); err != nil {
		return err
	}
	ks.entry, ks.ok, ks.tried = e, true, ServiceEntry{}
	w.wrote()
	return nil
}

// removeStale deletes what the service owns but p doesn't want (p nil:
// everything), in the order that never leaves a reference dangling: keys,
// frontends, source ranges, backends; the tables follow in deleteTables.
// IDs are released only after their entries' deletes succeeded.
func (w *writer) removeStale(p *plan) error {
	r, st := w.r, w.st
	if p.coversAll(st) {
		return nil
	}
	for _, k := range stale(st.keys, compareServiceKey, p.hasKey) {
		if err := r.dp.DeleteService(k); err != nil {
			return fmt.Errorf("delete service key %s (%s): %w", frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, err)
		}
		delete(st.keys, k)
		r.releaseKey(w.run, k, st.name)
		w.wrote()
	}
	for _, id := range stale(st.frontends, compareIdent, p.hasFrontend) {
		fs := st.frontends[id]
		if err := r.dp.DeleteFrontend(fs.id); err != nil {
			return fmt.Errorf("delete frontend %s (ID %d): %w", id, fs.id, err)
		}
		delete(st.frontends, id)
		r.feIDs.release(uint32(fs.id))
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
		keep := func(ap netip.AddrPort) bool { return p.hasBackend(scope, ap) }
		for _, ap := range stale(vs.backends, netip.AddrPort.Compare, keep) {
			bs := vs.backends[ap]
			if err := r.dp.DeleteBackend(bs.id); err != nil {
				return fmt.Errorf("delete backend %s (ID %d) of service ID %d: %w", ap, bs.id, vs.id, err)
			}
			delete(vs.backends, ap)
			r.beIDs.release(uint32(bs.id))
			w.run.res.RemovedBackends = append(w.run.res.RemovedBackends,
				RemovedBackend{Service: st.name, ServiceID: vs.id, BackendID: bs.id, Addr: ap})
			w.wrote()
		}
	}
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
