package kube

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/internal/testutil"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// The loopback cluster: client, kubeconfig (through kubectl), the node
// status subresource and the builders all work against a real apiserver.
func TestStartClusterLoopback(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx := testContext(t)
	c := StartCluster(t, Options{})
	if !c.Addr.Addr().IsLoopback() {
		t.Fatalf("default cluster listens on %s, want loopback", c.Addr)
	}

	ip := netip.MustParseAddr("10.250.255.2")
	if _, err := c.CreateNode(ctx, "n1", ip); err != nil {
		t.Fatal(err)
	}
	n, err := c.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Status.Addresses) == 0 || n.Status.Addresses[0].Address != ip.String() {
		t.Fatalf("node status addresses %v, want InternalIP %s", n.Status.Addresses, ip)
	}

	if err := c.CreateNamespace(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services("t").Create(ctx, Service("t", "s", Port(corev1.ProtocolTCP, 80, 8080)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("10.96.0.0/16").Contains(netip.MustParseAddr(svc.Spec.ClusterIP)) {
		t.Fatalf("ClusterIP %s outside the default service CIDR", svc.Spec.ClusterIP)
	}
	slice := EndpointSlice(svc, "s-1", netip.MustParseAddr("10.244.0.5"))
	if _, err := c.Client.DiscoveryV1().EndpointSlices("t").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	_, _, kubectl := Binaries(t)
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig,
		"get", "endpointslices", "-n", "t", "-o", "name").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl with the harness kubeconfig: %v\n%s", err, out)
	}
	if strings.TrimSpace(string(out)) != "endpointslice.discovery.k8s.io/s-1" {
		t.Fatalf("kubectl get endpointslices: %q", out)
	}
}

func TestServiceRange(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{ServiceCIDR: netip.MustParsePrefix("10.97.0.0/16")}, "10.97.0.0/16"},
		{Options{ServiceCIDRs: DualStackServiceCIDRs}, "10.96.0.0/16,fd00:96::/108"},
		{Options{ServiceCIDR: netip.MustParsePrefix("10.97.0.0/16"), ServiceCIDRs: DualStackServiceCIDRs}, "10.96.0.0/16,fd00:96::/108"},
	} {
		if got := tc.opts.serviceRange(); got != tc.want {
			t.Errorf("%+v: --service-cluster-ip-range=%s, want %s", tc.opts, got, tc.want)
		}
	}
}

// A dual-stack cluster: RequireDualStack services get a cluster IP of each
// family, single-stack ones one of the primary family, and a Node keeps
// both InternalIPs in order.
func TestStartClusterDualStack(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx := testContext(t)
	c := StartCluster(t, Options{ServiceCIDRs: DualStackServiceCIDRs})
	ips := []netip.Addr{netip.MustParseAddr("10.250.255.2"), netip.MustParseAddr("fd00:250::2")}
	n, err := c.CreateNode(ctx, "n1", ips...)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Status.Addresses) < 2 || n.Status.Addresses[0].Address != ips[0].String() || n.Status.Addresses[1].Address != ips[1].String() {
		t.Fatalf("node status addresses %v, want InternalIPs %v", n.Status.Addresses, ips)
	}
	if err := c.CreateNamespace(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	create := func(name string, policy corev1.IPFamilyPolicy) []string {
		t.Helper()
		s := Service("t", name, Port(corev1.ProtocolTCP, 80, 8080))
		s.Spec.IPFamilyPolicy = new(policy)
		out, err := c.Client.CoreV1().Services("t").Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return out.Spec.ClusterIPs
	}
	in := func(ip string, p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(ip)) }
	v4, v6 := DualStackServiceCIDRs[0], DualStackServiceCIDRs[1]
	if got := create("dual", corev1.IPFamilyPolicyRequireDualStack); len(got) != 2 || !in(got[0], v4) || !in(got[1], v6) {
		t.Errorf("RequireDualStack service: cluster IPs %v, want one in %s then one in %s", got, v4, v6)
	}
	if got := create("single", corev1.IPFamilyPolicySingleStack); len(got) != 1 || !in(got[0], v4) {
		t.Errorf("SingleStack service: cluster IPs %v, want one in the primary %s", got, v4)
	}
}

// kube-proxy in iptables mode inside a namespace, against an apiserver
// on a root-side veth address.
func TestKubeProxyIptables(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx := testContext(t)
	ns := testutil.NewNetns(t, "weir-k8s-")
	apiAddr := RootVeth(t, ns, netip.Prefix{})
	c := StartCluster(t, Options{BindAddr: apiAddr})
	if _, err := c.CreateNode(ctx, "n1", apiAddr.Next()); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services("t").Create(ctx, Service("t", "s", Port(corev1.ProtocolTCP, 80, 8080)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := EndpointSlice(svc, "s-1", netip.MustParseAddr("10.244.0.5"))
	if _, err := c.Client.DiscoveryV1().EndpointSlices("t").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	RunKubeProxy(t, c, ns, "iptables", "n1")
	want := "-d " + svc.Spec.ClusterIP + "/32 -p tcp -m comment --comment \"t/s:tcp-80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-"
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := ns.Run(t, "iptables-save", "-t", "nat")
		if strings.Contains(out, want) && strings.Contains(out, "--to-destination 10.244.0.5:8080") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy did not program %s -> 10.244.0.5:8080 in 30 s; want a rule containing %q\n%s", svc.Spec.ClusterIP, want, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
