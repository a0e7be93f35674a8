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
// runner into one; tests record the calls. The services passed are the
// source's own record of what it emitted: a Sink must not modify them
// (the reconciler copies what it keeps), which saves a copy of every
// service.
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
	// OnChange, when set, receives the timing of every batch handed to
	// the Sink, just before its Sink.Request (and of the initial
	// Replace), for latency metrics.
	OnChange func(Change)
}

// Change is the timing of one batch of Sink calls.
type Change struct {
	// Initial marks the initial Replace; Received is then when the
	// informer caches synced.
	Initial bool
	// Received is when an informer handler saw the batch's first event.
	Received time.Time
	// Triggered holds, for each changed Kubernetes service whose
	// EndpointSlice carried one, the earliest
	// endpoints.kubernetes.io/last-change-trigger-time of the batch
	// (set by the EndpointSlice controller: when the pod or service
	// changed).
	Triggered []time.Time
}

// HealthCheckPort is a service's kube-proxy style health check: an HTTP
// server on Port answers 200 while the family it is asked over has local
// endpoints. As with kube-proxy's one proxier per family, a load balancer
// probing the node's IPv6 address must not be told "healthy" because of
// an IPv4 endpoint: its IPv6 traffic would find nothing local.
type HealthCheckPort struct {
	Port uint16
	// LocalEndpoints counts the distinct addresses of ready endpoints on
	// this node, over all the service's ports, of IPv4 (LocalEndpoints)
	// and IPv6 (LocalEndpointsV6).
	LocalEndpoints   int
	LocalEndpointsV6 int
}

// Local is the count of the family v6 says.
func (h HealthCheckPort) Local(v6 bool) int {
	if v6 {
		return h.LocalEndpointsV6
	}
	return h.LocalEndpoints
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
	// started is when Run began; older trigger times are not changes.
	started time.Time

	// The worker's state. The worker writes it under mu; readers
	// (Services, HealthCheckNodePorts) take mu.
	mu        sync.Mutex
	cache     *caches
	emitted   map[types.NamespacedName][]emitted
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
		emitted:   map[types.NamespacedName][]emitted{},
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
	s.started = time.Now()
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
	synced := time.Now()
	s.log.Info("informer caches synced", "took", synced.Sub(start).Round(time.Millisecond))
	s.initialSync(start, synced)
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

// Services returns the services delivered, translated again from the
// caches (the source keeps only fingerprints of what it delivered),
// sorted by name. Between a change and its delivery they may be ahead of
// what the Sink has.
func (s *Source) Services() []*lb.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		return nil
	}
	e := s.newEnv()
	var out []*lb.Service
	for key := range s.emitted {
		for _, svc := range s.translateLocked(key, e).services {
			out = append(out, svc)
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

// initialSync computes every service and hands them over with Replace;
// cachesSynced is when the informers' caches synced.
func (s *Source) initialSync(start, cachesSynced time.Time) {
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
	s.sink.Replace(all)
	s.synced.Store(true)
	if s.opts.OnChange != nil {
		s.opts.OnChange(Change{Initial: true, Received: cachesSynced})
	}
	s.sink.Request()
	s.log.Info("kubernetes services synced", "service-ports", len(all), "health-checks", len(hc),
		"node-addresses", len(addrs), "zone", e.zone, "took", time.Since(start).Round(time.Millisecond),
		"since-caches-synced", time.Since(cachesSynced).Round(time.Millisecond))
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
	var (
		ops       []sinkOp
		triggered []time.Time
	)
	for _, key := range keys {
		n := len(ops)
		ops = s.syncLocked(key, e, ops)
		if t, ok := w.triggers[key]; ok && len(ops) > n {
			triggered = append(triggered, t)
		}
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
		if s.opts.OnChange != nil {
			s.opts.OnChange(Change{Received: w.received, Triggered: triggered})
		}
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
	now := s.emitted[key]
	for _, n := range now {
		if i, ok := findEmitted(old, n.name); ok && old[i].fp == n.fp {
			continue
		}
		svc := want[n.name]
		ops = append(ops, sinkOp{upsert: svc})
		s.log.Debug("service upserted", "service", n.name, "frontends", len(svc.Frontends), "backends", len(svc.Backends))
	}
	for _, o := range old {
		if _, ok := findEmitted(now, o.name); !ok {
			ops = append(ops, sinkOp{delete: o.name})
			s.log.Debug("service deleted", "service", o.name)
		}
	}
	return ops
}

// emitted is what the source remembers of a delivered lb.Service.
type emitted struct {
	name lb.ServiceName
	fp   fingerprint
}

// emittedOf lists the services by name with their fingerprints.
func emittedOf(svcs map[lb.ServiceName]*lb.Service) []emitted {
	out := make([]emitted, 0, len(svcs))
	for _, name := range sortedNames(svcs) {
		out = append(out, emitted{name: name, fp: fingerprintOf(svcs[name])})
	}
	return out
}

// findEmitted finds a name in a list sorted by name.
func findEmitted(list []emitted, name lb.ServiceName) (int, bool) {
	return slices.BinarySearchFunc(list, name, func(e emitted, n lb.ServiceName) int { return compareNames(e.name, n) })
}

// computeLocked builds the lb.Services of one Kubernetes service from the
// caches and records them (and its health check) as emitted.
func (s *Source) computeLocked(key types.NamespacedName, e *env) map[lb.ServiceName]*lb.Service {
	res := s.translateLocked(key, e)
	if res.skip != "" && len(s.emitted[key]) > 0 {
		s.log.Debug("service no longer served", "service", key, "reason", res.skip)
	}
	s.logWarnings(key, res.warnings)

	if len(res.services) == 0 {
		delete(s.emitted, key)
	} else {
		s.emitted[key] = emittedOf(res.services)
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

// translateLocked builds the lb.Services of one Kubernetes service from
// the caches, recording nothing.
func (s *Source) translateLocked(key types.NamespacedName, e *env) result {
	svc := s.cache.service(key)
	if svc == nil {
		return result{skip: "deleted"}
	}
	if skip := skipReason(svc, s.opts.ServiceProxyName); skip != "" {
		return result{skip: skip}
	}
	return build(svc, s.cache.slicesOf(key), e)
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
