package k8s

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/weir-lb/weir/lb"
)

// defaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout
// (sessionAffinityConfig.clientIP.timeoutSeconds: 10800).
const defaultAffinityTimeout = 10800 * time.Second

// env is the node-level input of a translation, fixed for one batch.
type env struct {
	nodeName          string
	zone              string
	nodeAddrs         []netip.Addr // sorted, unmapped
	nodePortAddresses []netip.Prefix
	defaultMode       lb.Mode
	tableSize         uint32
	// nodeIP returns a node's InternalIP of a family, or the zero Addr.
	nodeIP func(node string, v6 bool) netip.Addr
}

// result is the translation of one Kubernetes service.
type result struct {
	skip        string // why the service is not served; "" when it is
	services    map[lb.ServiceName]*lb.Service
	hc          *HealthCheckPort
	hasNodePort bool
	warnings    []string
}

// warnf records a problem once (a dual-stack service meets some twice).
func (r *result) warnf(format string, args ...any) {
	if w := fmt.Sprintf(format, args...); !slices.Contains(r.warnings, w) {
		r.warnings = append(r.warnings, w)
	}
}

// skipReason says why a service is not served, or "" when it is.
func skipReason(svc *v1.Service, proxyName string) string {
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "type ExternalName"
	case svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless (no cluster IP)"
	}
	if _, ok := svc.Labels[labelHeadless]; ok {
		return "labelled " + labelHeadless
	}
	if v, ok := svc.Labels[labelServiceProxyName]; ok != (proxyName != "") || v != proxyName {
		return fmt.Sprintf("label %s is %q, this agent serves %q", labelServiceProxyName, v, proxyName)
	}
	return ""
}

// deliverableMode falls back to SNAT where DSR can't deliver: the
// tunnelled packet reaches the backend unchanged, so every external
// frontend (NodePorts never do) must use the backends' port. kube-proxy
// NATs these too; DSR stays for services whose ports line up.
func deliverableMode(s *lb.Service) lb.Mode {
	if s.Mode == lb.ModeSNAT {
		return s.Mode
	}
	for _, f := range s.Frontends {
		if f.Scope != lb.ScopeExternal || (s.Mode == lb.ModeHybrid && f.Protocol != lb.TCP) {
			continue
		}
		for _, b := range s.Backends {
			if b.Port != f.Port {
				return lb.ModeSNAT
			}
		}
	}
	return s.Mode
}

// family is one address family of a service: its cluster IP.
type family struct {
	v6        bool
	clusterIP netip.Addr
}

// build translates a served service and its EndpointSlices.
func build(svc *v1.Service, slices []*discovery.EndpointSlice, e *env) result {
	r := result{services: map[lb.ServiceName]*lb.Service{}}
	set := settingsOf(svc, e, &r)
	v4Ranges, v6Ranges := sourceRanges(svc, &r)
	localReady := map[netip.Addr]struct{}{}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			r.hasNodePort = true
		}
	}
	for _, fam := range families(svc, &r) {
		eps := collectEndpoints(slices, fam.v6, e, &r, localReady)
		lbIPs := loadBalancerIPs(svc, fam.v6, &r)
		extIPs := externalIPs(svc, fam.v6, &r)
		ranges := v4Ranges
		if fam.v6 {
			ranges = v6Ranges
		}
		for _, p := range svc.Spec.Ports {
			proto, ok := portProtocol(p, &r)
			if !ok {
				continue
			}
			ls := &lb.Service{
				Name:            lb.ServiceName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, IPv6: fam.v6},
				Mode:            set.mode,
				SessionAffinity: set.affinity,
				ExternalLocal:   set.externalLocal,
				InternalLocal:   set.internalLocal,
				MaglevTableSize: set.tableSize,
			}
			ls.Frontends = frontends(fam, p, proto, lbIPs, extIPs, e)
			ls.Backends = backends(eps[portKey{p.Name, proto}], fam.v6, set, e)
			ls.Mode = deliverableMode(ls)
			if len(lbIPs) > 0 {
				// kube-proxy applies the ranges to load-balancer IPs
				// only: without one there is nothing to restrict.
				ls.SourceRanges = ranges
			}
			r.services[ls.Name] = ls
		}
	}
	if set.externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		if p := svc.Spec.HealthCheckNodePort; p > 0 && p <= 65535 {
			r.hc = &HealthCheckPort{Port: uint16(p)}
			for a := range localReady {
				if a.Is4() {
					r.hc.LocalEndpoints++
				} else {
					r.hc.LocalEndpointsV6++
				}
			}
		} else {
			r.warnf("externalTrafficPolicy Local without a valid healthCheckNodePort (%d): no health check is served", p)
		}
	}
	return r
}

// families returns the service's address families from spec.clusterIPs
// (spec.clusterIP for objects written before dual-stack), one per family.
func families(svc *v1.Service, r *result) []family {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []family
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			r.warnf("cluster IP %q is not an IP address: skipped", s)
			continue
		}
		a = a.Unmap()
		f := family{v6: a.Is6(), clusterIP: a}
		if len(out) == 1 && out[0].v6 == f.v6 {
			continue // a second address of one family: not valid in Kubernetes
		}
		out = append(out, f)
		if len(out) == 2 {
			break
		}
	}
	return out
}

func portProtocol(p v1.ServicePort, r *result) (lb.Protocol, bool) {
	name := p.Name
	if name == "" {
		name = fmt.Sprint(p.Port)
	}
	if p.Port < 1 || p.Port > 65535 {
		r.warnf("port %s: %d is out of range: skipped", name, p.Port)
		return 0, false
	}
	if p.Protocol == "" {
		return lb.TCP, true
	}
	proto, err := lb.ParseProtocol(string(p.Protocol))
	if err != nil {
		r.warnf("port %s: %v: skipped", name, err)
		return 0, false
	}
	return proto, true
}

// loadBalancerIPs returns the family's ingress IPs of status.loadBalancer,
// sorted, except those with ipMode Proxy: their load balancer proxies to
// the nodes, which then see the node as destination, not the IP.
func loadBalancerIPs(svc *v1.Service, v6 bool, r *result) []netip.Addr {
	var out []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
			continue
		}
		a, err := netip.ParseAddr(ing.IP)
		if err != nil {
			r.warnf("load-balancer ingress IP %q is not an IP address: skipped", ing.IP)
			continue
		}
		if a = a.Unmap(); a.Is6() == v6 {
			out = append(out, a)
		}
	}
	return sortAddrs(out)
}

// externalIPs returns the family's spec.externalIPs, sorted.
func externalIPs(svc *v1.Service, v6 bool, r *result) []netip.Addr {
	var out []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			r.warnf("external IP %q is not an IP address: skipped", s)
			continue
		}
		if a = a.Unmap(); a.Is6() == v6 {
			out = append(out, a)
		}
	}
	return sortAddrs(out)
}
