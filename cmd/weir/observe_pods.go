package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// PodRef names the pod behind an address in an event, with its labels.
type PodRef struct {
	Pod    string            `json:"pod"` // namespace/name
	Labels map[string]string `json:"labels,omitempty"`
}

// podIndex maps pod IPs to pods, from a Pod informer: `weir observe
// --kubeconfig` labels events with the client's and the backend's pods.
// Host-network pods share the node's address and are left out.
type podIndex struct {
	mu   sync.RWMutex
	byIP map[netip.Addr]PodRef
}

func newPodIndex() *podIndex { return &podIndex{byIP: map[netip.Addr]PodRef{}} }

func (x *podIndex) lookup(a netip.Addr) *PodRef {
	if !a.IsValid() {
		return nil
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	if p, ok := x.byIP[a.Unmap()]; ok {
		return &p
	}
	return nil
}

func podAddrs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork {
		return nil
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func (x *podIndex) set(p *corev1.Pod) {
	ref := PodRef{Pod: p.Namespace + "/" + p.Name, Labels: p.Labels}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, a := range podAddrs(p) {
		x.byIP[a] = ref
	}
}

func (x *podIndex) remove(p *corev1.Pod) {
	name := p.Namespace + "/" + p.Name
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, a := range podAddrs(p) {
		// An address may already belong to a newer pod.
		if x.byIP[a].Pod == name {
			delete(x.byIP, a)
		}
	}
}

// watchPods fills the index from the API server until ctx ends; it returns
// once the first list is in.
func (x *podIndex) watchPods(ctx context.Context, client kubernetes.Interface) error {
	f := informers.NewSharedInformerFactory(client, 0)
	inf := f.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { x.onPod(o, false) },
		UpdateFunc: func(_, o any) { x.onPod(o, false) },
		DeleteFunc: func(o any) { x.onPod(o, true) },
	})
	if err != nil {
		return err
	}
	f.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
		return fmt.Errorf("--kubeconfig: the pod list did not arrive within 30s (check access to the API server and RBAC for pods)")
	}
	return nil
}

func (x *podIndex) onPod(o any, deleted bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	if deleted {
		x.remove(p)
		return
	}
	x.set(p)
}

// annotate adds the pods behind an event's client and backend.
func (x *podIndex) annotate(v *EventView) {
	v.ClientPod = x.lookup(v.src)
	v.BackendPod = x.lookup(v.backend)
}
