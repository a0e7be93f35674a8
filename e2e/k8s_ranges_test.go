package e2e

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/e2e/kube"
)

// TestK8sSourceRanges checks loadBalancerSourceRanges with real traffic
// from the client, as kube-proxy applies them: a client outside the
// ranges is dropped at the load-balancer IP, but reaches the same
// service through its NodePort and external IP; once the ranges include
// it, the load-balancer IP answers too.
func TestK8sSourceRanges(t *testing.T) {
	k := newK8sLab(t, 1)
	lbIP := netip.MustParseAddr("198.51.100.20")
	extIP := netip.MustParseAddr("192.0.2.20")
	// The client reaches both addresses through the node.
	must(t, k.client.Route(netip.PrefixFrom(lbIP, 32), k.nodeIP, ""))
	must(t, k.client.Route(netip.PrefixFrom(extIP, 32), k.nodeIP, ""))

	svc := webService("ranged", extIP)
	svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"} // not the client
	svc = k.createService(svc)
	svc, err := k.c.SetLoadBalancerIngress(k.ctx, svc, lbIP)
	must(t, err)
	k.applySlice(kube.EndpointSlice(svc, "ranged-1", backendAddr(0, false)))
	k.startAgent()

	tcp := corev1.ProtocolTCP
	np := svc.Spec.Ports[0].NodePort
	b1 := netip.AddrPortFrom(backendAddr(0, false), 8080).String() + "=active"
	k.waitInspect(func(m map[string]serviceView) error {
		return joinErrs([]error{
			wantFrontend(m, frontendOf(lbIP, 80, tcp), "e2e/ranged", "LoadBalancer", "external", b1),
			wantFrontend(m, frontendOf(extIP, 80, tcp), "e2e/ranged", "ExternalIP", "external", b1),
			wantFrontend(m, frontendOf(k.nodeIP, np, tcp), "e2e/ranged", "NodePort", "external", b1),
		})
	})

	if name, err := k.request(netip.AddrPortFrom(lbIP, 80), 44000, "/"); err == nil {
		t.Errorf("load-balancer IP from outside the source ranges: answered by %s, want dropped", name)
	}
	for i, addr := range []netip.AddrPort{netip.AddrPortFrom(k.nodeIP, uint16(np)), netip.AddrPortFrom(extIP, 80)} {
		if name, err := k.request(addr, 44010+i, "/"); err != nil || name != "b1" {
			t.Errorf("%s from outside the load balancer's source ranges: %q, %v; want b1 (kube-proxy restricts only load-balancer IPs)", addr, name, err)
		}
	}

	// Let the client in.
	api := k.c.Client.CoreV1().Services("e2e")
	cur, err := api.Get(k.ctx, "ranged", metav1.GetOptions{})
	must(t, err)
	cur.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", prefix(clientAddr(false)).Masked().String()}
	_, err = api.Update(k.ctx, cur, metav1.UpdateOptions{})
	must(t, err)
	deadline := time.Now().Add(30 * time.Second)
	for port := 44100; ; port++ {
		name, err := k.request(netip.AddrPortFrom(lbIP, 80), port, "/")
		if err == nil && name == "b1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("load-balancer IP after the ranges took the client in: %q, %v", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
