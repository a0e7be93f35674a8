package lb

import (
	"errors"
	"fmt"
)

// A backend that leaves a service is retired rather than deleted: its
// entry and its ID stay until the next Sync. The table switch that drops
// it is one map write, but a program on another CPU that read the service
// entry just before may still pick from the old table for the
// microseconds it runs; deleting the backend then rejects that new flow,
// and releasing its ID lets another service's new backend take it in the
// same Sync, sending that flow to the wrong backend. The next Sync comes
// at least the runner's minimum period later, far longer than any program
// runs, so by then nothing can hold the old table any more.

// retire takes a backend no table of the view names any more out of the
// view and keeps its entry and ID until the next Sync (deleteRetired).
func (w *writer) retire(vs *viewState, b *viewBackend) {
	r := w.r
	r.retired = append(r.retired, RemovedBackend{Service: w.st.name, ServiceID: vs.id, BackendID: b.id, Addr: b.ap})
	r.retiredOf[vs.id]++
}

// deleteRetired deletes the backends retired by earlier Syncs, releases
// their IDs and reports them as removed. It runs first in a Sync, before
// anything of this Sync can retire more. A failed delete keeps the backend
// retired for the next Sync.
func (r *Reconciler) deleteRetired(run *syncRun) error {
	if len(r.retired) == 0 {
		return nil
	}
	var errs []error
	kept := r.retired[:0]
	for _, b := range r.retired {
		if err := r.dp.DeleteBackend(b.BackendID); err != nil {
			errs = append(errs, fmt.Errorf("delete retired backend %s (ID %d) of service ID %d: %w", b.Addr, b.BackendID, b.ServiceID, err))
			kept = append(kept, b)
			continue
		}
		r.beIDs.release(uint32(b.BackendID))
		run.res.RemovedBackends = append(run.res.RemovedBackends, b)
		run.res.Writes++
		if r.retiredOf[b.ServiceID]--; r.retiredOf[b.ServiceID] == 0 {
			delete(r.retiredOf, b.ServiceID)
			r.releaseHeldServiceID(b.ServiceID)
		}
	}
	clear(r.retired[len(kept):])
	r.retired = kept
	return errors.Join(errs...)
}

// releaseServiceID releases the ID of a view that is gone, or holds it
// while backends retired from the view still carry it: the programs check
// a backend's service ID against the service's, so another service must
// not get it before those backends are deleted.
func (r *Reconciler) releaseServiceID(id ServiceID) {
	if r.retiredOf[id] > 0 {
		r.heldSvcIDs[id] = true
		return
	}
	r.svcIDs.release(uint32(id))
}

// releaseHeldServiceID releases a service ID held by releaseServiceID once
// its last retired backend is deleted.
func (r *Reconciler) releaseHeldServiceID(id ServiceID) {
	if r.heldSvcIDs[id] {
		delete(r.heldSvcIDs, id)
		r.svcIDs.release(uint32(id))
	}
}
