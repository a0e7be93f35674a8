package k8s

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"

	"github.com/weir-lb/weir/lb"
)

var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loopback6 = netip.IPv6Loopback()
)

// frontends lists one port's frontends in a fixed order: the cluster IP,
// load-balancer IPs, external IPs, NodePorts on the node's addresses,
// the loopback NodePort. An address and port listed twice (a cluster IP
// repeated as an external IP) is kept once, external if either is: the
// socket hooks serve external frontends too.
func frontends(fam family, p v1.ServicePort, proto lb.Protocol, lbIPs, extIPs []netip.Addr, e *env) []lb.Frontend {
	var out []lb.Frontend
	add := func(a netip.Addr, port uint16, scope lb.Scope, kind lb.FrontendKind) {
		fe := lb.Frontend{Addr: a, Port: port, Protocol: proto, Scope: scope, Kind: kind}
		for i, have := range out {
			if have.Addr == a && have.Port == port {
				if have.Scope == lb.ScopeInternal && scope == lb.ScopeExternal {
					out[i] = fe
				}
				return
			}
		}
		out = append(out, fe)
	}
	port := uint16(p.Port)
	add(fam.clusterIP, port, lb.ScopeInternal, lb.KindClusterIP)
	for _, a := range lbIPs {
		add(a, port, lb.ScopeExternal, lb.KindLoadBalancer)
	}
	for _, a := range extIPs {
		add(a, port, lb.ScopeExternal, lb.KindExternalIP)
	}
	if p.NodePort > 0 && p.NodePort <= 65535 {
		np := uint16(p.NodePort)
		addrs, lo := nodePortAddrs(e, fam.v6)
		for _, a := range addrs {
			add(a, np, lb.ScopeExternal, lb.KindNodePort)
		}
		if lo.IsValid() {
			add(lo, np, lb.ScopeInternal, lb.KindNodePort)
		}
	}
	return out
}

// nodePortAddrs returns the node's addresses of a family that NodePorts
// open on, and the loopback address when NodePorts open on it too (the
// zero Addr when not). Like kube-proxy's --nodeport-addresses, a non-empty
// prefix list keeps only the addresses inside it, loopback included.
// IPv6 link-local addresses are left out: they need a zone, which the
// datapath doesn't match.
func nodePortAddrs(e *env, v6 bool) (addrs []netip.Addr, lo netip.Addr) {
	allowed := func(a netip.Addr) bool {
		if len(e.nodePortAddresses) == 0 {
			return true
		}
		for _, p := range e.nodePortAddresses {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, a := range e.nodeAddrs {
		switch {
		case a.Is6() != v6, a.IsLoopback(), a.IsLinkLocalUnicast() && a.Is6(),
			a.IsMulticast(), a.IsUnspecified():
			continue
		}
		if allowed(a) {
			addrs = append(addrs, a)
		}
	}
	lo = loopback4
	if v6 {
		lo = loopback6
	}
	if !allowed(lo) {
		lo = netip.Addr{}
	}
	return addrs, lo
}
