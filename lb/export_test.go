package lb

// IDsInUse reports how many IDs of each kind the reconciler holds, so that
// tests can check that no failure leaks one.
func (r *Reconciler) IDsInUse() (services, frontends, backends int) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	return r.svcIDs.inUse, r.feIDs.inUse, r.beIDs.inUse
}
