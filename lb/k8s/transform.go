package k8s

import (
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
	serviceAnnotations = []string{AnnotationMode, AnnotationMaglevTableSize, AnnotationSourceRanges}
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
}

// trimSlice drops what endpoints say about pods (target references,
// deprecated topology); addresses, conditions, node, zone and hints stay.
func trimSlice(es *discovery.EndpointSlice) {
	trimMeta(&es.ObjectMeta, sliceLabels, sliceAnnotations)
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		ep.TargetRef = nil
		ep.DeprecatedTopology = nil
		ep.Hostname = nil
	}
}

// trimNode keeps a node's zone label, taints (eligibility) and addresses
// (tunnel endpoints); its images, conditions, capacity and system info,
// most of a Node's bytes, go.
func trimNode(n *v1.Node) {
	trimMeta(&n.ObjectMeta, nodeLabels, nil)
	n.Spec = v1.NodeSpec{Taints: n.Spec.Taints}
	n.Status = v1.NodeStatus{Addresses: n.Status.Addresses}
}
