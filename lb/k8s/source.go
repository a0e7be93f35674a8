package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weir-lb/weir/lb"
)

// Sink receives the source's output. The agent adapts its reconciler and
// runner into one; tests record the calls.
type Sink interface {
	Upsert(*lb.Service)
	Delete(lb.ServiceName)
	Replace([]*lb.Service)
	// Request asks for the changes to be applied (lb.Runner.Request).
	Request()
}

// Options are the node's settings.
type Options struct {
	// NodeName is this node's name in Kubernetes: endpoints on it are
	// Local, and its Node object gives the zone for topology hints.
	NodeName string
	// DefaultMode is the mode of services without a weir.io/lb-mode
	// annotation.
	DefaultMode lb.Mode
	// MaglevTableSize is the table size of services without a
	// weir.io/maglev-table-size annotation; zero leaves it to the node.
	MaglevTableSize uint32
	// NodePortAddresses restricts NodePort frontends to node addresses in
	// these prefixes (kube-proxy's --nodeport-addresses); empty means all.
	NodePortAddresses []netip.Prefix
	// NodeAddrs returns this node's addresses, loopback included. It is
	// called at start and after Refresh; nil means none (NodePorts are
	// then served on loopback only).
	NodeAddrs func() []netip.Addr
	// ServiceProxyName selects the services to serve by their
	// service.kubernetes.io/service-proxy-name label: "" serves those
	// without the label.
	ServiceProxyName string
	// ResyncPeriod is the informers' resync period; zero disables it.
	// Resyncs only re-check: unchanged services make no Sink call.
	ResyncPeriod time.Duration
	// OnHealthCheckPorts, when set, receives the health-check node ports
	// (see HealthCheckNodePorts) after the initial sync and after every
	// change of them, from the goroutine that calls the Sink.
	OnHealthCheckPorts func(map[lb.ServiceName]HealthCheckPort)
}

// HealthCheckPort is a service's kube-proxy style health check: an HTTP
// server on Port answers 200 while LocalEndpoints > 0.
type HealthCheckPort struct {
	Port uint16
	// LocalEndpoints counts the distinct addresses of ready endpoints on
	// this node, over all the service's ports and families.
	LocalEndpoints int
}

// Source watches the Kubernetes API and feeds a Sink. Create it with
// NewSource and start it with Run; the other methods are safe for
// concurrent use.
type Source struct {
	client kubernetes.Interface
	opts   Options
	sink   Sink
	log    *slog.Logger
	queue  *workQueue
	synced atomic.Bool

	// The worker's state. The worker writes it under mu; readers
	// (Services, HealthCheckNodePorts) take mu.
	mu        sync.Mutex
	cache     *caches
	emitted   map[types.NamespacedName]map[lb.ServiceName]*lb.Service
	hc        map[types.NamespacedName]HealthCheckPort
	nodePorts map[types.NamespacedName]struct{}
	warnings  map[types.NamespacedName]string
	nodeAddrs []netip.Addr
}

// NewSource returns a Source reading through client and writing to sink.
// A nil logger discards logs.
func NewSource(client kubernetes.Interface, opts Options, sink Sink, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{
		client:    client,
		opts:      opts,
		sink:      sink,
		log:       logger.With("source", "kubernetes"),
		queue:     newWorkQueue(),
		emitted:   map[types.NamespacedName]map[lb.ServiceName]*lb.Service{},
		hc:        map[types.NamespacedName]HealthCheckPort{},
		nodePorts: map[types.NamespacedName]struct{}{},
		warnings:  map[types.NamespacedName]string{},
	}
}

// Run starts the informers, waits for their caches, delivers the full
// state with Sink.Replace, then delivers changes until ctx is done. It
// returns an error when the caches can't sync (ctx ended first) and nil
// when ctx ends afterwards. Run must be called once.
func (s *Source) Run(ctx context.Context) error {
	if s.client == nil || s.sink == nil {
		return errors.New("kubernetes source: client and sink must be set (pass a clientset and the agent's sink to NewSource)")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := s.startInformers(ctx)
	if err != nil {
		return fmt.Errorf("kubernetes source: %w", err)
	}
	defer func() {
		cancel()
		c.wg.Wait() // the informers are gone when Run returns
	}()
	s.mu.Lock()
	s.cache = c
	s.mu.Unlock()

	start := time.Now()
	s.log.Info("waiting for the informer caches", "node", s.opts.NodeName, "service-proxy-name", s.opts.ServiceProxyName)
	if !c.waitForSync(ctx) {
		return errors.New("kubernetes source: caches of services, endpoint slices and nodes did not sync before shutdown (check the API server's address and the agent's RBAC: list and watch on services, endpointslices and nodes)")
	}
	s.initialSync(start)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.queue.ready():
			s.processBatch()
		}
	}
}

// HasSynced reports whether the initial Replace was delivered (it turns
// true as Sink.Replace returns).
func (s *Source) HasSynced() bool { return s.synced.Load() }

// Refresh re-reads this node's addresses (Options.NodeAddrs) and, if they
// changed, recomputes the services with NodePorts. The agent calls it on
// address changes; it never blocks.
func (s *Source) Refresh() { s.queue.refreshAddrs() }

// Services returns copies of the services last delivered, sorted by name.
func (s *Source) Services() []*lb.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*lb.Service
	for _, m := range s.emitted {
		for _, svc := range m {
			out = append(out, svc.Clone())
		}
	}
	sortServices(out)
	return out
}

// HealthCheckNodePorts returns the health checks this node must serve,
// keyed by lb.ServiceName{Namespace, Name} (Port empty, IPv6 false).
func (s *Source) HealthCheckNodePorts() map[lb.ServiceName]HealthCheckPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hcLocked()
}

func (s *Source) hcLocked() map[lb.ServiceName]HealthCheckPort {
	out := make(map[lb.ServiceName]HealthCheckPort, len(s.hc))
	for k, v := range s.hc {
		out[lb.ServiceName{Namespace: k.Namespace, Name: k.Name}] = v
	}
	return out
}

// NodeEligible reports whether this node should receive load-balancer
// traffic, as kube-proxy's /healthz judges it: its Node object exists, is
// not being deleted and has no ToBeDeletedByClusterAutoscaler taint.
// Before the node cache synced it returns false.
func (s *Source) NodeEligible() bool {
	s.mu.Lock()
	c := s.cache
	s.mu.Unlock()
	if c == nil || !c.nodes.HasSynced() {
		return false
	}
	return nodeEligible(c.node(s.opts.NodeName))
}

// initialSync computes every service and hands them over with Replace.
func (s *Source) initialSync(start time.Time) {
	// Events that arrived before now are in the caches already: the
	// informers update the cache before they call the handlers.
	s.queue.reset()
	addrs := s.readNodeAddrs()
	s.mu.Lock()
	s.nodeAddrs = addrs
	e := s.newEnv()
	var all []*lb.Service
	for _, key := range s.cache.serviceKeys() {
		want := s.computeLocked(key, e)
		for _, svc := range want {
			all = append(all, svc)
		}
	}
	hc := s.hcLocked()
	s.mu.Unlock()

	sortServices(all)
	out := make([]*lb.Service, len(all))
	for i, svc := range all {
		out[i] = svc.Clone()
	}
	s.sink.Replace(out)
	s.synced.Store(true)
	s.sink.Request()
	s.log.Info("kubernetes services synced", "service-ports", len(out), "health-checks", len(hc),
		"node-addresses", len(addrs), "zone", e.zone, "took", time.Since(start).Round(time.Millisecond))
	if s.opts.OnHealthCheckPorts != nil {
		s.opts.OnHealthCheckPorts(hc)
	}
}

// processBatch recomputes what the queued events touched and delivers the
// differences.
func (s *Source) processBatch() {
	w := s.queue.take()
	var addrs []netip.Addr
	if w.addrs {
		addrs = s.readNodeAddrs()
	}

	s.mu.Lock()
	if w.addrs && !slices.Equal(addrs, s.nodeAddrs) {
		s.log.Info("node addresses changed; recomputing NodePort services", "addresses", len(addrs), "services", len(s.nodePorts))
		s.nodeAddrs = addrs
		w.nodePorts = true
	}
	keys := s.expandLocked(w)
	e := s.newEnv()
	oldHC := maps.Clone(s.hc)
	var ops []sinkOp
	for _, key := range keys {
		ops = s.syncLocked(key, e, ops)
	}
	hcChanged := !maps.Equal(oldHC, s.hc)
	hc := s.hcLocked()
	s.mu.Unlock()

	// The Sink is called without the lock, so that it may call back.
	for _, op := range ops {
		if op.upsert != nil {
			s.sink.Upsert(op.upsert)
		} else {
			s.sink.Delete(op.delete)
		}
	}
	if len(ops) > 0 {
		s.sink.Request()
	}
	if hcChanged && s.opts.OnHealthCheckPorts != nil {
		s.opts.OnHealthCheckPorts(hc)
	}
}

// expandLocked turns queued work into the sorted service keys to
// recompute.
func (s *Source) expandLocked(w work) []types.NamespacedName {
	set := w.keys
	if w.all {
		for _, k := range s.cache.serviceKeys() {
			set[k] = struct{}{}
		}
		for k := range s.emitted {
			set[k] = struct{}{}
		}
	}
	if w.nodePorts {
		for k := range s.nodePorts {
			set[k] = struct{}{}
		}
	}
	for node := range w.nodes {
		for _, k := range s.cache.servicesOnNode(node) {
			set[k] = struct{}{}
		}
	}
	keys := slices.Collect(maps.Keys(set))
	slices.SortFunc(keys, compareKeys)
	return keys
}

// sinkOp is one Upsert (upsert set) or Delete to deliver.
type sinkOp struct {
	upsert *lb.Service
	delete lb.ServiceName
}

// syncLocked recomputes one Kubernetes service and appends the Sink calls
// for the lb.Services that changed to ops.
func (s *Source) syncLocked(key types.NamespacedName, e *env, ops []sinkOp) []sinkOp {
	old := s.emitted[key]
	want := s.computeLocked(key, e)
	for _, name := range sortedNames(want) {
		if prev, ok := old[name]; ok && servicesEqual(prev, want[name]) {
			continue
		}
		ops = append(ops, sinkOp{upsert: want[name].Clone()})
		s.log.Debug("service upserted", "service", name, "frontends", len(want[name].Frontends), "backends", len(want[name].Backends))
	}
	for _, name := range sortedNames(old) {
		if _, ok := want[name]; !ok {
			ops = append(ops, sinkOp{delete: name})
			s.log.Debug("service deleted", "service", name)
		}
	}
	return ops
}

// computeLocked builds the lb.Services of one Kubernetes service from the
// caches and records them (and its health check) as emitted.
func (s *Source) computeLocked(key types.NamespacedName, e *env) map[lb.ServiceName]*lb.Service {
	svc := s.cache.service(key)
	var (
		res  result
		skip string
	)
	if svc == nil {
		skip = "deleted"
	} else if skip = skipReason(svc, s.opts.ServiceProxyName); skip == "" {
		res = build(svc, s.cache.slicesOf(key), e)
	}
	if skip != "" && len(s.emitted[key]) > 0 {
		s.log.Debug("service no longer served", "service", key, "reason", skip)
	}
	s.logWarnings(key, res.warnings)

	if len(res.services) == 0 {
		delete(s.emitted, key)
	} else {
		s.emitted[key] = res.services
	}
	if res.hc != nil {
		s.hc[key] = *res.hc
	} else {
		delete(s.hc, key)
	}
	if res.hasNodePort {
		s.nodePorts[key] = struct{}{}
	} else {
		delete(s.nodePorts, key)
	}
	return res.services
}

// logWarnings logs a service's problems once, and again only when they
// change, so endpoint churn doesn't repeat them.
func (s *Source) logWarnings(key types.NamespacedName, warnings []string) {
	joined := fmt.Sprint(warnings)
	if len(warnings) == 0 {
		delete(s.warnings, key)
		return
	}
	if s.warnings[key] == joined {
		return
	}
	s.warnings[key] = joined
	for _, w := range warnings {
		s.log.Warn(w, "service", key.String())
	}
}

// newEnv snapshots the node-level inputs of a batch.
func (s *Source) newEnv() *env {
	return &env{
		nodeName:          s.opts.NodeName,
		zone:              s.cache.zone(s.opts.NodeName),
		nodeAddrs:         s.nodeAddrs,
		nodePortAddresses: s.opts.NodePortAddresses,
		defaultMode:       s.opts.DefaultMode,
		tableSize:         s.opts.MaglevTableSize,
		nodeIP:            s.cache.nodeIP,
	}
}

// readNodeAddrs calls Options.NodeAddrs and returns its addresses
// unmapped, sorted and without duplicates.
func (s *Source) readNodeAddrs() []netip.Addr {
	if s.opts.NodeAddrs == nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range s.opts.NodeAddrs() {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
