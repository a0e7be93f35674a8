package k8s

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/weir-lb/weir/lb"
)

var bg = context.Background()

// opsOf renders calls as "op name" lines for comparison.
func opsOf(calls []call) string { return formatCalls(calls) }

func expectCalls(t *testing.T, got []call, want ...string) {
	t.Helper()
	w := strings.Join(want, "\n")
	if len(want) > 0 {
		w += "\n"
	}
	if g := opsOf(got); g != w {
		t.Errorf("calls:\n%s\nwant:\n%s", g, w)
	}
}

func twoServices() []runtime.Object {
	return append(testNodes(),
		service("default", "web"),
		slice("default", "web", "web-1", v4, ports(port("http", 8080)), ep("10.1.0.1", onNode("node-b"))),
		service("default", "api", clusterIP("10.96.0.11")),
		slice("default", "api", "api-1", v4, ports(port("http", 8080)), ep("10.1.1.1", onNode("node-b"))),
	)
}

func TestSliceUpdateUpsertsOnlyItsService(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, twoServices()...)
	from := h.mark()
	es := slice("default", "web", "web-1", v4, ports(port("http", 8080)),
		ep("10.1.0.1", onNode("node-b")), ep("10.1.0.2", onNode("node-a")))
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(bg, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.settle(from)
	expectCalls(t, got, "upsert default/web:http")
	if len(got) == 1 {
		if s := formatServices([]*lb.Service{got[0].svc}); !strings.Contains(s, "be 10.1.0.2:8080 active w=1 node=node-a tunnel=192.168.0.1 local") {
			t.Errorf("the upsert lacks the new backend:\n%s", s)
		}
	}
	// The upsert is followed by a Request (after the batch's other calls).
	calls := h.rec.snapshot()[from:]
	requested := false
	for i, c := range calls {
		if c.op == "upsert" && c.name.Name == "web" {
			for _, later := range calls[i+1:] {
				requested = requested || later.op == "request"
			}
		}
	}
	if !requested {
		t.Errorf("the upsert is not followed by a request:\n%s", formatCalls(calls))
	}
}

func TestDeleteDualStackServiceDeletesEveryHalf(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, append(testNodes(),
		service("default", "web", clusterIP("10.96.0.10", "fd00:96::10"), svcPorts(
			svcPort("http", 80, 0, v1.ProtocolTCP), svcPort("metrics", 9090, 0, v1.ProtocolTCP))),
	)...)
	if got := len(h.replaced()); got != 4 {
		t.Fatalf("Replace has %d services, want 4 (2 ports x 2 families)", got)
	}
	from := h.mark()
	if err := h.client.CoreV1().Services("default").Delete(bg, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.settle(from)
	expectCalls(t, got,
		"delete default/web:http",
		"delete default/web:http (IPv6)",
		"delete default/web:metrics",
		"delete default/web:metrics (IPv6)")
	for _, s := range h.src.Services() {
		if s.Name.Namespace == "default" {
			t.Errorf("Services() still lists %s", s.Name)
		}
	}
}

func TestRemovedPortDeletesItsService(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, append(testNodes(),
		service("default", "web", svcPorts(svcPort("http", 80, 0, v1.ProtocolTCP), svcPort("metrics", 9090, 0, v1.ProtocolTCP))),
	)...)
	from := h.mark()
	if _, err := h.client.CoreV1().Services("default").Update(bg, service("default", "web"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectCalls(t, h.settle(from), "delete default/web:metrics")
}

func TestNoOpChangesMakeNoCalls(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, twoServices()...)
	from := h.mark()
	// An unrelated annotation on a service.
	if _, err := h.client.CoreV1().Services("default").Update(bg,
		service("default", "web", annotated("example.com/owner", "team-a")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The same endpoints, listed in another order, with a new label.
	es := slice("default", "api", "api-1", v4, ports(port("http", 8080)), ep("10.1.1.1", onNode("node-b")))
	es.Labels["example.com/touched"] = "yes"
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(bg, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A node status heartbeat.
	n := nodeObj("node-b", "z2", "192.168.0.2", "fd00::2")
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	if _, err := h.client.CoreV1().Nodes().Update(bg, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectCalls(t, h.settle(from))
}

func TestResyncMakesNoCalls(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a", ResyncPeriod: time.Second}, twoServices()...)
	from := h.mark()
	// A handler of our own sees the resyncs the source sees.
	var resyncs atomic.Int64
	h.src.mu.Lock()
	c := h.src.cache
	h.src.mu.Unlock()
	seen := make(chan struct{}, 1)
	for _, inf := range []cache.SharedIndexInformer{c.services, c.slices} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, _ any) {
			if resyncs.Add(1) >= 10 {
				select {
				case seen <- struct{}{}:
				default:
				}
			}
		}}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-seen:
	case <-time.After(waitTimeout):
		t.Fatalf("saw %d resync events in %s, want 10", resyncs.Load(), waitTimeout)
	}
	expectCalls(t, h.settle(from))
}

func TestLabelledForAnotherProxyIsDeleted(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, twoServices()...)
	from := h.mark()
	if _, err := h.client.CoreV1().Services("default").Update(bg,
		service("default", "web", labelled(labelServiceProxyName, "other")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectCalls(t, h.settle(from), "delete default/web:http")
}

func TestNodeAddressChangeUpdatesTunnels(t *testing.T) {
	objs := append(twoServices(),
		service("default", "elsewhere", clusterIP("10.96.0.12")),
		slice("default", "elsewhere", "elsewhere-1", v4, ports(port("http", 8080)), ep("10.1.2.1", onNode("node-a"))))
	h := startSource(t, Options{NodeName: "node-a"}, objs...)
	from := h.mark()
	if _, err := h.client.CoreV1().Nodes().Update(bg, nodeObj("node-b", "z2", "192.168.0.22", "fd00::2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.settle(from)
	expectCalls(t, got, "upsert default/api:http", "upsert default/web:http")
	for _, c := range got {
		if c.op == "upsert" && c.svc.Backends[0].Tunnel != netip.MustParseAddr("192.168.0.22") {
			t.Errorf("%s: tunnel %s, want 192.168.0.22", c.name, c.svc.Backends[0].Tunnel)
		}
	}
}

func TestZoneChangeRecomputesTopology(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, append(testNodes(),
		service("default", "web"),
		slice("default", "web", "web-1", v4, ports(port("http", 8080)),
			ep("10.1.0.1", zoneHints("z1")), ep("10.1.0.2", zoneHints("z2"))),
		service("default", "plain", clusterIP("10.96.0.11")),
	)...)
	from := h.mark()
	if _, err := h.client.CoreV1().Nodes().Update(bg, nodeObj("node-a", "z2", "192.168.0.1", "fd00::1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.settle(from)
	expectCalls(t, got, "upsert default/web:http")
	want := "default/web:http mode=dsr\n  fe 10.96.0.10:80/TCP internal ClusterIP\n  be 10.1.0.1:8080 active w=0\n  be 10.1.0.2:8080 active w=1\n"
	if len(got) == 1 {
		if s := formatServices([]*lb.Service{got[0].svc}); s != want {
			t.Errorf("after the zone change:\n%s\nwant:\n%s", s, want)
		}
	}
}

// nodeAddrList is a NodeAddrs whose answer the test changes.
type nodeAddrList struct {
	mu    sync.Mutex
	addrs []netip.Addr
}

func (l *nodeAddrList) set(ss ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addrs = addrs(ss...)()
}

func (l *nodeAddrList) get() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]netip.Addr(nil), l.addrs...)
}

func TestRefreshRecomputesNodePortServices(t *testing.T) {
	var list nodeAddrList
	list.set("10.0.0.1", "127.0.0.1")
	h := startSource(t, Options{NodeName: "node-a", NodeAddrs: list.get}, append(twoServices(),
		service("default", "np", clusterIP("10.96.0.12"), svcType(v1.ServiceTypeNodePort),
			svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP))))...)

	from := h.mark()
	list.set("127.0.0.1", "10.0.0.1") // same set, other order
	h.src.Refresh()
	expectCalls(t, h.settle(from))

	from = h.mark()
	list.set("10.0.0.1", "10.0.0.2", "127.0.0.1")
	h.src.Refresh()
	got := h.settle(from)
	expectCalls(t, got, "upsert default/np:http")
	want := `default/np:http mode=dsr
  fe 10.96.0.12:80/TCP internal ClusterIP
  fe 10.0.0.1:30080/TCP external NodePort
  fe 10.0.0.2:30080/TCP external NodePort
  fe 127.0.0.1:30080/TCP internal NodePort
`
	if len(got) == 1 {
		if s := formatServices([]*lb.Service{got[0].svc}); s != want {
			t.Errorf("after Refresh:\n%s\nwant:\n%s", s, want)
		}
	}
}

func TestHealthCheckNodePorts(t *testing.T) {
	lbSvc := func(mods ...func(*v1.Service)) *v1.Service {
		return service("default", "web", append([]func(*v1.Service){
			svcType(v1.ServiceTypeLoadBalancer),
			svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP), svcPort("https", 443, 30443, v1.ProtocolTCP)),
			func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
			}}, mods...)...)
	}
	h := startSource(t, Options{NodeName: "node-a"}, append(testNodes(),
		lbSvc(),
		slice("default", "web", "web-1", v4, ports(port("http", 8080), port("https", 8443)),
			ep("10.1.0.1", onNode("node-a")), // counted once for both ports
			ep("10.1.0.2", onNode("node-a")),
			ep("10.1.0.3", onNode("node-a"), conditions(ptr.To(false), ptr.To(true), ptr.To(true))), // terminating
			ep("10.1.0.4", onNode("node-b"))),
		// Cluster policy: no health check.
		service("default", "cluster", clusterIP("10.96.0.11"), svcType(v1.ServiceTypeLoadBalancer),
			func(s *v1.Service) { s.Spec.HealthCheckNodePort = 32001 }),
	)...)
	web := lb.ServiceName{Namespace: "default", Name: "web"}
	wantHC := func(want map[lb.ServiceName]HealthCheckPort) {
		t.Helper()
		select {
		case got := <-h.hcCalls:
			if len(got) != len(want) || got[web] != want[web] {
				t.Errorf("OnHealthCheckPorts got %v, want %v", got, want)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("OnHealthCheckPorts not called within %s", waitTimeout)
		}
	}
	wantHC(map[lb.ServiceName]HealthCheckPort{web: {Port: 32000, LocalEndpoints: 2}})
	if got := h.src.HealthCheckNodePorts(); got[web] != (HealthCheckPort{Port: 32000, LocalEndpoints: 2}) || len(got) != 1 {
		t.Errorf("HealthCheckNodePorts() = %v", got)
	}

	es := slice("default", "web", "web-1", v4, ports(port("http", 8080)), ep("10.1.0.4", onNode("node-b")))
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(bg, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantHC(map[lb.ServiceName]HealthCheckPort{web: {Port: 32000, LocalEndpoints: 0}})

	if err := h.client.CoreV1().Services("default").Delete(bg, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantHC(map[lb.ServiceName]HealthCheckPort{})
	h.settle(h.mark())
	select {
	case got := <-h.hcCalls:
		t.Errorf("OnHealthCheckPorts called without a change: %v", got)
	default:
	}
}

func TestNodeEligible(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, testNodes()...)
	if !h.src.NodeEligible() {
		t.Fatal("NodeEligible() = false for an untainted node")
	}
	n := nodeObj("node-a", "z1", "192.168.0.1")
	n.Spec.Taints = []v1.Taint{{Key: taintToBeDeleted, Effect: v1.TaintEffectNoSchedule}}
	if _, err := h.client.CoreV1().Nodes().Update(bg, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.settle(h.mark())
	if h.src.NodeEligible() {
		t.Error("NodeEligible() = true for a node tainted ToBeDeletedByClusterAutoscaler")
	}
}

func TestRunFailsWhenCachesCannotSync(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("services is forbidden")
	})
	src := NewSource(client, Options{NodeName: "node-a"}, newRecorder(), nil)
	ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
	defer cancel()
	err := src.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "RBAC") {
		t.Fatalf("Run = %v, want an error naming RBAC", err)
	}
	if src.HasSynced() {
		t.Error("HasSynced() = true without a sync")
	}
}

func TestNewServiceAndSliceAfterSync(t *testing.T) {
	h := startSource(t, Options{NodeName: "node-a"}, testNodes()...)
	from := h.mark()
	if _, err := h.client.CoreV1().Services("shop").Create(bg, service("shop", "cart"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	es := slice("shop", "cart", "cart-1", discovery.AddressTypeIPv4, ports(port("http", 8080)), ep("10.1.0.1"))
	if _, err := h.client.DiscoveryV1().EndpointSlices("shop").Create(bg, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.settle(from)
	if len(got) == 0 || got[len(got)-1].op != "upsert" || len(got[len(got)-1].svc.Backends) != 1 {
		t.Fatalf("want upserts ending with the cart service and its backend, got:\n%s", formatCalls(got))
	}
	for _, c := range got {
		if c.name != (lb.ServiceName{Namespace: "shop", Name: "cart", Port: "http"}) {
			t.Errorf("unexpected call %s", c)
		}
	}
}
