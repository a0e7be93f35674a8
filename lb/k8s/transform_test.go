package k8s

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weir-lb/weir/lb"
)

// clutter adds what real API objects carry and translation never reads.
func clutter(m *metav1.ObjectMeta) {
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Labels["app.kubernetes.io/name"] = "web"
	m.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = `{"apiVersion":"v1","kind":"Service"}`
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
	m.OwnerReferences = []metav1.OwnerReference{{Kind: "Deployment", Name: "web"}}
	m.Finalizers = []string{"service.kubernetes.io/load-balancer-cleanup"}
}

// transformCases are services with every input translation reads, each
// with its slices, plus clutter.
func transformCases() []struct {
	svc    *v1.Service
	slices []*discovery.EndpointSlice
} {
	lbSvc := service("prod", "lb",
		clusterIP("10.96.0.20", "fd00:96::20"),
		svcType(v1.ServiceTypeLoadBalancer),
		svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP), svcPort("dns", 53, 30053, v1.ProtocolUDP)),
		lbIngress(v1.LoadBalancerIngress{IP: "203.0.113.7"}, v1.LoadBalancerIngress{IP: "2001:db8::7"}),
		annotated(AnnotationMode, "snat"),
		annotated(AnnotationMaglevTableSize, "16381"),
	)
	lbSvc.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
	lbSvc.Spec.ExternalIPs = []string{"192.0.2.10"}
	lbSvc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	lbSvc.Spec.HealthCheckNodePort = 31000
	lbSvc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	lbSvc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	lbSvc.Spec.Selector = map[string]string{"app": "lb"}
	lbSvc.Status.Conditions = []metav1.Condition{{Type: "LoadBalancerReady", Status: metav1.ConditionTrue}}
	clutter(&lbSvc.ObjectMeta)

	local := service("prod", "local", labelled(labelServiceProxyName, ""))
	local.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	local.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8"}
	clutter(&local.ObjectMeta)

	headless := service("prod", "headless", labelled(labelHeadless, ""))
	other := service("prod", "other", labelled(labelServiceProxyName, "someone-else"))

	withPod := func(e discovery.Endpoint) discovery.Endpoint {
		e.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: "prod", Name: "web-abc", UID: "1234"}
		e.Hostname = ptr.To("web-abc")
		e.DeprecatedTopology = map[string]string{"kubernetes.io/hostname": "node-b"}
		return e
	}
	lbSlices := []*discovery.EndpointSlice{
		slice("prod", "lb", "lb-v4", v4, ports(port("http", 8080), protoPort("dns", 5353, v1.ProtocolUDP)),
			withPod(ep("10.1.0.1", onNode("node-a"), inZone("z1"), zoneHints("z1"))),
			withPod(ep("10.1.0.2", onNode("node-b"), inZone("z2"), zoneHints("z2"),
				conditions(ptr.To(false), ptr.To(true), ptr.To(true))))),
		slice("prod", "lb", "lb-v6", v6, ports(port("http", 8080)),
			withPod(ep("fd00:1::1", onNode("node-b"), nodeHints("node-b")))),
	}
	for _, s := range lbSlices {
		clutter(&s.ObjectMeta)
		s.Annotations[AnnotationTriggerTime] = "2026-01-02T03:04:05.123456Z"
	}
	localSlices := []*discovery.EndpointSlice{
		slice("prod", "local", "local-1", v4, ports(port("http", 8080)),
			withPod(ep("10.1.0.3", onNode("node-a"))), withPod(ep("10.1.0.4", onNode("node-b")))),
	}
	return []struct {
		svc    *v1.Service
		slices []*discovery.EndpointSlice
	}{{lbSvc, lbSlices}, {local, localSlices}, {headless, nil}, {other, nil}}
}

// translateWith translates one service the way the Source does, with
// nodes as the Node cache.
func translateWith(svc *v1.Service, slices []*discovery.EndpointSlice, nodes map[string]*v1.Node) (string, result) {
	if skip := skipReason(svc, ""); skip != "" {
		return skip, result{}
	}
	e := &env{
		nodeName:    "node-a",
		zone:        nodeZone(nodes["node-a"]),
		nodeAddrs:   []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.0.1")},
		defaultMode: lb.ModeDSR,
		nodeIP: func(name string, v6 bool) netip.Addr {
			a4, a6 := internalIPs(nodes[name])
			if v6 {
				return a6
			}
			return a4
		},
	}
	return "", build(svc, slices, e)
}

// TestTransformKeepsTranslation: a transformed object translates exactly
// as the original does, and the transform drops the clutter.
func TestTransformKeepsTranslation(t *testing.T) {
	bigNode := func(name, zone string, ips ...string) *v1.Node {
		n := nodeObj(name, zone, ips...)
		clutter(&n.ObjectMeta)
		n.Spec.PodCIDR = "10.244.0.0/24"
		n.Spec.Taints = []v1.Taint{{Key: taintToBeDeleted, Effect: v1.TaintEffectNoSchedule}}
		n.Status.Images = []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 320000}}
		n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: name})
		return n
	}
	orig := map[string]*v1.Node{
		"node-a": bigNode("node-a", "z1", "192.168.0.1", "fd00::1"),
		"node-b": bigNode("node-b", "z2", "192.168.0.2", "fd00::2"),
	}
	trimmed := map[string]*v1.Node{}
	for name, n := range orig {
		o, err := transformObject(n.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		trimmed[name] = o.(*v1.Node)
		if nodeEligible(trimmed[name]) != nodeEligible(n) {
			t.Errorf("node %s: eligibility changed by the transform", name)
		}
	}
	if len(trimmed["node-a"].Status.Images) > 0 || trimmed["node-a"].ManagedFields != nil || len(trimmed["node-a"].Labels) != 1 {
		t.Errorf("node not trimmed: %+v", trimmed["node-a"])
	}

	for _, tc := range transformCases() {
		svc := transformObjectT(t, tc.svc.DeepCopy())
		var slices []*discovery.EndpointSlice
		for _, s := range tc.slices {
			slices = append(slices, transformObjectT(t, s.DeepCopy()))
		}
		wantSkip, want := translateWith(tc.svc, tc.slices, orig)
		gotSkip, got := translateWith(svc, slices, trimmed)
		if wantSkip == "" && (len(want.services) == 0 || (tc.svc.Name == "lb") != (want.hc != nil)) {
			t.Fatalf("%s: the case translates to nothing worth comparing: %+v", tc.svc.Name, want)
		}
		if gotSkip != wantSkip || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: transformed translates to\n%s (skip %q, hc %v, warnings %q)\nwant\n%s (skip %q, hc %v, warnings %q)", tc.svc.Name,
				formatServices(mapValues(got.services)), gotSkip, got.hc, got.warnings,
				formatServices(mapValues(want.services)), wantSkip, want.hc, want.warnings)
		}
		if svc.ManagedFields != nil || svc.Annotations["kubectl.kubernetes.io/last-applied-configuration"] != "" || svc.Labels["app.kubernetes.io/name"] != "" {
			t.Errorf("%s: service not trimmed: %+v", tc.svc.Name, svc.ObjectMeta)
		}
		for _, s := range slices {
			if s.ManagedFields != nil || s.Endpoints[0].TargetRef != nil || len(s.Annotations) > 1 {
				t.Errorf("%s: slice not trimmed: %+v", s.Name, s)
			}
			if _, ok := triggerTime(s); !ok && tc.svc.Name == "lb" {
				t.Errorf("%s: trigger time dropped", s.Name)
			}
		}
	}
}

func transformObjectT[T any](t *testing.T, o T) T {
	t.Helper()
	out, err := transformObject(o)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := transformObject(out); !reflect.DeepEqual(again, out) {
		t.Errorf("transform not idempotent on %T", o)
	}
	return out.(T)
}

func mapValues(m map[lb.ServiceName]*lb.Service) []*lb.Service {
	var out []*lb.Service
	for _, s := range m {
		out = append(out, s)
	}
	sortServices(out)
	return out
}

// TestTriggerTime parses the EndpointSlice controller's annotation.
func TestTriggerTime(t *testing.T) {
	es := slice("ns", "svc", "s-1", v4, nil)
	if _, ok := triggerTime(es); ok {
		t.Error("a slice without the annotation has a trigger time")
	}
	es.Annotations = map[string]string{AnnotationTriggerTime: "2026-01-02T03:04:05.5Z"}
	got, ok := triggerTime(es)
	if want := time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC); !ok || !got.Equal(want) {
		t.Errorf("trigger time %v %v, want %v", got, ok, want)
	}
	es.Annotations[AnnotationTriggerTime] = "yesterday"
	if _, ok := triggerTime(es); ok {
		t.Error("an unparsable annotation gave a trigger time")
	}
}

// TestOnChangeTimesChanges: a batch that changes a service reports when
// its event arrived and the slice's trigger time; one that changes
// nothing reports nothing; the initial Replace is reported as such.
func TestOnChangeTimesChanges(t *testing.T) {
	var (
		mu      sync.Mutex
		changes []Change
	)
	opts := Options{NodeName: "node-a", OnChange: func(c Change) {
		mu.Lock()
		changes = append(changes, c)
		mu.Unlock()
	}}
	before := time.Now()
	h := startSource(t, opts, twoServices()...)
	h.settle(h.mark()) // OnChange follows Replace
	mu.Lock()
	changes = changes[:min(len(changes), 1)] // then the barrier's
	if len(changes) != 1 || !changes[0].Initial || changes[0].Received.Before(before) || len(changes[0].Triggered) != 0 {
		t.Errorf("after the initial sync: %+v, want one Initial change", changes)
	}
	changes = nil
	mu.Unlock()

	// Trigger times from before the source started are ignored.
	trigger := time.Now().UTC().Truncate(time.Microsecond)
	update := func(addr string) {
		t.Helper()
		es := slice("default", "web", "web-1", v4, ports(port("http", 8080)), ep(addr, onNode("node-b")))
		es.Annotations = map[string]string{AnnotationTriggerTime: trigger.Format(time.RFC3339Nano)}
		if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(bg, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now()
	update("10.1.0.9")
	h.settle(h.mark())
	update("10.1.0.9") // the same endpoints again: nothing to deliver
	h.settle(h.mark())

	mu.Lock()
	defer mu.Unlock()
	var web []Change
	for _, c := range changes {
		if len(c.Triggered) > 0 {
			web = append(web, c)
		}
	}
	if len(web) != 1 {
		t.Fatalf("changes with trigger times: %+v, want one (the second update changed nothing)", web)
	}
	if c := web[0]; c.Initial || !c.Triggered[0].Equal(trigger) || c.Received.Before(sent) || c.Received.After(time.Now()) {
		t.Errorf("change %+v: want trigger %v, received after %v", c, trigger, sent)
	}
}

// TestDuplicateEndpoints: an address in several slices counts once: the
// first ready copy (slices in name order), else the first copy.
func TestDuplicateEndpoints(t *testing.T) {
	terminating := conditions(ptr.To(false), ptr.To(true), ptr.To(true))
	esList := []*discovery.EndpointSlice{
		slice("ns", "web", "a", v4, ports(port("http", 8080)),
			ep("10.1.0.2", terminating, onNode("node-a")),
			ep("10.1.0.3", terminating, onNode("node-a"))),
		slice("ns", "web", "b", v4, ports(port("http", 8080)),
			ep("10.1.0.1", onNode("node-b")),
			ep("10.1.0.2", onNode("node-b")),
			ep("10.1.0.3", terminating, onNode("node-b"))),
		slice("ns", "web", "c", v4, ports(port("http", 8080)),
			ep("10.1.0.2", onNode("node-c"))),
	}
	got := collectEndpoints(esList, false, &env{nodeName: "node-x"}, &result{}, map[netip.Addr]struct{}{})
	var lines []string
	for _, list := range got {
		for _, e := range list {
			lines = append(lines, fmt.Sprintf("%s ready=%v node=%s", e.addr, e.ready, e.nodeName))
		}
	}
	want := []string{
		"10.1.0.1:8080 ready=true node=node-b",
		"10.1.0.2:8080 ready=true node=node-b",  // the first ready copy
		"10.1.0.3:8080 ready=false node=node-a", // no ready copy: the first
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("endpoints:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// TestTransformSharesValues: two slices' endpoints on one node end up
// pointing at one node name, zone and condition values, equal to what
// was decoded.
func TestTransformSharesValues(t *testing.T) {
	slice := func(node, zone string, ready bool) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{Endpoints: []discovery.Endpoint{{
			Addresses:  []string{"10.0.0.1"},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready)},
			NodeName:   ptr.To(node), Zone: ptr.To(zone),
		}}}
	}
	a, b, c := slice("node-a", "z1", true), slice("node-a", "z1", true), slice("node-b", "z2", false)
	for _, es := range []*discovery.EndpointSlice{a, b, c} {
		if _, err := transformObject(es); err != nil {
			t.Fatal(err)
		}
	}
	ea, eb, ec := a.Endpoints[0], b.Endpoints[0], c.Endpoints[0]
	if ea.NodeName != eb.NodeName || ea.Zone != eb.Zone || ea.Conditions.Ready != eb.Conditions.Ready {
		t.Error("equal values are not shared")
	}
	if *ec.NodeName != "node-b" || *ec.Zone != "z2" || *ec.Conditions.Ready || *ec.Conditions.Serving || ec.Conditions.Terminating != nil {
		t.Errorf("values changed: %+v", ec)
	}
	if *ea.NodeName != "node-a" || !*ea.Conditions.Ready {
		t.Errorf("values changed: %+v", ea)
	}
}

// TestTransformClipsLists: lists the decoder grew by appending are kept
// in arrays of their length, contents unchanged.
func TestTransformClipsLists(t *testing.T) {
	es := &discovery.EndpointSlice{Endpoints: make([]discovery.Endpoint, 0, 16)}
	for i := range 10 {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.0.0.%d", i)}})
	}
	if _, err := transformObject(es); err != nil {
		t.Fatal(err)
	}
	if len(es.Endpoints) != 10 || cap(es.Endpoints) != 10 {
		t.Fatalf("endpoints len %d cap %d, want 10 and 10", len(es.Endpoints), cap(es.Endpoints))
	}
	for i, ep := range es.Endpoints {
		if ep.Addresses[0] != fmt.Sprintf("10.0.0.%d", i) {
			t.Errorf("endpoint %d: %v", i, ep.Addresses)
		}
	}
}
