package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

// TestKubeSmoke runs the whole reference setup once: a real apiserver, a
// Node, Services with hand-written EndpointSlices, and kube-proxy in
// nftables mode inside a test namespace; then checks that every kind of
// frontend (ClusterIP, NodePort, externalIP, load-balancer ingress IP, the
// single-endpoint form) reads back with the right backends.
func TestKubeSmoke(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)

	node := testutil.NewNetns(t, "weir-k8s-")
	apiAddr := kube.RootVeth(t, node, netip.Prefix{})
	nodeIP := apiAddr.Next()
	c := kube.StartCluster(t, kube.Options{BindAddr: apiAddr})

	const ns, nodeName = "smoke", "node1"
	smokeMust(t, c.CreateNamespace(ctx, ns))
	_, err := c.CreateNode(ctx, nodeName, nodeIP)
	smokeMust(t, err)

	ep1, ep2 := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.11")
	extIP, lbIP := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.10")

	web := kube.Service(ns, "web", kube.Port(corev1.ProtocolTCP, 80, 8080))
	web.Spec.Type = corev1.ServiceTypeLoadBalancer
	web.Spec.ExternalIPs = []string{extIP.String()}
	web = smokeService(ctx, t, c, web)
	web, err = c.SetLoadBalancerIngress(ctx, web, lbIP)
	smokeMust(t, err)
	smokeSlice(ctx, t, c, kube.EndpointSlice(web, "web-1", ep1, ep2))

	dns := kube.Service(ns, "dns", kube.Port(corev1.ProtocolUDP, 53, 5353))
	dns = smokeService(ctx, t, c, dns)
	smokeSlice(ctx, t, c, kube.EndpointSlice(dns, "dns-1", ep1))

	kube.RunKubeProxy(t, c, node, "nftables", nodeName)

	clusterIP := netip.MustParseAddr(web.Spec.ClusterIP)
	nodePort := uint16(web.Spec.Ports[0].NodePort)
	both := []string{"10.244.1.10:8080", "10.244.1.11:8080"}
	want := map[string][]string{
		smokeFrontend(clusterIP, 80, "TCP"):                               both,
		smokeFrontend(extIP, 80, "TCP"):                                   both,
		smokeFrontend(lbIP, 80, "TCP"):                                    both,
		smokeFrontend(nodeIP, nodePort, "TCP"):                            both,
		smokeFrontend(netip.MustParseAddr(dns.Spec.ClusterIP), 53, "UDP"): {"10.244.1.10:5353"},
	}
	for fe, backends := range want {
		kube.WaitNft(t, node, fe, backends)
	}

	// The apiserver's own Service is programmed too, pointing at the
	// address kube-proxy reached it on.
	got := kube.NftServices(t, node)
	if b := got["10.96.0.1:443/TCP"]; len(b) != 1 || b[0] != c.Addr.String() {
		t.Errorf("kubernetes.default: got %v, want [%s]", b, c.Addr)
	}
	if len(got) != len(want)+1 {
		t.Errorf("got %d frontends, want %d: %v", len(got), len(want)+1, got)
	}
}

func smokeFrontend(a netip.Addr, port uint16, proto string) string {
	return netip.AddrPortFrom(a, port).String() + "/" + proto
}

func smokeService(ctx context.Context, t *testing.T, c *kube.Cluster, s *corev1.Service) *corev1.Service {
	t.Helper()
	out, err := c.Client.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", s.Namespace, s.Name, err)
	}
	return out
}

func smokeSlice(ctx context.Context, t *testing.T, c *kube.Cluster, s *discoveryv1.EndpointSlice) {
	t.Helper()
	if _, err := c.Client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create endpointslice %s/%s: %v", s.Namespace, s.Name, err)
	}
}

func smokeMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
