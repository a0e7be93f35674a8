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

	kp := testutil.NewNetns(t, "weir-kp-")
	kpRoot := kube.RootVeth(t, kp, netip.Prefix{})
	kpIP := kpRoot.Next()
	// The apiserver listens on the node's root veth address: reach it
	// through this namespace's own veth.
	must(t, kp.Route(netip.PrefixFrom(k.c.Addr.Addr(), 32), kpRoot, ""))
	_, err := k.c.CreateNode(k.ctx, kpNodeName, kpIP)
	must(t, err)

	// ClusterIP + NodePort + LB IP + externalIP.
	web := k.createService(webService("web", k8sExtIP))
	web, err = k.c.SetLoadBalancerIngress(k.ctx, web, k8sLBIP)
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

	// No endpoints at all: neither programs a backend.
	k.createService(kube.Service("e2e", "empty", kube.Port(corev1.ProtocolTCP, 80, 8080)))

	kube.RunKubeProxy(t, k.c, kp, "nftables", kpNodeName)
	k.startAgent()

	localNP := local.Spec.Ports[0].NodePort
	localExternal := map[string]bool{
		frontendOf(k.nodeIP, localNP, corev1.ProtocolTCP): true,
		frontendOf(localLB, 80, corev1.ProtocolTCP):       true,
	}
	compare := func() (nft, weir map[string][]string, views map[string]serviceView) {
		nft = map[string][]string{}
		for fe, bs := range kube.NftServices(t, kp) {
			fe = strings.Replace(fe, kpIP.String()+":", k.nodeIP.String()+":", 1)
			if !localExternal[fe] {
				nft[fe] = bs
			}
		}
		views = inspectByFrontend(k.inspect())
		weir = map[string][]string{}
		for fe, v := range views {
			if localExternal[fe] || !strings.HasPrefix(fe, k.nodeIP.String()+":") && v.Type == "NodePort" {
				continue // see the test's comment
			}
			if bs := effectiveBackends(v); len(bs) > 0 {
				weir[fe] = bs
			}
		}
		return nft, weir, views
	}
	var nft, weir map[string][]string
	var views map[string]serviceView
	// Both converge on their own; wait until they agree (and have the
	// newest service), then report the difference if they never do.
	deadline := time.Now().Add(30 * time.Second)
	for {
		nft, weir, views = compare()
		if mapsEqual(nft, weir) && len(nft) >= 15 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy and weir disagree:\n%s", diffServices(nft, weir))
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("kube-proxy and weir agree on %d frontends", len(nft))

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
