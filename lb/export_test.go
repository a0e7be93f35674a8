package lb

// IDsInUse reports how many IDs of each kind the reconciler holds, so that
// tests can check that no failure leaks one.
func (r *Reconciler) IDsInUse() (services, frontends, backends int) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	return r.svcIDs.inUse, r.feIDs.inUse, r.beIDs.inUse
}

// DeferredTables reports how many built tables the reconciler keeps for
// the spare generations the next Sync writes.
func (r *Reconciler) DeferredTables() int {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	return len(r.deferred)
}
