package lb

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// syncRun is the state of one Sync call.
type syncRun struct {
	res     SyncResult
	queue   []ServiceName
	pending map[ServiceName]bool // in the queue, not processed yet
	errs    map[ServiceName]*ServiceError
	updated map[ServiceName]bool
}

// enqueue adds a service to this Sync's work unless it is already waiting
// there; a service processed earlier in this Sync is queued again.
func (run *syncRun) enqueue(name ServiceName) {
	if !run.pending[name] {
		run.pending[name] = true
		run.queue = append(run.queue, name)
	}
}

// Sync applies the services marked since the last Sync, in name order, and
// only those: its cost is that of the changed services, whatever the total.
// Each service is applied make-before-break and independently of the
// others; the returned error joins one *ServiceError per failed service.
// Services that failed on a datapath error stay marked and are retried by
// the next Sync.
//
// The services of a Sync go through the steps together, so that writes
// can be batched when the datapath is a MaglevBatcher or an EntryBatcher:
// all backends, all tables, all frontends, all source ranges, all keys,
// then per service its stale entries, then all stale tables. Each service
// sees its own steps in that order.
func (r *Reconciler) Sync() (SyncResult, error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()

	r.mu.Lock()
	dirty := r.dirty
	r.dirty = map[ServiceName]struct{}{}
	synced := r.synced
	r.mu.Unlock()

	run := &syncRun{
		pending: make(map[ServiceName]bool, len(dirty)),
		errs:    map[ServiceName]*ServiceError{},
		updated: make(map[ServiceName]bool, len(dirty)),
	}
	// Before anything of this Sync can retire more: only backends retired
	// by an earlier Sync are past the programs that could still read them.
	retiredErr := r.deleteRetired(run)
	for name := range dirty {
		run.enqueue(name)
	}
	slices.SortFunc(run.queue, compareName)
	// A round can release frontends that other services wait for; they
	// are queued again and take the frontends over in the next round.
	for len(run.queue) > 0 {
		batch := run.queue
		run.queue = nil
		for _, name := range batch {
			run.pending[name] = false
		}
		r.syncBatch(run, batch)
	}
	// Orphans go after the services: make-before-break across services,
	// and a service has adopted any orphan key it wants by now.
	var pruneErr error
	if synced && r.orphans != nil {
		pruneErr = r.prune(run)
	}

	var errs []error
	var retry []ServiceName
	for _, name := range slices.SortedFunc(maps.Keys(run.errs), compareName) {
		e := run.errs[name]
		errs = append(errs, e)
		if e.Retry {
			retry = append(retry, name)
		}
	}
	if pruneErr != nil {
		// r.orphans stays set, so the next Sync retries the prune.
		errs = append(errs, pruneErr)
	}
	if retiredErr != nil {
		// The backends stay retired, so the next Sync retries the deletes.
		errs = append(errs, retiredErr)
	}
	if len(retry) > 0 {
		r.mu.Lock()
		for _, name := range retry {
			r.dirty[name] = struct{}{}
		}
		r.mu.Unlock()
	}
	// Retired backends wait for the next Sync to delete them.
	run.res.Again = len(r.retired) > 0
	run.res.Updated = slices.SortedFunc(maps.Keys(run.updated), compareName)
	slices.SortFunc(run.res.Deleted, compareName)
	return run.res, errors.Join(errs...)
}

// job is one service's work in a round.
type job struct {
	w   writer
	p   *plan // nil: remove the service
	err error
}

func (j *job) alive() bool { return j.err == nil }

func (j *job) fail(err error) {
	if j.err == nil {
		j.err = err
	}
}

// syncBatch runs one round over the named services.
func (r *Reconciler) syncBatch(run *syncRun, names []ServiceName) {
	desired := make([]*Service, len(names))
	r.mu.Lock()
	for i, name := range names {
		desired[i] = r.desired[name]
	}
	r.mu.Unlock()
	// Validating and flattening are pure: spread them over the CPUs.
	flats := make([]*flatService, len(names))
	errs := make([]*ServiceError, len(names))
	forEach(len(names), func(i int) {
		if desired[i] != nil {
			flats[i], errs[i] = r.flattenDesired(desired[i])
		}
	})

	jobs := make([]*job, 0, len(names))
	for i, name := range names {
		j, err := r.prepare(run, name, desired[i] == nil, flats[i], errs[i])
		if err != nil {
			run.errs[name] = err
			continue
		}
		delete(run.errs, name)
		if j != nil {
			jobs = append(jobs, j)
		}
	}

	for _, j := range jobs {
		if j.p != nil {
			j.fail(j.w.assignIDs(j.p))
		}
	}
	r.writeBackends(jobs)
	r.writeTables(jobs)
	r.writeFrontends(jobs)
	for _, j := range jobs {
		if j.alive() && j.p != nil {
			j.fail(j.w.sourceRanges(j.p))
		}
	}
	r.writeKeys(jobs)
	for _, j := range jobs {
		if j.alive() {
			j.fail(j.w.removeStale(j.p))
		}
	}
	r.deleteTables(jobs)

	for _, j := range jobs {
		st := j.w.st
		if j.w.writes > 0 {
			run.updated[st.name] = true
		}
		if !j.alive() {
			run.errs[st.name] = &ServiceError{Service: st.name, Retry: true, Err: j.err}
		}
		if st.empty() {
			delete(r.applied, st.name)
			if j.p == nil && j.alive() {
				run.res.Deleted = append(run.res.Deleted, st.name)
			}
		}
	}
}

// flattenDesired validates and flattens a desired service. It only reads
// the reconciler's options, so it runs concurrently.
func (r *Reconciler) flattenDesired(s *Service) (*flatService, *ServiceError) {
	if err := Validate(s); err != nil {
		return nil, &ServiceError{Service: s.Name, Err: err}
	}
	flat, err := flatten(s, r.opts)
	if err != nil {
		return nil, &ServiceError{Service: s.Name, Err: err}
	}
	return flat, nil
}

// prepare decides a service's work from its flattened desired state (or
// its deletion): nil when there is none, an error when the service can't
// be applied (invalid, or in conflict with another). Nothing is written
// and no ID allocated yet.
func (r *Reconciler) prepare(run *syncRun, name ServiceName, deleted bool, flat *flatService, invalid *ServiceError) (*job, *ServiceError) {
	r.stopWaiting(name)
	st := r.applied[name]
	if deleted {
		if st == nil {
			return nil, nil
		}
		return &job{w: writer{r: r, run: run, st: st}}, nil
	}
	if invalid != nil {
		return nil, invalid
	}
	p := newPlan(flat)
	if err := r.checkClaims(name, p); err != nil {
		return nil, &ServiceError{Service: name, Err: err}
	}
	if st == nil {
		st = newSvcState(name, len(flat.frontends))
		r.applied[name] = st
	}
	r.claim(st, p)
	return &job{w: writer{r: r, run: run, st: st}, p: p}, nil
}

// checkClaims rejects a service that wants a key another service holds
// (desired or not yet deleted), and registers it to be woken when the key
// is released.
func (r *Reconciler) checkClaims(name ServiceName, p *plan) error {
	var errs []error
	var waits []ServiceKey
	for _, k := range p.keyOrder {
		owner, ok := r.claims[k]
		if !ok || owner == name {
			continue
		}
		waits = append(waits, k)
		errs = append(errs, fmt.Errorf("%w: frontend %s (%s key) is already served by service %s; remove it from one of the two services",
			ErrConflict, frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, owner))
	}
	if len(waits) == 0 {
		return nil
	}
	for _, k := range waits {
		if r.blocked[k] == nil {
			r.blocked[k] = map[ServiceName]struct{}{}
		}
		r.blocked[k][name] = struct{}{}
	}
	r.waitsFor[name] = waits
	return errors.Join(errs...)
}

// stopWaiting forgets the keys a service waited for; preparing it again
// registers what it still waits for.
func (r *Reconciler) stopWaiting(name ServiceName) {
	for _, k := range r.waitsFor[name] {
		delete(r.blocked[k], name)
		if len(r.blocked[k]) == 0 {
			delete(r.blocked, k)
		}
	}
	delete(r.waitsFor, name)
}

// claim records the service's keys as its own; a key left by an orphan is
// adopted (the upsert overwrites it, and the prune mustn't delete it).
func (r *Reconciler) claim(st *svcState, p *plan) {
	for _, k := range p.keyOrder {
		r.claims[k] = st.name
		st.addKey(k, keyState{})
		if r.orphans != nil {
			delete(r.orphans.keys, k)
		}
	}
}

// releaseKey drops a deleted key's claim and queues its waiters.
func (r *Reconciler) releaseKey(run *syncRun, k ServiceKey, owner ServiceName) {
	if r.claims[k] != owner {
		return
	}
	delete(r.claims, k)
	for _, name := range slices.SortedFunc(maps.Keys(r.blocked[k]), compareName) {
		run.enqueue(name)
	}
}
