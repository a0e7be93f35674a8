package lb

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/weir-lb/weir/maglev"
)

// ReconcilerOptions are the node-wide settings of a Reconciler.
type ReconcilerOptions struct {
	// DefaultTableSize is the Maglev table size of external views whose
	// service sets none; zero means maglev.DefaultTableSize.
	DefaultTableSize uint32
	// InternalTableSize is the table size of internal views; zero means
	// DefaultInternalTableSize.
	InternalTableSize uint32
	// Logger receives restore and prune summaries; nil discards them.
	Logger *slog.Logger
}

// ErrConflict marks a service rejected because another service already
// serves one of its frontends.
var ErrConflict = errors.New("frontend conflict")

// ServiceError is the failure of one service in a Sync.
type ServiceError struct {
	Service ServiceName
	// Retry is true for datapath failures: the service stays dirty and the
	// next Sync retries it. It is false for an invalid service or a
	// conflict, which wait for the desired state to change (a conflict is
	// retried by itself when the other service releases the frontend).
	Retry bool
	Err   error
}

func (e *ServiceError) Error() string {
	if e.Retry {
		return fmt.Sprintf("service %s: %v (will retry)", e.Service, e.Err)
	}
	return fmt.Sprintf("service %s not applied, its previous state keeps serving: %v", e.Service, e.Err)
}

func (e *ServiceError) Unwrap() error { return e.Err }

// RemovedBackend is a backend whose entry was deleted: connections still
// tracked to it are dead and their conntrack entries can go. A backend
// that leaves its service is deleted (and reported) by the Sync after the
// one that removed it from the tables (see retire).
type RemovedBackend struct {
	Service   ServiceName // zero for an orphan pruned after a restart
	ServiceID ServiceID
	BackendID BackendID
	Addr      netip.AddrPort
}

// SyncResult says what a Sync changed.
type SyncResult struct {
	// Updated are the services that got at least one write, sorted.
	Updated []ServiceName
	// Deleted are the services whose entries were all removed, sorted.
	Deleted         []ServiceName
	RemovedBackends []RemovedBackend
	// Pruned counts entries deleted because they belonged to no service.
	Pruned int
	// Writes counts datapath upserts and deletes that succeeded.
	Writes int
	// Again asks for another Sync soon: retired backends wait for it to
	// be deleted (see retire).
	Again bool
}

// Reconciler programs the desired services into a Datapath. See the
// package documentation for its guarantees. All methods are safe for
// concurrent use; Syncs are serialized, and Upsert, Delete and Replace
// don't wait for a running Sync.
type Reconciler struct {
	dp   Datapath
	opts flatOptions
	log  *slog.Logger

	mu          sync.Mutex // guards the desired side below
	desired     map[ServiceName]*Service
	dirty       map[ServiceName]struct{}
	unconfirmed map[ServiceName]struct{} // restored, awaiting the full desired state
	synced      bool                     // the full desired state arrived

	syncMu   sync.Mutex // serializes Sync; guards the applied side below
	applied  map[ServiceName]*svcState
	orphans  *orphanState // nil once pruned
	claims   map[ServiceKey]ServiceName
	blocked  map[ServiceKey]map[ServiceName]struct{} // services waiting for a key
	waitsFor map[ServiceName][]ServiceKey
	svcIDs   idAllocator
	feIDs    idAllocator
	beIDs    idAllocator
	slots    []uint32 // scratch for building tables
	// retired are backends no table names any more, deleted by the next
	// Sync (see retire); retiredOf counts them by service ID, and
	// heldSvcIDs are IDs of gone views released once theirs are deleted.
	retired    []RemovedBackend
	retiredOf  map[ServiceID]int
	heldSvcIDs map[ServiceID]bool
}

// NewReconciler reads the datapath's current content back (dp.Dump) and
// adopts it as the applied state, so a restart with an unchanged desired
// state performs no writes and keeps every ID. Entries that belong to no
// service are deleted by the first Sync after the full desired state
// arrived (Replace or MarkSynced), never before.
func NewReconciler(dp Datapath, opts ReconcilerOptions) (*Reconciler, error) {
	if dp == nil {
		return nil, errors.New("new reconciler: datapath is nil (pass the bpf datapath or lbtest.Fake)")
	}
	fo := flatOptions{defaultTableSize: opts.DefaultTableSize, internalTableSize: opts.InternalTableSize}
	if fo.defaultTableSize == 0 {
		fo.defaultTableSize = maglev.DefaultTableSize
	}
	if fo.internalTableSize == 0 {
		fo.internalTableSize = DefaultInternalTableSize
	}
	if err := maglev.ValidTableSize(fo.defaultTableSize); err != nil {
		return nil, fmt.Errorf("new reconciler: DefaultTableSize: %w", err)
	}
	if err := maglev.ValidTableSize(fo.internalTableSize); err != nil {
		return nil, fmt.Errorf("new reconciler: InternalTableSize: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reconciler{
		dp:          dp,
		opts:        fo,
		log:         log,
		desired:     map[ServiceName]*Service{},
		dirty:       map[ServiceName]struct{}{},
		unconfirmed: map[ServiceName]struct{}{},
		applied:     map[ServiceName]*svcState{},
		claims:      map[ServiceKey]ServiceName{},
		retiredOf:   map[ServiceID]int{},
		heldSvcIDs:  map[ServiceID]bool{},
		blocked:     map[ServiceKey]map[ServiceName]struct{}{},
		waitsFor:    map[ServiceName][]ServiceKey{},
		// A service ID shifted left by one names its tables (TableID).
		svcIDs: newIDAllocator("service", math.MaxUint32>>1),
		feIDs:  newIDAllocator("frontend", math.MaxUint32),
		beIDs:  newIDAllocator("backend", math.MaxUint32),
	}
	state, err := dp.Dump()
	if err != nil {
		return nil, fmt.Errorf("new reconciler: read the datapath's state back: %w", err)
	}
	r.restore(state)
	return r, nil
}

// Upsert records s as the desired state of its service and marks it for
// the next Sync. The reconciler keeps a copy; s may be reused.
func (r *Reconciler) Upsert(s *Service) {
	c := cloneService(s)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.desired[c.Name] = c
	r.dirty[c.Name] = struct{}{}
}

// Delete drops a service from the desired state; the next Sync removes
// its entries.
func (r *Reconciler) Delete(name ServiceName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.desired, name)
	r.dirty[name] = struct{}{}
}

// Replace sets the whole desired state (a config reload, a Kubernetes
// resync): services that differ from their desired state are marked, those
// not in all are deleted. It also marks the desired state complete (see
// MarkSynced). When all names a service twice, the last one counts.
func (r *Reconciler) Replace(all []*Service) {
	next := make(map[ServiceName]*Service, len(all))
	for _, s := range all {
		c := cloneService(s)
		next[c.Name] = c
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, s := range next {
		if old, ok := r.desired[name]; !ok || !reflect.DeepEqual(old, s) {
			r.dirty[name] = struct{}{}
		}
	}
	for name := range r.desired {
		if _, ok := next[name]; !ok {
			r.dirty[name] = struct{}{}
		}
	}
	r.desired = next
	r.markSyncedLocked()
}

// MarkSynced says the desired state is complete (every source delivered
// its initial list). Until then the reconciler adds and updates but never
// deletes what it found in the maps at start, so an agent restarting
// against a slow API server doesn't wipe services that are still wanted.
func (r *Reconciler) MarkSynced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.markSyncedLocked()
}

func (r *Reconciler) markSyncedLocked() {
	if r.synced {
		return
	}
	r.synced = true
	for name := range r.unconfirmed {
		if _, ok := r.desired[name]; !ok {
			r.dirty[name] = struct{}{}
		}
	}
	r.unconfirmed = nil
}

// Resync marks every desired service for the next Sync, which still
// writes only what differs from the applied bookkeeping.
func (r *Reconciler) Resync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.desired {
		r.dirty[name] = struct{}{}
	}
}

// VisitDesired calls fn with every desired service, in no order, holding
// the reconciler's lock: fn only reads the service, keeps no reference to
// it and doesn't call the Reconciler. It is for scans after every sync,
// where Services' copy of every service would cost O(N) allocations per
// change.
func (r *Reconciler) VisitDesired(fn func(*Service)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.desired {
		fn(s)
	}
}

// Services returns copies of the desired services, sorted by name.
func (r *Reconciler) Services() []*Service {
	r.mu.Lock()
	out := make([]*Service, 0, len(r.desired))
	for _, s := range r.desired {
		out = append(out, cloneService(s))
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b *Service) int { return compareName(a.Name, b.Name) })
	return out
}

// compareName orders names by namespace, name, port, then IPv6 last. It
// stops at the first field that differs: a Sync sorts every name twice.
func compareName(a, b ServiceName) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := strings.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return compareBool(a.IPv6, b.IPv6)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// cloneService copies s, marking its name IPv6 when its frontends are.
func cloneService(s *Service) *Service {
	c := s.Clone()
	if len(s.Frontends) > 0 {
		c.Name.IPv6 = !s.Frontends[0].Addr.Unmap().Is4()
	}
	return c
}
