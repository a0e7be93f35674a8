package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/weir-lb/weir/e2e/kube"
)

// TestK8sDualStack runs the agent against a dual-stack apiserver
// (10.96.0.0/16 and fd00:96::/108, IPv4 primary) and checks that every
// family of a service is its own set of frontends with the backends of
// that family only, through `weir inspect services` and real traffic:
// east-west to both ClusterIPs through the socket hooks, north-south to
// the IPv6 NodePort through XDP (SNAT: the NodePort differs from the
// target port), then an update that empties the IPv6 half and a delete.
//
// Backends: b1 and b2 serve the IPv4 halves, b3 and b4 the IPv6 ones, so
// a backend's name tells which family a connection reached.
func TestK8sDualStack(t *testing.T) {
	k := newDualStackK8sLab(t, 4)
	v4 := backendsOf(0, 1)
	v6 := []netip.Addr{backendAddr(2, true), backendAddr(3, true)}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP

	// ds: RequireDualStack NodePort, TCP 80 -> 8080 and UDP 53 -> 5354.
	ds := kube.Service("e2e", "ds", kube.Port(tcp, 80, 8080), kube.Port(udp, 53, 5354))
	ds.Spec.Type = corev1.ServiceTypeNodePort
	ds.Spec.IPFamilyPolicy = new(corev1.IPFamilyPolicyRequireDualStack)
	ds = k.createService(ds)
	k.applySlice(kube.EndpointSlice(ds, "ds-v4", v4...))
	k.applySlice(kube.EndpointSlice(ds, "ds-v6", v6...))

	// pds: PreferDualStack ClusterIP; the cluster has both families, so
	// it gets both.
	pds := kube.Service("e2e", "pds", kube.Port(tcp, 80, 8080))
	pds.Spec.IPFamilyPolicy = new(corev1.IPFamilyPolicyPreferDualStack)
	pds = k.createService(pds)
	k.applySlice(kube.EndpointSlice(pds, "pds-v4", v4[0]))
	k.applySlice(kube.EndpointSlice(pds, "pds-v6", v6[0]))

	// v6only: single-stack IPv6 NodePort. Its IPv4 slice must be ignored.
	v6only := kube.Service("e2e", "v6only", kube.Port(tcp, 80, 8080))
	v6only.Spec.Type = corev1.ServiceTypeNodePort
	v6only.Spec.IPFamilyPolicy = new(corev1.IPFamilyPolicySingleStack)
	v6only.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	v6only = k.createService(v6only)
	k.applySlice(kube.EndpointSlice(v6only, "v6only-v6", v6[1]))
	k.applySlice(kube.EndpointSlice(v6only, "v6only-v4", v4[0]))

	dsIP4, dsIP6 := clusterIPsOf(t, ds)
	pdsIP4, pdsIP6 := clusterIPsOf(t, pds)
	v6onlyIP4, v6onlyIP6 := clusterIPsOf(t, v6only)
	if !dsIP4.IsValid() || !dsIP6.IsValid() || !pdsIP4.IsValid() || !pdsIP6.IsValid() || v6onlyIP4.IsValid() || !v6onlyIP6.IsValid() {
		t.Fatalf("apiserver assigned cluster IPs ds %v, pds %v, v6only %v: want two, two and one IPv6",
			ds.Spec.ClusterIPs, pds.Spec.ClusterIPs, v6only.Spec.ClusterIPs)
	}

	k.startAgent()

	dsTCP, dsUDP := nodePortOf(ds, tcp), nodePortOf(ds, udp)
	v6onlyNP := nodePortOf(v6only, tcp)
	at := func(addrs []netip.Addr, port int, state string) []string {
		var out []string
		for _, a := range addrs {
			out = append(out, netip.AddrPortFrom(a, uint16(port)).String()+"="+state)
		}
		return out
	}
	tcp4, udp4 := at(v4, 8080, "active"), at(v4, 5354, "active")
	tcp6, udp6 := at(v6, 8080, "active"), at(v6, 5354, "active")
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	k.waitInspect(func(m map[string]serviceView) error {
		return joinErrs([]error{
			wantFrontend(m, frontendOf(dsIP4, 80, tcp), "e2e/ds", "ClusterIP", "internal", tcp4...),
			wantFrontend(m, frontendOf(dsIP4, 53, udp), "e2e/ds", "ClusterIP", "internal", udp4...),
			wantFrontend(m, frontendOf(dsIP6, 80, tcp), "e2e/ds", "ClusterIP", "internal", tcp6...),
			wantFrontend(m, frontendOf(dsIP6, 53, udp), "e2e/ds", "ClusterIP", "internal", udp6...),
			wantFrontend(m, frontendOf(k.nodeIP, dsTCP, tcp), "e2e/ds", "NodePort", "external", tcp4...),
			wantFrontend(m, frontendOf(k.nodeIP, dsUDP, udp), "e2e/ds", "NodePort", "external", udp4...),
			wantFrontend(m, frontendOf(k.apiIP, dsTCP, tcp), "e2e/ds", "NodePort", "external", tcp4...),
			wantFrontend(m, frontendOf(k.nodeIP6, dsTCP, tcp), "e2e/ds", "NodePort", "external", tcp6...),
			wantFrontend(m, frontendOf(k.nodeIP6, dsUDP, udp), "e2e/ds", "NodePort", "external", udp6...),
			wantFrontend(m, frontendOf(lo4, dsTCP, tcp), "e2e/ds", "NodePort", "internal", tcp4...),
			wantFrontend(m, frontendOf(lo6, dsTCP, tcp), "e2e/ds", "NodePort", "internal", tcp6...),
			wantFrontend(m, frontendOf(pdsIP4, 80, tcp), "e2e/pds", "ClusterIP", "internal", tcp4[0]),
			wantFrontend(m, frontendOf(pdsIP6, 80, tcp), "e2e/pds", "ClusterIP", "internal", tcp6[0]),
			wantFrontend(m, frontendOf(v6onlyIP6, 80, tcp), "e2e/v6only", "ClusterIP", "internal", tcp6[1]),
			wantFrontend(m, frontendOf(k.nodeIP6, v6onlyNP, tcp), "e2e/v6only", "NodePort", "external", tcp6[1]),
		})
	})
	views := k.inspect()
	if err := backendsOfOwnFamily(views); err != nil {
		t.Error(err)
	}
	if fes := frontendsOf(views, "e2e/v6only", false); len(fes) > 0 {
		t.Errorf("single-stack IPv6 e2e/v6only has IPv4 frontends %v", fes)
	}
	if !strings.HasPrefix(frontendOf(dsIP6, 80, tcp), "[fd00:96::") {
		t.Errorf("IPv6 ClusterIP frontend %s is not bracketed in fd00:96::/108", frontendOf(dsIP6, 80, tcp))
	}

	// East-west: a process in the hooked cgroup, both ClusterIPs.
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(dsIP4, 80), 16); !sameKeys(got, "b1", "b2") {
		t.Errorf("ClusterIP %s:80 from the node's cgroup: answers from %v, want the IPv4 backends b1 and b2", dsIP4, got)
	}
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(dsIP6, 80), 16); !sameKeys(got, "b3", "b4") {
		t.Errorf("ClusterIP [%s]:80 from the node's cgroup: answers from %v, want the IPv6 backends b3 and b4", dsIP6, got)
	}
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(lo6, uint16(dsTCP)), 4); !subsetKeys(got, "b3", "b4") {
		t.Errorf("NodePort [::1]:%d from the node's cgroup: answers from %v, want b3/b4", dsTCP, got)
	}

	for _, a := range []netip.Addr{dsIP4, dsIP6} {
		want := map[bool][]string{false: {"b1", "b2"}, true: {"b3", "b4"}}[a.Is6()]
		name, err := k.udpInCgroup(netip.AddrPortFrom(a, 53))
		if err != nil || !slices.Contains(want, name) {
			t.Errorf("UDP to ClusterIP %s from the node's cgroup: answer %q (%v), want one of %v", netip.AddrPortFrom(a, 53), name, err, want)
		}
	}

	// North-south from the client to the IPv6 NodePorts, XDP with SNAT.
	np6 := netip.AddrPortFrom(k.nodeIP6, uint16(dsTCP))
	if got := spread(t, k.lab, np6, 30, 44000); !sameKeys(got, "b3", "b4") {
		t.Errorf("NodePort %s: answers from %v, want b3 and b4", np6, got)
	}
	if got := spread(t, k.lab, netip.AddrPortFrom(k.nodeIP6, uint16(v6onlyNP)), 6, 44100); !sameKeys(got, "b4") {
		t.Errorf("IPv6-only NodePort %d: answers from %v, want b4", v6onlyNP, got)
	}
	udpNP6 := netip.AddrPortFrom(k.nodeIP6, uint16(dsUDP))
	name, from, err := k.udpRequest(udpNP6)
	if err != nil {
		t.Errorf("UDP NodePort %s: %v", udpNP6, err)
	} else if (name != "b3" && name != "b4") || from != udpNP6 {
		t.Errorf("UDP NodePort %s: answer %q from %s, want b3 or b4 from the NodePort", udpNP6, name, from)
	}
	np4 := netip.AddrPortFrom(k.nodeIP, uint16(dsTCP))
	if got := spread(t, k.lab, np4, 10, 44200); !subsetKeys(got, "b1", "b2") {
		t.Errorf("NodePort %s: answers from %v, want b1/b2", np4, got)
	}

	// Update: the IPv6 slice loses its endpoints. IPv6 has no backends
	// (connections refused), IPv4 keeps serving.
	k.applySlice(emptySlice(ds, "ds-v6", discoveryv1.AddressTypeIPv6))
	k.waitInspect(func(m map[string]serviceView) error {
		return joinErrs([]error{
			wantFrontend(m, frontendOf(dsIP6, 80, tcp), "e2e/ds", "ClusterIP", "internal"),
			wantFrontend(m, frontendOf(k.nodeIP6, dsTCP, tcp), "e2e/ds", "NodePort", "external"),
			wantFrontend(m, frontendOf(dsIP4, 80, tcp), "e2e/ds", "ClusterIP", "internal", tcp4...),
			wantFrontend(m, frontendOf(k.nodeIP, dsTCP, tcp), "e2e/ds", "NodePort", "external", tcp4...),
		})
	})
	if err := k.connectInCgroup(netip.AddrPortFrom(dsIP6, 80)); err == nil {
		t.Errorf("ClusterIP [%s]:80 without IPv6 endpoints accepted a connection, want it refused", dsIP6)
	} else if !strings.Contains(err.Error(), "refused") {
		t.Errorf("ClusterIP [%s]:80 without IPv6 endpoints: %v, want the connection refused", dsIP6, err)
	}
	if got := k.spreadInCgroup(t, netip.AddrPortFrom(dsIP4, 80), 8); !sameKeys(got, "b1", "b2") {
		t.Errorf("IPv4 ClusterIP after the IPv6 half emptied: answers from %v, want b1 and b2", got)
	}
	if got := spread(t, k.lab, np4, 10, 44300); !subsetKeys(got, "b1", "b2") {
		t.Errorf("IPv4 NodePort after the IPv6 half emptied: answers from %v, want b1/b2", got)
	}

	// Delete: both halves go.
	k.deleteService("e2e", "ds")
	k.waitUnprogrammed("e2e", "ds")
	if _, err := k.curlInCgroup(netip.AddrPortFrom(dsIP4, 80)); err == nil {
		t.Errorf("deleted service's ClusterIP %s:80 still answers", dsIP4)
	}
}

// clusterIPsOf returns a created service's IPv4 and IPv6 cluster IPs (the
// zero Addr for a family it doesn't have).
func clusterIPsOf(t *testing.T, s *corev1.Service) (v4, v6 netip.Addr) {
	t.Helper()
	for _, ip := range s.Spec.ClusterIPs {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			t.Fatalf("service %s/%s: cluster IP %q: %v", s.Namespace, s.Name, ip, err)
		}
		if a.Is6() {
			v6 = a
		} else {
			v4 = a
		}
	}
	return v4, v6
}

// nodePortOf is the NodePort of a created service's first port of proto.
func nodePortOf(s *corev1.Service, proto corev1.Protocol) int32 {
	for _, p := range s.Spec.Ports {
		if p.Protocol == proto {
			return p.NodePort
		}
	}
	return 0
}

// emptySlice is a slice of svc with the given address type and no
// endpoints (kube.EndpointSlice types an empty slice IPv4, and a slice's
// address type can't change).
func emptySlice(svc *corev1.Service, name string, at discoveryv1.AddressType) *discoveryv1.EndpointSlice {
	s := kube.EndpointSlice(svc, name)
	s.AddressType = at
	return s
}

// frontendsOf lists a service's frontends of one family.
func frontendsOf(views []serviceView, service string, v6 bool) []string {
	var out []string
	for _, v := range views {
		if v.Service == service && strings.HasPrefix(v.Frontend, "[") == v6 {
			out = append(out, v.Frontend)
		}
	}
	return out
}

// backendsOfOwnFamily checks that no frontend has a backend of the other
// address family: Kubernetes never translates between families.
func backendsOfOwnFamily(views []serviceView) error {
	var errs []error
	for _, v := range views {
		fe6 := strings.HasPrefix(v.Frontend, "[")
		for _, b := range v.Backends {
			if strings.HasPrefix(b.Address, "[") != fe6 {
				errs = append(errs, fmt.Errorf("%s frontend %s has backend %s of the other family", v.Service, v.Frontend, b.Address))
			}
		}
	}
	return errors.Join(errs...)
}

// TestK8sDualStackHealthCheck compares the healthCheckNodePort of a
// dual-stack LoadBalancer with externalTrafficPolicy Local against
// kube-proxy's. kube-proxy runs one proxier per family, each with its own
// health-check server on that family's node addresses counting that
// family's local ready endpoints, so a load balancer probing the node's
// IPv6 address learns whether the IPv6 half has a local endpoint. Here
// both nodes have a local IPv4 endpoint and no local IPv6 one: the IPv4
// probe must say 200 with 1 endpoint, the IPv6 probe 503 with 0, as
// kube-proxy's per-family proxiers answer (probed here too).
func TestK8sDualStackHealthCheck(t *testing.T) {
	k := newDualStackK8sLab(t, 2)
	kp, kpIPs := newKubeProxyNode(t, k)

	s := webService("hc", netip.Addr{})
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	s.Spec.IPFamilyPolicy = new(corev1.IPFamilyPolicyRequireDualStack)
	s = k.createService(s)
	s, err := k.c.SetLoadBalancerIngress(k.ctx, s, k8sLBIP, netip.MustParseAddr("2001:db8:100::20"))
	must(t, err)
	// IPv4: b1 on node1 (weir), b2 on kpnode (kube-proxy). IPv6: both
	// elsewhere.
	v4 := kube.EndpointSlice(s, "hc-v4", backendAddr(0, false), backendAddr(1, false))
	onNode(v4, 0, k8sNodeName)
	onNode(v4, 1, kpNodeName)
	k.applySlice(v4)
	v6 := kube.EndpointSlice(s, "hc-v6", backendAddr(0, true), backendAddr(1, true))
	onNode(v6, 0, "node3")
	onNode(v6, 1, "node3")
	k.applySlice(v6)
	hcPort := uint16(s.Spec.HealthCheckNodePort)
	if hcPort == 0 {
		t.Fatal("the apiserver allocated no healthCheckNodePort")
	}

	kube.RunKubeProxy(t, k.c, kp, "nftables", kpNodeName)
	k.startAgent()

	type answer struct {
		code, endpoints int
	}
	probe := func(do func(func() error) error, addr netip.Addr) (answer, error) {
		var a answer
		err := do(func() error {
			code, body, err := httpGet(netip.AddrPortFrom(addr, hcPort).String(), "/", 2*time.Second)
			if err != nil {
				return err
			}
			var b struct {
				LocalEndpoints int `json:"localEndpoints"`
			}
			if err := json.Unmarshal([]byte(body), &b); err != nil {
				return fmt.Errorf("health check %s: body %q: %w", addr, body, err)
			}
			a = answer{code, b.LocalEndpoints}
			return nil
		})
		return a, err
	}
	want := map[bool]answer{false: {200, 1}, true: {503, 0}}
	// kube-proxy, probed inside its namespace on its node IPs: the
	// reference behaviour.
	for _, ip := range kpIPs {
		var got answer
		eventually(t, 30*time.Second, func() error {
			var err error
			if got, err = probe(kp.Do, ip); err == nil && got != want[ip.Is6()] {
				err = fmt.Errorf("kube-proxy's health check on %s: %+v, want %+v", ip, got, want[ip.Is6()])
			}
			return err
		})
	}
	// Weir, probed from the client on the node's LAN addresses.
	for _, ip := range []netip.Addr{k.nodeIP, k.nodeIP6} {
		var got answer
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err = probe(k.client.Do, ip)
			if err == nil && got == want[ip.Is6()] || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		switch {
		case err != nil:
			t.Errorf("weir's health check on %s: %v", ip, err)
		case got != want[ip.Is6()]:
			t.Errorf("weir's health check on %s: %d with %d local endpoints, want %d with %d as kube-proxy (per-family count)",
				ip, got.code, got.endpoints, want[ip.Is6()].code, want[ip.Is6()].endpoints)
		}
	}
}
