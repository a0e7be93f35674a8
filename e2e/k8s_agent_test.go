package e2e

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weir-lb/weir/e2e/kube"
)

var (
	k8sExtIP = netip.MustParseAddr("192.0.2.10")
	k8sLBIP  = netip.MustParseAddr("198.51.100.10")
)

// TestK8sAgent runs the agent against a real apiserver in a node
// namespace and checks, through `weir inspect services` and real traffic,
// every kind of frontend and the Kubernetes semantics of lb/k8s/doc.go.
//
// The cluster is IPv4 single-stack; TestK8sDualStack covers dual-stack.
func TestK8sAgent(t *testing.T) {
	k := newK8sLab(t, 3)
	b1, b2, b3 := backendAddr(0, false), backendAddr(1, false), backendAddr(2, false)
	be := func(a netip.Addr, port int, state string) string {
		return netip.AddrPortFrom(a, uint16(port)).String() + "=" + state
	}

	// web: ClusterIP, NodePort, LoadBalancer ingress IP and externalIP.
	web := k.createService(webService("web", k8sExtIP))
	web, err := k.c.SetLoadBalancerIngress(k.ctx, web, k8sLBIP)
	must(t, err)
	k.applySlice(kube.EndpointSlice(web, "web-1", b1, b2))

	// local: externalTrafficPolicy Local, b1 on this node, b2 elsewhere.
	local := kube.Service("e2e", "local", kube.Port(corev1.ProtocolTCP, 80, 8080))
	local.Spec.Type = corev1.ServiceTypeNodePort
	local.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	local = k.createService(local)
	ls := kube.EndpointSlice(local, "local-1", b1, b2)
	onNode(ls, 0, k8sNodeName)
	onNode(ls, 1, "node2")
	k.applySlice(ls)

	// sticky: sessionAffinity ClientIP.
	sticky := kube.Service("e2e", "sticky", kube.Port(corev1.ProtocolTCP, 80, 8080))
	sticky.Spec.Type = corev1.ServiceTypeNodePort
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky = k.createService(sticky)
	k.applySlice(kube.EndpointSlice(sticky, "sticky-1", b1, b2, b3))

	// term: b2 is serving but terminating.
	term := k.createService(kube.Service("e2e", "term", kube.Port(corev1.ProtocolTCP, 80, 8080)))
	ts := kube.EndpointSlice(term, "term-1", b1, b2)
	terminating(ts, 1)
	k.applySlice(ts)

	// multi: two ports, the TCP one with a named target port.
	multi := kube.Service("e2e", "multi",
		corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
		corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5354)})
	multi = k.createService(multi)
	ms := kube.EndpointSlice(multi, "multi-1", b1)
	ms.Ports[0].Port = new(int32(8080)) // what the named port resolves to
	k.applySlice(ms)

	// Skipped: headless, ExternalName, another proxy's service.
	headless := kube.Service("e2e", "headless", kube.Port(corev1.ProtocolTCP, 80, 8080))
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	headless = k.createService(headless)
	k.applySlice(kube.EndpointSlice(headless, "headless-1", b1))
	extName := kube.Service("e2e", "extname", kube.Port(corev1.ProtocolTCP, 80, 80))
	extName.Spec.Type = corev1.ServiceTypeExternalName
	extName.Spec.ExternalName = "example.invalid"
	k.createService(extName)
	other := kube.Service("e2e", "other", kube.Port(corev1.ProtocolTCP, 80, 8080))
	other.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "someone-else"}
	other = k.createService(other)
	k.applySlice(kube.EndpointSlice(other, "other-1", b1))

	k.startAgent()

	webIP := netip.MustParseAddr(web.Spec.ClusterIP)
	webNP := web.Spec.Ports[0].NodePort
	localNP, stickyNP := local.Spec.Ports[0].NodePort, sticky.Spec.Ports[0].NodePort
	termIP, multiIP := netip.MustParseAddr(term.Spec.ClusterIP), netip.MustParseAddr(multi.Spec.ClusterIP)
	both := []string{be(b1, 8080, "active"), be(b2, 8080, "active")}
	tcp := corev1.ProtocolTCP
	k.waitInspect(func(m map[string]serviceView) error {
		checks := []error{
			wantFrontend(m, frontendOf(webIP, 80, tcp), "e2e/web", "ClusterIP", "internal", both...),
			wantFrontend(m, frontendOf(k.nodeIP, webNP, tcp), "e2e/web", "NodePort", "external", both...),
			wantFrontend(m, frontendOf(k.apiIP, webNP, tcp), "e2e/web", "NodePort", "external", both...),
			wantFrontend(m, frontendOf(netip.MustParseAddr("127.0.0.1"), webNP, tcp), "e2e/web", "NodePort", "internal", both...),
			wantFrontend(m, frontendOf(k8sLBIP, 80, tcp), "e2e/web", "LoadBalancer", "external", both...),
			wantFrontend(m, frontendOf(k8sExtIP, 80, tcp), "e2e/web", "ExternalIP", "external", both...),
			// eTP Local: the cluster view has every endpoint, the
			// external one only this node's.
			wantFrontend(m, frontendOf(netip.MustParseAddr(local.Spec.ClusterIP), 80, tcp), "e2e/local", "ClusterIP", "internal", both...),
			wantFrontend(m, frontendOf(k.nodeIP, localNP, tcp), "e2e/local", "NodePort", "external", be(b1, 8080, "active")),
			wantFrontend(m, frontendOf(termIP, 80, tcp), "e2e/term", "ClusterIP", "internal", be(b1, 8080, "active"), be(b2, 8080, "terminating")),
			wantFrontend(m, frontendOf(multiIP, 80, tcp), "e2e/multi", "ClusterIP", "internal", be(b1, 8080, "active")),
			wantFrontend(m, frontendOf(multiIP, 53, corev1.ProtocolUDP), "e2e/multi", "ClusterIP", "internal", be(b1, 5354, "active")),
		}
		return joinErrs(checks)
	})
	views := k.inspect()
	for _, v := range views {
		switch v.Service {
		case "e2e/headless", "e2e/extname", "e2e/other":
			t.Errorf("%s is programmed (%s), want it skipped", v.Service, v.Frontend)
		case "e2e/web":
			if v.Port != "tcp-80" {
				t.Errorf("e2e/web %s: port name %q, want tcp-80", v.Frontend, v.Port)
			}
		case "e2e/multi":
			if want := map[string]string{"TCP": "http", "UDP": "dns"}[v.Frontend[strings.LastIndex(v.Frontend, "/")+1:]]; v.Port != want {
				t.Errorf("e2e/multi %s: port name %q, want %q", v.Frontend, v.Port, want)
			}
		}
	}

	// North-south through XDP on the node's uplink, SNAT to the backends.
	nodePort := func(np int32) netip.AddrPort { return netip.AddrPortFrom(k.nodeIP, uint16(np)) }
	if got := spread(t, k.lab, nodePort(webNP), 30, 43000); !sameKeys(got, "b1", "b2") {
		t.Errorf("NodePort %d: answers from %v, want b1 and b2", webNP, got)
	}
	if got := spread(t, k.lab, nodePort(stickyNP), 20, 43100); len(got) != 1 {
		t.Errorf("NodePort %d with ClientIP affinity: answers from %v, want one backend", stickyNP, got)
	}
	if got := spread(t, k.lab, nodePort(localNP), 10, 43200); !sameKeys(got, "b1") {
		t.Errorf("NodePort %d with eTP Local: answers from %v, want only the local b1", localNP, got)
	}

	// East-west: a process in the test cgroup on the node, socket hooks.
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(webIP, 80), 16); !sameKeys(got, "b1", "b2") {
		t.Errorf("ClusterIP %s:80 from the node's cgroup: answers from %v, want b1 and b2", webIP, got)
	}
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(webNP)), 4); !subsetKeys(got, "b1", "b2") {
		t.Errorf("NodePort on 127.0.0.1 from the node's cgroup: answers from %v, want b1/b2", got)
	}
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(termIP, 80), 8); !sameKeys(got, "b1") {
		t.Errorf("ClusterIP with a terminating endpoint: answers from %v, want only the ready b1", got)
	}

	// Updates: scale up to three endpoints, then down to one.
	k.applySlice(kube.EndpointSlice(web, "web-1", b1, b2, b3))
	three := append(slices.Clone(both), be(b3, 8080, "active"))
	k.waitInspect(func(m map[string]serviceView) error {
		return wantFrontend(m, frontendOf(k.nodeIP, webNP, tcp), "e2e/web", "NodePort", "external", three...)
	})
	if got := spread(t, k.lab, nodePort(webNP), 40, 43300); !sameKeys(got, "b1", "b2", "b3") {
		t.Errorf("after scale-up: answers from %v, want b1, b2 and b3", got)
	}
	k.applySlice(kube.EndpointSlice(web, "web-1", b3))
	k.waitInspect(func(m map[string]serviceView) error {
		return joinErrs([]error{
			wantFrontend(m, frontendOf(webIP, 80, tcp), "e2e/web", "ClusterIP", "internal", be(b3, 8080, "active")),
			wantFrontend(m, frontendOf(k8sLBIP, 80, tcp), "e2e/web", "LoadBalancer", "external", be(b3, 8080, "active")),
		})
	})
	if got := spread(t, k.lab, nodePort(webNP), 10, 43400); !sameKeys(got, "b3") {
		t.Errorf("after scale-down to b3: answers from %v", got)
	}

	// Deletes: every frontend of the service goes.
	k.deleteService("e2e", "web")
	k.waitUnprogrammed("e2e", "web")
}

func joinErrs(errs []error) error {
	var msgs []string
	for _, e := range errs {
		if e != nil {
			msgs = append(msgs, e.Error())
		}
	}
	if msgs == nil {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\n"))
}

// sameKeys reports whether got's keys are exactly want.
func sameKeys(got map[string]int, want ...string) bool {
	keys := slices.Sorted(maps.Keys(got))
	slices.Sort(want)
	return slices.Equal(keys, want)
}

func subsetKeys(got map[string]int, allowed ...string) bool {
	for k := range got {
		if !slices.Contains(allowed, k) {
			return false
		}
	}
	return len(got) > 0
}
