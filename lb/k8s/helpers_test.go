package k8s

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/weir-lb/weir/lb"
)

// waitTimeout bounds every wait; a test that hits it failed.
const waitTimeout = 10 * time.Second

// barrierNS holds the harness's own objects; assertions leave it out.
const barrierNS = "zz-barrier"

// call is one Sink call.
type call struct {
	op   string // upsert, delete, replace, request
	svc  *lb.Service
	name lb.ServiceName
	all  []*lb.Service
}

func (c call) String() string {
	switch c.op {
	case "upsert":
		return "upsert " + c.svc.Name.String()
	case "delete":
		return "delete " + c.name.String()
	case "replace":
		return fmt.Sprintf("replace (%d)", len(c.all))
	}
	return c.op
}

// recorder is a Sink that records calls and wakes waiters.
type recorder struct {
	mu     sync.Mutex
	calls  []call
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) add(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) Upsert(s *lb.Service)      { r.add(call{op: "upsert", svc: s, name: s.Name}) }
func (r *recorder) Delete(n lb.ServiceName)   { r.add(call{op: "delete", name: n}) }
func (r *recorder) Replace(all []*lb.Service) { r.add(call{op: "replace", all: all}) }
func (r *recorder) Request()                  { r.add(call{op: "request"}) }

func (r *recorder) snapshot() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// harness runs a Source against a fake clientset.
type harness struct {
	t       *testing.T
	client  *fake.Clientset
	src     *Source
	rec     *recorder
	logs    *syncBuffer
	hcCalls chan map[lb.ServiceName]HealthCheckPort
	barrier int
}

// startSource runs a Source over objs (plus the barrier objects) and
// waits for its Replace and for the informers' watches, so that later
// changes are seen as events.
func startSource(t *testing.T, opts Options, objs ...runtime.Object) *harness {
	t.Helper()
	objs = append(objs, barrierObjects()...)
	client := fake.NewClientset(objs...)
	watching := make(chan struct{}, 8)
	client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		wa, ok := a.(k8stesting.WatchActionImpl)
		if !ok {
			return false, nil, nil
		}
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace(), wa.ListOptions)
		watching <- struct{}{}
		return true, w, err
	})
	h := &harness{t: t, client: client, rec: newRecorder(), logs: &syncBuffer{},
		hcCalls: make(chan map[lb.ServiceName]HealthCheckPort, 100)}
	if opts.OnHealthCheckPorts == nil {
		opts.OnHealthCheckPorts = func(m map[lb.ServiceName]HealthCheckPort) { h.hcCalls <- m }
	}
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.src = NewSource(client, opts, h.rec, logger)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %s of cancel", waitTimeout)
		}
	})
	for range 3 {
		select {
		case <-watching:
		case <-time.After(waitTimeout):
			t.Fatalf("the informers did not start watching within %s", waitTimeout)
		}
	}
	h.waitFor("the initial Replace", func(calls []call) bool {
		return len(calls) > 0 && calls[0].op == "replace"
	})
	return h
}

// waitFor waits until cond holds for the recorded calls.
func (h *harness) waitFor(what string, cond func([]call) bool) []call {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		calls := h.rec.snapshot()
		if cond(calls) {
			return calls
		}
		select {
		case <-h.rec.notify:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; calls so far:\n%s", what, formatCalls(calls))
		}
	}
}

// replaced returns the services of the initial Replace, without the
// harness's own.
func (h *harness) replaced() []*lb.Service {
	h.t.Helper()
	return dropBarrier(h.rec.snapshot()[0].all)
}

// mark returns the position to read calls from after a change.
func (h *harness) mark() int { return len(h.rec.snapshot()) }

// settle waits until the source has handled every event the informers
// delivered before it was called: it changes one barrier object per
// informer and waits for the effect of all three. Each informer delivers
// events in order, so the earlier events were handled in the same batch
// or before. It returns the calls since from, without barrier ones.
func (h *harness) settle(from int) []call {
	h.t.Helper()
	h.barrier++
	n := h.barrier
	ctx := context.Background()
	// Services informer: a new service.
	svc := service(barrierNS, fmt.Sprintf("b%d", n), clusterIP(fmt.Sprintf("10.255.%d.%d", n/250, n%250+1)))
	if _, err := h.client.CoreV1().Services(barrierNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	// Slices informer: a new slice adds an endpoint to the barrier service.
	es := slice(barrierNS, "barrier-s", fmt.Sprintf("barrier-s-%d", n), discovery.AddressTypeIPv4,
		ports(port("http", 80)), ep(fmt.Sprintf("10.254.%d.%d", n/250, n%250+1)))
	if _, err := h.client.DiscoveryV1().EndpointSlices(barrierNS).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	// Nodes informer: a new InternalIP for the node of the barrier endpoint.
	node := nodeObj("barrier-node", "", fmt.Sprintf("10.253.%d.%d", n/250, n%250+1))
	if _, err := h.client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}

	wantSvc := lb.ServiceName{Namespace: barrierNS, Name: fmt.Sprintf("b%d", n), Port: "http"}
	wantBackend := netip.MustParseAddr(fmt.Sprintf("10.254.%d.%d", n/250, n%250+1))
	wantTunnel := netip.MustParseAddr(fmt.Sprintf("10.253.%d.%d", n/250, n%250+1))
	// Each effect has one cause only: barrier-s changes only through its
	// slices, barrier-n only through its node.
	calls := h.waitFor("the barrier", func(calls []call) bool {
		var sawSvc, sawBackend, sawTunnel bool
		for _, c := range calls[from:] {
			if c.op != "upsert" {
				continue
			}
			sawSvc = sawSvc || c.svc.Name == wantSvc
			for _, be := range c.svc.Backends {
				sawBackend = sawBackend || (c.svc.Name.Name == "barrier-s" && be.Addr == wantBackend)
				sawTunnel = sawTunnel || (c.svc.Name.Name == "barrier-n" && be.Tunnel == wantTunnel)
			}
		}
		return sawSvc && sawBackend && sawTunnel
	})
	var out []call
	for _, c := range calls[from:] {
		if c.name.Namespace != barrierNS && c.op != "request" {
			out = append(out, c)
		}
	}
	return out
}

// barrierObjects are the service, slice and node that settle changes.
func barrierObjects() []runtime.Object {
	return []runtime.Object{
		service(barrierNS, "barrier-s", clusterIP("10.255.255.1")),
		slice(barrierNS, "barrier-s", "barrier-s-0", discovery.AddressTypeIPv4, ports(port("http", 80)),
			ep("10.254.255.1")),
		service(barrierNS, "barrier-n", clusterIP("10.255.255.2")),
		slice(barrierNS, "barrier-n", "barrier-n-0", discovery.AddressTypeIPv4, ports(port("http", 80)),
			ep("10.254.255.2", onNode("barrier-node"))),
		nodeObj("barrier-node", "", "10.253.255.1"),
	}
}

func dropBarrier(in []*lb.Service) []*lb.Service {
	var out []*lb.Service
	for _, s := range in {
		if s.Name.Namespace != barrierNS {
			out = append(out, s)
		}
	}
	return out
}

func formatCalls(calls []call) string {
	var b strings.Builder
	for _, c := range calls {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// formatServices renders services as text, one line per service,
// frontend and backend, so that expectations read like the model.
func formatServices(ss []*lb.Service) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "%s mode=%s", s.Name, s.Mode)
		if s.SessionAffinity != 0 {
			fmt.Fprintf(&b, " affinity=%s", s.SessionAffinity)
		}
		if s.ExternalLocal {
			b.WriteString(" external-local")
		}
		if s.InternalLocal {
			b.WriteString(" internal-local")
		}
		if s.MaglevTableSize != 0 {
			fmt.Fprintf(&b, " table=%d", s.MaglevTableSize)
		}
		if len(s.SourceRanges) > 0 {
			fmt.Fprintf(&b, " ranges=%v", s.SourceRanges)
		}
		b.WriteByte('\n')
		for _, fe := range s.Frontends {
			fmt.Fprintf(&b, "  fe %s %s %s\n", fe, fe.Scope, fe.Kind)
		}
		for _, be := range s.Backends {
			fmt.Fprintf(&b, "  be %s %s w=%d", be.AddrPort(), be.State, be.Weight)
			if be.NodeName != "" {
				fmt.Fprintf(&b, " node=%s", be.NodeName)
			}
			if be.Tunnel.IsValid() {
				fmt.Fprintf(&b, " tunnel=%s", be.Tunnel)
			}
			if be.Zone != "" {
				fmt.Fprintf(&b, " zone=%s", be.Zone)
			}
			if be.Local {
				b.WriteString(" local")
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Object builders. Defaults: a ClusterIP service with cluster IP
// 10.96.0.10 and one TCP port "http" 80 -> 8080.

func service(ns, name string, opts ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func clusterIP(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func svcType(t v1.ServiceType) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Type = t }
}

func svcPorts(ps ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ps }
}

func svcPort(name string, port, nodePort int32, proto v1.Protocol) v1.ServicePort {
	return v1.ServicePort{Name: name, Port: port, NodePort: nodePort, Protocol: proto}
}

func labelled(k, v string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

func annotated(k, v string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

func lbIngress(ings ...v1.LoadBalancerIngress) func(*v1.Service) {
	return func(s *v1.Service) { s.Status.LoadBalancer.Ingress = ings }
}

func slice(ns, svcName, name string, at discovery.AddressType, ps []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: at,
		Ports:       ps,
		Endpoints:   eps,
	}
}

func ports(ps ...discovery.EndpointPort) []discovery.EndpointPort { return ps }

func port(name string, p int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(v1.ProtocolTCP)}
}

func protoPort(name string, p int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(proto)}
}

func ep(addr string, opts ...func(*discovery.Endpoint)) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func onNode(n string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) { e.NodeName = ptr.To(n) }
}

func inZone(z string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) { e.Zone = ptr.To(z) }
}

func conditions(ready, serving, terminating *bool) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func zoneHints(zones ...string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discovery.EndpointHints{}
		}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
		}
	}
}

func nodeHints(nodes ...string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discovery.EndpointHints{}
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
		}
	}
}

func nodeObj(name, zone string, internalIPs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if zone != "" {
		n.Labels = map[string]string{labelZone: zone}
	}
	for _, ip := range internalIPs {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	return n
}

func addrs(ss ...string) func() []netip.Addr {
	return func() []netip.Addr {
		out := make([]netip.Addr, len(ss))
		for i, s := range ss {
			out[i] = netip.MustParseAddr(s)
		}
		return out
	}
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}
