package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

const kpNodeName = "kpnode"

// TestK8sDiffKubeProxy is a differential test: the same objects, served
// by the reference kube-proxy (nftables mode, in its own namespace as
// node "kpnode") and by the weir agent (node "node1"), must give every
// frontend the same backends. kube-proxy's NodePorts on its node address
// are compared with weir's on the weir node's address.
//
// Intended differences, left out of the comparison and checked on their
// own:
//   - weir also serves NodePorts on every other node address (here the
//     root veth's) and on 127.0.0.1 (scope internal, socket hooks);
//     kube-proxy's nftables mode only on --nodeport-addresses (its primary
//     node IP by default) and never on localhost.
//   - kube.NftServices does not model local traffic policies (it returns
//     every DNAT target reachable from a frontend, and kube-proxy's
//     external chain for eTP Local also reaches the cluster chain for
//     local sources), so an eTP Local service's external frontends are
//     compared as "weir: only endpoints on node1" instead.
//   - weir keeps terminating endpoints next to ready ones (state
//     terminating, no new flows); kube-proxy programs only the ready ones
//     then. Weir's active set is compared, and when a service has no
//     ready endpoint, its terminating set (kube-proxy's fallback).
func TestK8sDiffKubeProxy(t *testing.T) {
	k := newK8sLab(t, 3)
	b1, b2, b3 := backendAddr(0, false), backendAddr(1, false), backendAddr(2, false)

	kp, kpIPs := newKubeProxyNode(t, k)
	kpIP := kpIPs[0]

	// ClusterIP + NodePort + LB IP + externalIP.
	web := k.createService(webService("web", k8sExtIP))
	web, err := k.c.SetLoadBalancerIngress(k.ctx, web, k8sLBIP)
	must(t, err)
	k.applySlice(kube.EndpointSlice(web, "web-1", b1, b2, b3))

	// UDP, single endpoint.
	dns := k.createService(kube.Service("e2e", "dns", kube.Port(corev1.ProtocolUDP, 53, 5354)))
	k.applySlice(kube.EndpointSlice(dns, "dns-1", b2))

	// Multiple ports, a named target port, endpoints split over two slices
	// with an address in both.
	multi := kube.Service("e2e", "multi",
		corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
		corev1.ServicePort{Name: "alt", Protocol: corev1.ProtocolTCP, Port: 8000, TargetPort: intstr.FromInt32(80)})
	multi.Spec.Type = corev1.ServiceTypeNodePort
	multi = k.createService(multi)
	for i, addrs := range [][]netip.Addr{{b1, b2}, {b2, b3}} {
		s := kube.EndpointSlice(multi, fmt.Sprintf("multi-%d", i+1), addrs...)
		s.Ports[0].Port = new(int32(8080))
		k.applySlice(s)
	}

	// Ready and terminating endpoints: only the ready one is used.
	mixed := k.createService(kube.Service("e2e", "mixed", kube.Port(corev1.ProtocolTCP, 80, 8080)))
	ms := kube.EndpointSlice(mixed, "mixed-1", b1, b2)
	terminating(ms, 1)
	k.applySlice(ms)

	// Only terminating endpoints: both fall back to them.
	fallback := kube.Service("e2e", "fallback", kube.Port(corev1.ProtocolTCP, 80, 8080))
	fallback.Spec.Type = corev1.ServiceTypeNodePort
	fallback = k.createService(fallback)
	fs := kube.EndpointSlice(fallback, "fallback-1", b1, b2)
	terminating(fs, 0)
	terminating(fs, 1)
	k.applySlice(fs)

	// Session affinity.
	sticky := kube.Service("e2e", "sticky", kube.Port(corev1.ProtocolTCP, 80, 8080))
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky = k.createService(sticky)
	k.applySlice(kube.EndpointSlice(sticky, "sticky-1", b1, b3))

	// eTP Local: b1 on node1 (weir), b2 on kpnode (kube-proxy), b3 elsewhere.
	local := webService("local", netip.Addr{})
	local.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	local = k.createService(local)
	lsl := kube.EndpointSlice(local, "local-1", b1, b2, b3)
	onNode(lsl, 0, k8sNodeName)
	onNode(lsl, 1, kpNodeName)
	onNode(lsl, 2, "node3")
	k.applySlice(lsl)
	localLB := netip.MustParseAddr("198.51.100.20")
	local, err = k.c.SetLoadBalancerIngress(k.ctx, local, localLB)
	must(t, err)

	// loadBalancerSourceRanges: the backends are the same from every
	// frontend (who may reach the LB IP is TestK8sSourceRanges').
	ranged := webService("ranged", netip.MustParseAddr("192.0.2.30"))
	ranged.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
	ranged = k.createService(ranged)
	ranged, err = k.c.SetLoadBalancerIngress(k.ctx, ranged, netip.MustParseAddr("198.51.100.30"))
	must(t, err)
	k.applySlice(kube.EndpointSlice(ranged, "ranged-1", b2, b3))

	// No endpoints at all: neither programs a backend.
	k.createService(kube.Service("e2e", "empty", kube.Port(corev1.ProtocolTCP, 80, 8080)))

	kube.RunKubeProxy(t, k.c, kp, "nftables", kpNodeName)
	k.startAgent()

	localNP := local.Spec.Ports[0].NodePort
	localExternal := map[string]bool{
		frontendOf(k.nodeIP, localNP, corev1.ProtocolTCP): true,
		frontendOf(localLB, 80, corev1.ProtocolTCP):       true,
	}
	views := k.agreeWithKubeProxy(kp, kpIPs, localExternal, 19, false)
	// The ones the loop left out.
	raw := kube.NftServices(t, kp)
	t.Logf("kube-proxy's eTP Local frontends as kube.NftServices reads them (local policy not modelled): NodePort %v, LB %v",
		raw[frontendOf(kpIP, localNP, corev1.ProtocolTCP)], raw[frontendOf(localLB, 80, corev1.ProtocolTCP)])
	for fe := range localExternal {
		if got := activeBackends(views[fe]); !slices.Equal(got, []string{netip.AddrPortFrom(b1, 8080).String()}) {
			t.Errorf("eTP Local %s: weir's backends %v, want only node1's %s:8080", fe, got, b1)
		}
	}
	for _, fe := range []string{
		frontendOf(k.apiIP, web.Spec.Ports[0].NodePort, corev1.ProtocolTCP),
		frontendOf(netip.MustParseAddr("127.0.0.1"), web.Spec.Ports[0].NodePort, corev1.ProtocolTCP),
	} {
		if _, ok := views[fe]; !ok {
			t.Errorf("weir has no NodePort frontend %s (served on every node address and loopback)", fe)
		}
	}
}

// TestK8sDiffKubeProxyDualStack is TestK8sDiffKubeProxy on a dual-stack
// cluster: kube-proxy's nftables mode writes an `ip` and an `ip6` table,
// weir one lb.Service per family, and every frontend of both families
// must get the same backends, also after an update empties one family.
func TestK8sDiffKubeProxyDualStack(t *testing.T) {
	k := newDualStackK8sLab(t, 3)
	b := func(i int, v6 bool) netip.Addr { return backendAddr(i, v6) }
	kp, kpIPs := newKubeProxyNode(t, k)
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	dualStack := func(s *corev1.Service, p corev1.IPFamilyPolicy) *corev1.Service {
		s.Spec.IPFamilyPolicy = new(p)
		return k.createService(s)
	}

	// RequireDualStack NodePort, TCP and UDP, different backends per
	// family: 8 frontends.
	dsSpec := kube.Service("e2e", "ds", kube.Port(tcp, 80, 8080), kube.Port(udp, 53, 5354))
	dsSpec.Spec.Type = corev1.ServiceTypeNodePort
	ds := dualStack(dsSpec, corev1.IPFamilyPolicyRequireDualStack)
	k.applySlice(kube.EndpointSlice(ds, "ds-v4", b(0, false), b(1, false)))
	k.applySlice(kube.EndpointSlice(ds, "ds-v6", b(1, true), b(2, true)))

	// PreferDualStack LoadBalancer with external and ingress IPs of both
	// families: 8 frontends.
	lbSpec := webService("pds", k8sExtIP)
	lbSpec.Spec.ExternalIPs = append(lbSpec.Spec.ExternalIPs, "2001:db8::10")
	pds := dualStack(lbSpec, corev1.IPFamilyPolicyPreferDualStack)
	pds, err := k.c.SetLoadBalancerIngress(k.ctx, pds, k8sLBIP, netip.MustParseAddr("2001:db8:100::10"))
	must(t, err)
	k.applySlice(kube.EndpointSlice(pds, "pds-v4", b(0, false)))
	k.applySlice(kube.EndpointSlice(pds, "pds-v6", b(2, true)))

	// Single-stack IPv6 NodePort; its IPv4 slice is ignored by both: 2.
	v6Spec := kube.Service("e2e", "v6only", kube.Port(tcp, 80, 8080))
	v6Spec.Spec.Type = corev1.ServiceTypeNodePort
	v6Spec.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	v6only := dualStack(v6Spec, corev1.IPFamilyPolicySingleStack)
	k.applySlice(kube.EndpointSlice(v6only, "v6only-v6", b(0, true)))
	k.applySlice(kube.EndpointSlice(v6only, "v6only-v4", b(1, false)))

	// Endpoints of one family only: the other half has none in both: 1.
	half := dualStack(kube.Service("e2e", "half", kube.Port(tcp, 80, 8080)), corev1.IPFamilyPolicyRequireDualStack)
	k.applySlice(kube.EndpointSlice(half, "half-v4", b(0, false), b(2, false)))
	k.applySlice(emptySlice(half, "half-v6", discoveryv1.AddressTypeIPv6))

	// Session affinity and a terminating endpoint in each family: 4.
	stickySpec := kube.Service("e2e", "sticky", kube.Port(tcp, 80, 8080))
	stickySpec.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky := dualStack(stickySpec, corev1.IPFamilyPolicyRequireDualStack)
	k.applySlice(kube.EndpointSlice(sticky, "sticky-v4", b(0, false), b(1, false)))
	k.applySlice(kube.EndpointSlice(sticky, "sticky-v6", b(0, true), b(1, true)))
	term := dualStack(kube.Service("e2e", "term", kube.Port(tcp, 80, 8080)), corev1.IPFamilyPolicyRequireDualStack)
	for _, v6 := range []bool{false, true} {
		s := kube.EndpointSlice(term, "term-"+map[bool]string{false: "v4", true: "v6"}[v6], b(0, v6), b(1, v6))
		terminating(s, 1)
		k.applySlice(s)
	}

	// Single-stack IPv4 with an IPv6 external IP, which both ignore,
	// and IPv6 endpoints waiting for the IPv6 half it gets later: 1.
	growSpec := kube.Service("e2e", "grow", kube.Port(tcp, 80, 8080))
	growSpec.Spec.ExternalIPs = []string{"2001:db8::30"}
	grow := k.createService(growSpec)
	k.applySlice(kube.EndpointSlice(grow, "grow-v4", b(2, false)))
	k.applySlice(kube.EndpointSlice(grow, "grow-v6", b(2, true)))

	// IPv6 first on an IPv4-primary cluster (spec.clusterIP is the IPv6
	// one), NodePort: 4.
	v6firstSpec := kube.Service("e2e", "v6first", kube.Port(tcp, 80, 8080))
	v6firstSpec.Spec.Type = corev1.ServiceTypeNodePort
	v6firstSpec.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	v6first := dualStack(v6firstSpec, corev1.IPFamilyPolicyRequireDualStack)
	if a := netip.MustParseAddr(v6first.Spec.ClusterIP); !a.Is6() {
		t.Fatalf("IPv6-first service got spec.clusterIP %s, want its IPv6 one", a)
	}
	k.applySlice(kube.EndpointSlice(v6first, "v6first-v4", b(1, false)))
	k.applySlice(kube.EndpointSlice(v6first, "v6first-v6", b(0, true), b(2, true)))

	kube.RunKubeProxy(t, k.c, kp, "nftables", kpNodeName)
	k.startAgent()

	// default/kubernetes (the apiserver's own ClusterIP) is one more.
	const want = 8 + 8 + 2 + 1 + 4 + 1 + 4 + 1
	k.agreeWithKubeProxy(kp, kpIPs, nil, want, true)
	nft := kube.NftServices(t, kp)
	var v6 int
	for fe := range nft {
		if frontendAddr(fe).Is6() {
			v6++
		}
	}
	if v6 != 4+4+2+2+2 {
		t.Errorf("kube-proxy's ip6 table has %d frontends, want 14: %v", v6, nft)
	}

	// Update: ds loses its IPv6 endpoints; both drop the four IPv6
	// frontends and keep the IPv4 ones.
	k.applySlice(emptySlice(ds, "ds-v6", discoveryv1.AddressTypeIPv6))
	k.agreeWithKubeProxy(kp, kpIPs, nil, want-4, true)
	nft = kube.NftServices(t, kp)
	if _, ok := nft[frontendOf(kpIPs[1], nodePortOf(ds, udp), udp)]; ok {
		t.Errorf("kube-proxy still has the IPv6 NodePort of ds after its IPv6 endpoints went: %v", nft)
	}

	// grow becomes dual-stack: an IPv6 ClusterIP and the IPv6 external
	// IP appear (2 frontends); back to single-stack, they go again.
	k.setFamilyPolicy(grow.Name, corev1.IPFamilyPolicyRequireDualStack)
	k.agreeWithKubeProxy(kp, kpIPs, nil, want-4+2, true)
	k.setFamilyPolicy(grow.Name, corev1.IPFamilyPolicySingleStack)
	k.agreeWithKubeProxy(kp, kpIPs, nil, want-4, true)
}

// setFamilyPolicy changes the ipFamilyPolicy of service e2e/name; going
// back to SingleStack also drops the secondary family (the apiserver
// requires ipFamilies and clusterIPs to shrink with it).
func (k *k8sLab) setFamilyPolicy(name string, p corev1.IPFamilyPolicy) {
	k.t.Helper()
	api := k.c.Client.CoreV1().Services("e2e")
	s, err := api.Get(k.ctx, name, metav1.GetOptions{})
	must(k.t, err)
	s.Spec.IPFamilyPolicy = new(p)
	if p == corev1.IPFamilyPolicySingleStack {
		s.Spec.IPFamilies = s.Spec.IPFamilies[:1]
		s.Spec.ClusterIPs = s.Spec.ClusterIPs[:1]
	}
	if _, err := api.Update(k.ctx, s, metav1.UpdateOptions{}); err != nil {
		k.t.Fatalf("set ipFamilyPolicy of e2e/%s to %s: %v", name, p, err)
	}
}

// newKubeProxyNode makes the namespace kube-proxy runs in, as node
// "kpnode": a root veth to reach the apiserver, and the Node object with
// the namespace's veth address as InternalIP and, in a dual-stack lab, an
// IPv6 InternalIP too (on the namespace's lo). It returns the namespace
// and the node IPs, IPv4 first.
func newKubeProxyNode(t *testing.T, k *k8sLab) (*testutil.Netns, []netip.Addr) {
	t.Helper()
	kp := testutil.NewNetns(t, "weir-kp-")
	kpRoot := kube.RootVeth(t, kp, netip.Prefix{})
	ips := []netip.Addr{kpRoot.Next()}
	// The apiserver listens on the node's root veth address: reach it
	// through this namespace's own veth.
	must(t, kp.Route(netip.PrefixFrom(k.c.Addr.Addr(), 32), kpRoot, ""))
	if k.nodeIP6.IsValid() {
		ip6 := netip.MustParseAddr("fd00:250::2")
		must(t, kp.AddAddr("lo", netip.PrefixFrom(ip6, 128)))
		ips = append(ips, ip6)
	}
	_, err := k.c.CreateNode(k.ctx, kpNodeName, ips...)
	must(t, err)
	return kp, ips
}

// agreeWithKubeProxy waits (30 s) until kube-proxy's nftables ruleset in
// kp and weir's maps give every frontend the same backends, with at least
// n frontends (exactly n when exact: after a change that removes
// frontends, to wait for it), and fails the test with the difference if
// they never do.
// kube-proxy's NodePorts on its node IPs kpIPs (IPv4, then IPv6) are
// compared with weir's on the lab node's IP of the same family; weir's
// NodePorts on its other addresses, and the frontends in skip, are left
// out (see TestK8sDiffKubeProxy). It returns weir's last inspect.
func (k *k8sLab) agreeWithKubeProxy(kp *testutil.Netns, kpIPs []netip.Addr, skip map[string]bool, n int, exact bool) map[string]serviceView {
	t := k.t
	t.Helper()
	toWeir := map[netip.Addr]netip.Addr{}
	weirNode := map[netip.Addr]bool{k.nodeIP: true}
	for _, ip := range kpIPs {
		if ip.Is4() {
			toWeir[ip] = k.nodeIP
		} else if k.nodeIP6.IsValid() {
			toWeir[ip] = k.nodeIP6
			weirNode[k.nodeIP6] = true
		}
	}
	compare := func() (nft, weir map[string][]string, views map[string]serviceView) {
		nft = map[string][]string{}
		for fe, bs := range kube.NftServices(t, kp) {
			fe = renameFrontend(fe, toWeir)
			if !skip[fe] {
				nft[fe] = bs
			}
		}
		views = inspectByFrontend(k.inspect())
		weir = map[string][]string{}
		for fe, v := range views {
			if skip[fe] || v.Type == "NodePort" && !weirNode[frontendAddr(fe)] {
				continue
			}
			if bs := effectiveBackends(v); len(bs) > 0 {
				weir[fe] = bs
			}
		}
		return nft, weir, views
	}
	// Both converge on their own; wait until they agree (and have the
	// newest service), then report the difference if they never do.
	deadline := time.Now().Add(30 * time.Second)
	for {
		nft, weir, views := compare()
		if mapsEqual(nft, weir) && (len(nft) == n || !exact && len(nft) > n) {
			t.Logf("kube-proxy and weir agree on %d frontends", len(nft))
			return views
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy and weir disagree or miss frontends (%d and %d, want %d, exactly: %v):\n%s",
				len(nft), len(weir), n, exact, diffServices(nft, weir))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// frontendAddr is the address of an "addr:port/PROTO" frontend, or the
// zero Addr.
func frontendAddr(fe string) netip.Addr {
	ap, err := netip.ParseAddrPort(fe[:max(strings.LastIndex(fe, "/"), 0)])
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}

// renameFrontend replaces a frontend's address by its image in m.
func renameFrontend(fe string, m map[netip.Addr]netip.Addr) string {
	a := frontendAddr(fe)
	to, ok := m[a]
	if !ok {
		return fe
	}
	i := strings.LastIndex(fe, "/")
	ap := netip.MustParseAddrPort(fe[:i])
	return netip.AddrPortFrom(to, ap.Port()).String() + fe[i:]
}

// effectiveBackends is where weir sends new connections: the active
// backends, or the terminating ones when none is active.
func effectiveBackends(v serviceView) []string {
	if bs := activeBackends(v); len(bs) > 0 {
		return bs
	}
	var out []string
	for _, b := range v.Backends {
		if b.State == "terminating" {
			out = append(out, b.Address)
		}
	}
	slices.Sort(out)
	return out
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// diffServices lists the frontends on which kube-proxy and weir differ.
func diffServices(nft, weir map[string][]string) string {
	keys := map[string]bool{}
	for k := range nft {
		keys[k] = true
	}
	for k := range weir {
		keys[k] = true
	}
	var lines []string
	for fe := range keys {
		if !slices.Equal(nft[fe], weir[fe]) {
			lines = append(lines, fmt.Sprintf("  %s: kube-proxy %v, weir %v", fe, nft[fe], weir[fe]))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
