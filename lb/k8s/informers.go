package k8s

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// Labels and annotations this source reads.
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = v1.IsHeadlessService // service.kubernetes.io/headless
	labelZone             = v1.LabelTopologyZone // topology.kubernetes.io/zone
	taintToBeDeleted      = "ToBeDeletedByClusterAutoscaler"

	indexByService = "service"
	indexByNode    = "node"
)

// caches are the informers' stores with the indexes the source needs.
type caches struct {
	services, slices, nodes cache.SharedIndexInformer
	wg                      sync.WaitGroup
}

// startInformers creates the informers, registers the handlers that feed
// the work queue, and starts them; they stop when ctx ends.
func (s *Source) startInformers(ctx context.Context) (*caches, error) {
	resync := s.opts.ResyncPeriod
	c := &caches{
		// The API server filters services as kube-proxy asks it to; the
		// handlers check again, since not every client (the fake one)
		// filters watches.
		services: coreinformers.NewFilteredServiceInformer(s.client, metav1.NamespaceAll, resync, cache.Indexers{},
			func(o *metav1.ListOptions) { o.LabelSelector = serviceSelector(s.opts.ServiceProxyName) }),
		slices: discoveryinformers.NewFilteredEndpointSliceInformer(s.client, metav1.NamespaceAll, resync,
			cache.Indexers{indexByService: sliceServiceIndex, indexByNode: sliceNodeIndex},
			func(o *metav1.ListOptions) { o.LabelSelector = sliceSelector() }),
		nodes: coreinformers.NewNodeInformer(s.client, resync, cache.Indexers{}),
	}
	for _, inf := range []cache.SharedIndexInformer{c.services, c.slices, c.nodes} {
		if err := inf.SetTransform(transformObject); err != nil {
			return nil, err
		}
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{c.services, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.onService(o) },
			UpdateFunc: func(_, o any) { s.onService(o) },
			DeleteFunc: func(o any) { s.onService(o) },
		}},
		{c.slices, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.onSliceChanged(o) },
			UpdateFunc: func(old, o any) { s.onSlice(old); s.onSliceChanged(o) },
			DeleteFunc: func(o any) { s.onSlice(o) },
		}},
		{c.nodes, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.onNode(nil, o) },
			UpdateFunc: func(old, o any) { s.onNode(old, o) },
			DeleteFunc: func(o any) { s.onNode(o, nil) },
		}},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return nil, err
		}
	}
	for _, inf := range []cache.SharedIndexInformer{c.services, c.slices, c.nodes} {
		c.wg.Go(func() { inf.RunWithContext(ctx) })
	}
	return c, nil
}

// waitForSync waits for the three caches; false when ctx ended first.
func (c *caches) waitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.services.HasSynced, c.slices.HasSynced, c.nodes.HasSynced)
}

// serviceSelector is kube-proxy's: no headless services, and only those
// whose service-proxy-name label is the configured one (or absent).
func serviceSelector(proxyName string) string {
	sel := labels.NewSelector()
	noHeadless, _ := labels.NewRequirement(labelHeadless, selection.DoesNotExist, nil)
	var proxy *labels.Requirement
	if proxyName == "" {
		proxy, _ = labels.NewRequirement(labelServiceProxyName, selection.DoesNotExist, nil)
	} else {
		var err error
		if proxy, err = labels.NewRequirement(labelServiceProxyName, selection.Equals, []string{proxyName}); err != nil {
			// Not a valid label value: no service can carry it. Let the
			// handlers' check (which compares strings) decide instead.
			return noHeadless.String()
		}
	}
	return sel.Add(*noHeadless, *proxy).String()
}

// sliceSelector keeps the slices that belong to a service and are not a
// headless service's.
func sliceSelector() string {
	owned, _ := labels.NewRequirement(discovery.LabelServiceName, selection.Exists, nil)
	noHeadless, _ := labels.NewRequirement(labelHeadless, selection.DoesNotExist, nil)
	return labels.NewSelector().Add(*owned, *noHeadless).String()
}

func sliceServiceKey(es *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := es.Labels[discovery.LabelServiceName]
	if name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: es.Namespace, Name: name}, true
}

func sliceServiceIndex(o any) ([]string, error) {
	es, ok := o.(*discovery.EndpointSlice)
	if !ok {
		return nil, nil
	}
	key, ok := sliceServiceKey(es)
	if !ok {
		return nil, nil
	}
	return []string{key.String()}, nil
}

func sliceNodeIndex(o any) ([]string, error) {
	es, ok := o.(*discovery.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var nodes []string
	for _, ep := range es.Endpoints {
		if ep.NodeName != nil && *ep.NodeName != "" && !slices.Contains(nodes, *ep.NodeName) {
			nodes = append(nodes, *ep.NodeName)
		}
	}
	return nodes, nil
}

func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

func (s *Source) onService(o any) {
	if svc, ok := unwrap(o).(*v1.Service); ok {
		s.queue.service(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})
	}
}

// onSliceChanged queues the service of a slice added or updated, with the
// slice's change trigger time when it has one from after the source
// started (kube-proxy ignores older ones too: the initial list and
// resyncs are not changes).
func (s *Source) onSliceChanged(o any) {
	es, ok := o.(*discovery.EndpointSlice)
	if !ok {
		s.onSlice(o)
		return
	}
	key, ok := sliceServiceKey(es)
	if !ok {
		return
	}
	if t, ok := triggerTime(es); ok && s.synced.Load() && t.After(s.started) {
		s.queue.serviceTriggered(key, t)
		return
	}
	s.queue.service(key)
}

// triggerTime parses a slice's last-change-trigger-time annotation.
func triggerTime(es *discovery.EndpointSlice) (time.Time, bool) {
	v, ok := es.Annotations[AnnotationTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

func (s *Source) onSlice(o any) {
	if es, ok := unwrap(o).(*discovery.EndpointSlice); ok {
		if key, ok := sliceServiceKey(es); ok {
			s.queue.service(key)
		}
	}
}

// onNode queues what a node change affects: the services with endpoints on
// a node whose InternalIPs changed (their tunnel addresses), and every
// service when this node's zone changed (topology hints).
func (s *Source) onNode(oldObj, newObj any) {
	oldNode, _ := unwrap(oldObj).(*v1.Node)
	newNode, _ := unwrap(newObj).(*v1.Node)
	name := ""
	switch {
	case newNode != nil:
		name = newNode.Name
	case oldNode != nil:
		name = oldNode.Name
	default:
		return
	}
	v4o, v6o := internalIPs(oldNode)
	v4n, v6n := internalIPs(newNode)
	if v4o != v4n || v6o != v6n {
		s.queue.node(name)
	}
	if name == s.opts.NodeName && nodeZone(oldNode) != nodeZone(newNode) {
		if s.synced.Load() { // the initial list is not a change
			s.log.Info("this node's zone changed; recomputing topology", "node", name, "zone", nodeZone(newNode))
		}
		s.queue.everything()
	}
}

func nodeZone(n *v1.Node) string {
	if n == nil {
		return ""
	}
	return n.Labels[labelZone]
}

// internalIPs returns a node's first InternalIP of each family.
func internalIPs(n *v1.Node) (v4, v6 netip.Addr) {
	if n == nil {
		return
	}
	for _, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		switch {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	return
}

func nodeEligible(n *v1.Node) bool {
	if n == nil || n.DeletionTimestamp != nil {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == taintToBeDeleted {
			return false
		}
	}
	return true
}

// Reads from the stores. Objects in a store are shared: never modify them.

func (c *caches) service(key types.NamespacedName) *v1.Service {
	o, ok, err := c.services.GetStore().GetByKey(key.String())
	if err != nil || !ok {
		return nil
	}
	svc, _ := o.(*v1.Service)
	return svc
}

func (c *caches) serviceKeys() []types.NamespacedName {
	var keys []types.NamespacedName
	for _, o := range c.services.GetStore().List() {
		if svc, ok := o.(*v1.Service); ok {
			keys = append(keys, types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})
		}
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

// slicesOf returns a service's EndpointSlices sorted by name, so that
// duplicates across slices resolve the same way every time.
func (c *caches) slicesOf(key types.NamespacedName) []*discovery.EndpointSlice {
	objs, err := c.slices.GetIndexer().ByIndex(indexByService, key.String())
	if err != nil {
		return nil
	}
	out := make([]*discovery.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discovery.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	slices.SortFunc(out, func(a, b *discovery.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// servicesOnNode returns the services with an endpoint on the node.
func (c *caches) servicesOnNode(node string) []types.NamespacedName {
	objs, err := c.slices.GetIndexer().ByIndex(indexByNode, node)
	if err != nil {
		return nil
	}
	var keys []types.NamespacedName
	for _, o := range objs {
		if es, ok := o.(*discovery.EndpointSlice); ok {
			if key, ok := sliceServiceKey(es); ok {
				keys = append(keys, key)
			}
		}
	}
	return keys
}

func (c *caches) node(name string) *v1.Node {
	if name == "" {
		return nil
	}
	o, ok, err := c.nodes.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	n, _ := o.(*v1.Node)
	return n
}

func (c *caches) zone(name string) string { return nodeZone(c.node(name)) }

// nodeIP is the InternalIP of the family of a node, or the zero Addr when
// the node or its address is unknown.
func (c *caches) nodeIP(name string, v6 bool) netip.Addr {
	v4a, v6a := internalIPs(c.node(name))
	if v6 {
		return v6a
	}
	return v4a
}
