package k8s

import (
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informers' transforms keep only what translation, the handlers and
// the indexes read, so the caches of a large cluster hold a fraction of
// the objects (managed fields, last-applied-configuration annotations,
// endpoint target references, node images and conditions are most of
// their bytes). They run on a freshly decoded object before the informer
// stores it, so they edit it in place; they are idempotent, as client-go
// requires. The translate tests check that a transformed object
// translates as the original does.

// AnnotationTriggerTime is the EndpointSlice controller's time of the
// last change (a pod's or the service's) that the slice reflects; it
// starts kube-proxy's network-programming latency.
const AnnotationTriggerTime = v1.EndpointsLastChangeTriggerTime

// serviceAnnotations and serviceLabels are the ones translation reads.
var (
	serviceAnnotations = []string{AnnotationMode, AnnotationMaglevTableSize}
	serviceLabels      = []string{labelHeadless, labelServiceProxyName}
	sliceAnnotations   = []string{AnnotationTriggerTime}
	sliceLabels        = []string{discovery.LabelServiceName, labelHeadless}
	nodeLabels         = []string{labelZone}
)

// transformObject dispatches on the object's type; anything else (such as
// cache.DeletedFinalStateUnknown) passes unchanged.
func transformObject(o any) (any, error) {
	switch t := o.(type) {
	case *v1.Service:
		trimService(t)
	case *discovery.EndpointSlice:
		trimSlice(t)
	case *v1.Node:
		trimNode(t)
	}
	return o, nil
}

// trimMeta keeps the identity, deletion state and the named labels and
// annotations of an object.
func trimMeta(m *metav1.ObjectMeta, labels, annotations []string) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
	m.Finalizers = nil
	m.GenerateName = ""
	m.Labels = keepKeys(m.Labels, labels)
	m.Annotations = keepKeys(m.Annotations, annotations)
}

// keepKeys returns the entries of m under keys, nil when there are none;
// m itself when it has nothing else.
func keepKeys(m map[string]string, keys []string) map[string]string {
	kept := 0
	for _, k := range keys {
		if _, ok := m[k]; ok {
			kept++
		}
	}
	if kept == len(m) && kept > 0 {
		return m
	}
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, kept)
			}
			out[k] = v
		}
	}
	return out
}

// trimService keeps the spec (translation reads most of it) and the load
// balancer's ingress points; status conditions go.
func trimService(s *v1.Service) {
	trimMeta(&s.ObjectMeta, serviceLabels, serviceAnnotations)
	s.Spec.Selector = nil // endpoints come from slices, not selectors
	s.Status.Conditions = nil
	s.Spec.Ports = clip(s.Spec.Ports)
	s.Status.LoadBalancer.Ingress = clip(s.Status.LoadBalancer.Ingress)
}

// trimSlice drops what endpoints say about pods (target references,
// deprecated topology); addresses, conditions, node, zone and hints stay.
// Conditions, node names and zones, decoded as a small allocation each
// per endpoint, point to shared values instead: cached objects are read
// only, and at 100k endpoints that is a few MB.
func trimSlice(es *discovery.EndpointSlice) {
	trimMeta(&es.ObjectMeta, sliceLabels, sliceAnnotations)
	es.Endpoints = clip(es.Endpoints)
	es.Ports = clip(es.Ports)
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		ep.TargetRef = nil
		ep.DeprecatedTopology = nil
		ep.Hostname = nil
		ep.Conditions.Ready = sharedBool(ep.Conditions.Ready)
		ep.Conditions.Serving = sharedBool(ep.Conditions.Serving)
		ep.Conditions.Terminating = sharedBool(ep.Conditions.Terminating)
		ep.NodeName = places.intern(ep.NodeName)
		ep.Zone = places.intern(ep.Zone)
	}
}

// clip returns s in an array of its length. The decoder grows lists by
// appending, so 10 endpoints arrive in an array of 16: a third of a
// slice's cached bytes, for as long as it is cached.
func clip[S ~[]E, E any](s S) S {
	if cap(s) == len(s) {
		return s
	}
	if len(s) == 0 {
		return nil
	}
	return append(make(S, 0, len(s)), s...)
}

var boolValues = [2]bool{false, true}

// sharedBool returns a pointer to a shared copy of *b; nil for nil.
func sharedBool(b *bool) *bool {
	if b == nil {
		return nil
	}
	if *b {
		return &boolValues[1]
	}
	return &boolValues[0]
}

// stringPool hands out one shared pointer per distinct string. It holds
// node names and zones, a few per node of the cluster; it starts over
// when it grows past maxInterned (nodes come and go), which only costs
// sharing.
type stringPool struct {
	mu sync.Mutex
	m  map[string]*string
}

const maxInterned = 1 << 16

var places stringPool

func (p *stringPool) intern(s *string) *string {
	if s == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.m[*s]; ok {
		return v
	}
	if p.m == nil || len(p.m) >= maxInterned {
		p.m = map[string]*string{}
	}
	p.m[*s] = s
	return s
}

// trimNode keeps a node's zone label, taints (eligibility) and addresses
// (tunnel endpoints); its images, conditions, capacity and system info,
// most of a Node's bytes, go.
func trimNode(n *v1.Node) {
	trimMeta(&n.ObjectMeta, nodeLabels, nil)
	n.Spec = v1.NodeSpec{Taints: n.Spec.Taints}
	n.Status = v1.NodeStatus{Addresses: n.Status.Addresses}
}
