package k8s

import (
	"cmp"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// workQueue collects what the informer handlers saw until the worker takes
// it. Handlers never block and never compute: a burst of events on one
// service collapses into one recomputation.
type workQueue struct {
	mu     sync.Mutex
	w      work
	signal chan struct{}
}

// work is one batch: services to recompute and the reasons to widen it.
type work struct {
	keys      map[types.NamespacedName]struct{}
	nodes     map[string]struct{} // nodes whose addresses changed
	all       bool                // this node's zone changed
	nodePorts bool                // recompute every service with a NodePort
	addrs     bool                // re-read this node's addresses
	// received is when the first event of the batch was handed to a
	// handler: the start of weir_change_apply_duration_seconds.
	received time.Time
	// triggers is, per service, the earliest EndpointSlice
	// last-change-trigger-time of the batch (kube-proxy's start of
	// network programming).
	triggers map[types.NamespacedName]time.Time
}

func newWorkQueue() *workQueue {
	q := &workQueue{signal: make(chan struct{}, 1)}
	q.w = emptyWork()
	return q
}

func emptyWork() work {
	return work{keys: map[types.NamespacedName]struct{}{}, nodes: map[string]struct{}{},
		triggers: map[types.NamespacedName]time.Time{}}
}

func (q *workQueue) add(f func(*work)) {
	now := time.Now()
	q.mu.Lock()
	if q.w.received.IsZero() {
		q.w.received = now
	}
	f(&q.w)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default: // already signalled; the worker takes everything at once
	}
}

func (q *workQueue) service(key types.NamespacedName) {
	q.add(func(w *work) { w.keys[key] = struct{}{} })
}

// serviceTriggered queues a service whose EndpointSlice carried a change
// trigger time.
func (q *workQueue) serviceTriggered(key types.NamespacedName, triggered time.Time) {
	q.add(func(w *work) {
		w.keys[key] = struct{}{}
		if t, ok := w.triggers[key]; !ok || triggered.Before(t) {
			w.triggers[key] = triggered
		}
	})
}

func (q *workQueue) node(name string) {
	q.add(func(w *work) { w.nodes[name] = struct{}{} })
}

func (q *workQueue) everything() { q.add(func(w *work) { w.all = true }) }

func (q *workQueue) refreshAddrs() { q.add(func(w *work) { w.addrs = true }) }

// ready is signalled when work may be waiting.
func (q *workQueue) ready() <-chan struct{} { return q.signal }

// take returns the queued work and empties the queue.
func (q *workQueue) take() work {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.w
	q.w = emptyWork()
	return w
}

// reset drops all queued work: the full recomputation that follows reads
// the caches and the node's addresses itself.
func (q *workQueue) reset() {
	q.mu.Lock()
	q.w = emptyWork()
	q.mu.Unlock()
}

func compareKeys(a, b types.NamespacedName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}
