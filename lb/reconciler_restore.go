package lb

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// restore adopts the datapath's content as the applied state. Ownership
// is read from the entries themselves: a frontend entry names its service
// and port; a key belongs to its frontend's service, and its scope and
// ServiceID name one view of it; backends, tables and source ranges belong
// to the view of their ServiceID. What can't be placed is an orphan.
// Addresses are compared unmapped, as flatten writes them.
func (r *Reconciler) restore(s *DatapathState) {
	o := newOrphanState()
	type viewOwner struct {
		name  ServiceName
		scope Scope
	}
	owners := map[ServiceID]viewOwner{}
	seenSIDs := map[ServiceID]bool{}
	hint := func(id ServiceID, name ServiceName, scope Scope) {
		seenSIDs[id] = true
		if _, ok := owners[id]; !ok && id != 0 && scope <= ScopeInternal {
			owners[id] = viewOwner{name, scope}
		}
	}
	state := func(name ServiceName) *svcState {
		st := r.applied[name]
		if st == nil {
			st = newSvcState(name, 1)
			r.applied[name] = st
		}
		return st
	}

	feOwner := map[FrontendID]ServiceName{}
	for _, id := range slices.Sorted(maps.Keys(s.Frontends)) {
		fe := s.Frontends[id]
		fe.Addr = fe.Addr.Unmap()
		name := parseEntryName(fe.Service, fe.PortName)
		name.IPv6 = !fe.Addr.Is4()
		ident := frontendIdent{fe.Addr, fe.Port, fe.Protocol}
		seenSIDs[fe.ServiceID] = true
		if name.Name == "" || (r.applied[name] != nil && r.applied[name].frontend(ident) != nil) {
			o.frontends[id] = true
			continue
		}
		state(name).addFrontend(ident, frontendState{id: id, entry: fe, ok: true})
		feOwner[id] = name
		hint(fe.ServiceID, name, fe.Scope)
	}
	for _, k := range slices.SortedFunc(maps.Keys(s.Services), compareServiceKey) {
		e := s.Services[k]
		k.Addr = k.Addr.Unmap()
		seenSIDs[e.ServiceID] = true
		name, ok := feOwner[e.FrontendID]
		if !ok {
			o.keys[k] = true
			continue
		}
		state(name).addKey(k, keyState{entry: e, ok: true})
		r.claims[k] = name
		hint(e.ServiceID, name, k.Scope)
	}

	views := map[ServiceID]*viewState{}
	for _, id := range slices.Sorted(maps.Keys(owners)) {
		ow := owners[id]
		st := r.applied[ow.name]
		if st.views[ow.scope] == nil {
			st.views[ow.scope] = newViewState(id, 0)
			views[id] = st.views[ow.scope]
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Backends)) {
		be := s.Backends[id]
		be.Addr, be.Tunnel = be.Addr.Unmap(), be.Tunnel.Unmap()
		seenSIDs[be.ServiceID] = true
		v := views[be.ServiceID]
		if v == nil {
			o.backends[id] = be
			continue
		}
		vb := viewBackend{ap: netip.AddrPortFrom(be.Addr, be.Port), backendState: backendState{id: id}}
		vb.confirm(be)
		v.backends = append(v.backends, vb)
	}
	for _, v := range views {
		restoreBackendOrder(v, o)
	}
	for tid, slots := range s.Maglev {
		id := tid.Service()
		seenSIDs[id] = true
		v := views[id]
		if v == nil {
			o.tables[tid] = true
			continue
		}
		v.tables[tid.Gen()] = tableState{present: true, ok: true, size: uint32(len(slots)), hash: hashTable(slots)}
	}
	restoreActive(views, s.Services)
	for id, prefixes := range s.SourceRanges {
		seenSIDs[id] = true
		v := views[id]
		if v == nil {
			o.ranges[id] = slices.Clone(prefixes)
			continue
		}
		for _, p := range prefixes {
			v.addRange(normalizePrefix(p), true)
		}
	}
	for id := range seenSIDs {
		if views[id] == nil && id != 0 {
			o.serviceIDs[id] = true
		}
	}

	r.svcIDs.restore(append(idsOf(views), idsOf(o.serviceIDs)...))
	r.feIDs.restore(idsOf(s.Frontends))
	r.beIDs.restore(idsOf(s.Backends))
	for name := range r.applied {
		r.unconfirmed[name] = struct{}{}
	}
	if !o.empty() {
		r.orphans = o
	}
	if len(r.applied) > 0 || r.orphans != nil {
		r.log.Info("restored the applied state from the datapath",
			"services", len(r.applied), "backends", len(s.Backends), "orphan keys", len(o.keys),
			"orphan frontends", len(o.frontends), "orphan backends", len(o.backends), "orphan tables", len(o.tables))
	}
}

// restoreBackendOrder sorts a restored view's backends, which arrived in
// ID order. Of two entries for one address the lower ID stays (the first
// written); the other is an orphan.
func restoreBackendOrder(v *viewState, o *orphanState) {
	slices.SortStableFunc(v.backends, compareViewBackend)
	kept := v.backends[:0]
	for _, b := range v.backends {
		if n := len(kept); n > 0 && kept[n-1].ap == b.ap {
			o.backends[b.id] = BackendEntry{ServiceID: v.id, Addr: b.ap.Addr(), Port: b.ap.Port(), Tunnel: b.tunnel, Weight: b.weight, State: b.state}
			continue
		}
		kept = append(kept, b)
	}
	clear(v.backends[len(kept):])
	v.backends = kept
}

// restoreActive sets each view's live generation from its keys: the
// generation the first key with backends names whose table exists, else
// the first key's, else a generation that has a table. Keys that name
// another (a crash halfway through a switch) are rewritten by the next
// Sync of their service.
func restoreActive(views map[ServiceID]*viewState, keys map[ServiceKey]ServiceEntry) {
	rank := map[ServiceID]int{} // how good the generation found so far is; 0: none
	for _, k := range slices.SortedFunc(maps.Keys(keys), compareServiceKey) {
		e := keys[k]
		v := views[e.ServiceID]
		if v == nil {
			continue
		}
		gen := e.TableGen & 1
		r := 1
		if e.Backends > 0 && v.tables[gen].present {
			r = 2
		}
		if r > rank[e.ServiceID] {
			v.active, rank[e.ServiceID] = gen, r
		}
	}
	for id, v := range views {
		if rank[id] == 0 && !v.tables[0].present && v.tables[1].present {
			v.active = 1
		}
	}
}

func idsOf[K ~uint32, V any](m map[K]V) []uint32 {
	ids := make([]uint32, 0, len(m))
	for k := range m {
		ids = append(ids, uint32(k))
	}
	return ids
}

// parseEntryName inverts entryName. A Kubernetes namespace has no "/", so
// the first one separates it from the name.
func parseEntryName(service, port string) ServiceName {
	if ns, name, ok := strings.Cut(service, "/"); ok {
		return ServiceName{Namespace: ns, Name: name, Port: port}
	}
	return ServiceName{Name: service, Port: port}
}

// prune deletes the orphans found at start, in the same order as stale
// entries of a service. It runs after the full desired state arrived and
// after the Sync's services, so a service has already adopted the keys it
// wants. A failure leaves the rest for the next Sync.
func (r *Reconciler) prune(run *syncRun) error {
	o := r.orphans
	done := func() { run.res.Pruned++; run.res.Writes++ }
	for _, k := range slices.SortedFunc(maps.Keys(o.keys), compareServiceKey) {
		if err := r.dp.DeleteService(k); err != nil {
			return fmt.Errorf("prune orphan service key %s (%s): %w", frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, err)
		}
		delete(o.keys, k)
		done()
	}
	for _, id := range slices.Sorted(maps.Keys(o.frontends)) {
		if err := r.dp.DeleteFrontend(id); err != nil {
			return fmt.Errorf("prune orphan frontend ID %d: %w", id, err)
		}
		delete(o.frontends, id)
		r.feIDs.release(uint32(id))
		done()
	}
	for _, id := range slices.Sorted(maps.Keys(o.ranges)) {
		for len(o.ranges[id]) > 0 {
			p := o.ranges[id][0]
			if err := r.dp.DeleteSourceRange(id, p); err != nil {
				return fmt.Errorf("prune orphan source range %s of service ID %d: %w", p, id, err)
			}
			o.ranges[id] = o.ranges[id][1:]
			done()
		}
		delete(o.ranges, id)
	}
	for _, id := range slices.Sorted(maps.Keys(o.backends)) {
		be := o.backends[id]
		if err := r.dp.DeleteBackend(id); err != nil {
			return fmt.Errorf("prune orphan backend %s (ID %d): %w", netip.AddrPortFrom(be.Addr, be.Port), id, err)
		}
		delete(o.backends, id)
		r.beIDs.release(uint32(id))
		run.res.RemovedBackends = append(run.res.RemovedBackends,
			RemovedBackend{ServiceID: be.ServiceID, BackendID: id, Addr: netip.AddrPortFrom(be.Addr, be.Port)})
		done()
	}
	ids := slices.Sorted(maps.Keys(o.tables))
	errs := r.deleteMaglevs(ids)
	for _, id := range ids {
		if errs[id] == nil {
			delete(o.tables, id)
			done()
		}
	}
	for _, id := range ids {
		if err := errs[id]; err != nil {
			return fmt.Errorf("prune orphan Maglev table %s: %w", id, err)
		}
	}
	for id := range o.serviceIDs {
		r.svcIDs.release(uint32(id))
	}
	r.orphans = nil
	if run.res.Pruned > 0 {
		r.log.Info("pruned datapath entries that belong to no service", "entries", run.res.Pruned)
	}
	return nil
}
