package k8s

import (
	"net/netip"
	"slices"

	discovery "k8s.io/api/discovery/v1"

	"github.com/weir-lb/weir/lb"
)

// portKey matches an EndpointSlice port to a service port: by name and
// protocol, as kube-proxy does (the slice has resolved named target
// ports to numbers already).
type portKey struct {
	name  string
	proto lb.Protocol
}

// endpoint is one usable endpoint of one port.
type endpoint struct {
	addr      netip.AddrPort
	ready     bool // else serving and terminating
	nodeName  string
	zone      string
	zoneHints []string
	nodeHints []string
}

// collectEndpoints gathers a family's usable endpoints per port from the
// slices (sorted by name), one per address and port: a ready copy wins
// over a terminating one, else the first. It adds the addresses of ready
// endpoints on this node to localReady (the health check's count).
func collectEndpoints(esList []*discovery.EndpointSlice, v6 bool, e *env, r *result, localReady map[netip.Addr]struct{}) map[portKey][]endpoint {
	want := discovery.AddressTypeIPv4
	if v6 {
		want = discovery.AddressTypeIPv6
	}
	// Per port, every copy in slice order; sorting and dropping the
	// later copies of an address is cheaper than a map per port.
	byPort := map[portKey][]endpoint{}
	for _, es := range esList {
		if es.AddressType != want {
			continue
		}
		ports := slicePorts(es, r)
		for _, dep := range es.Endpoints {
			ep, ok := sliceEndpoint(es, dep, v6, r)
			if !ok {
				continue
			}
			if ep.ready && ep.nodeName != "" && ep.nodeName == e.nodeName {
				localReady[ep.addr.Addr()] = struct{}{}
			}
			for key, port := range ports {
				ep.addr = netip.AddrPortFrom(ep.addr.Addr(), port)
				list := byPort[key]
				if list == nil {
					list = make([]endpoint, 0, len(es.Endpoints))
				}
				byPort[key] = append(list, ep)
			}
		}
	}
	for key, list := range byPort {
		byPort[key] = dedupEndpoints(list)
	}
	return byPort
}

// dedupEndpoints sorts endpoints by address and keeps one per address:
// the first ready copy, else the first copy (the sort is stable).
func dedupEndpoints(list []endpoint) []endpoint {
	slices.SortStableFunc(list, func(a, b endpoint) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return boolCompare(b.ready, a.ready) // ready first
	})
	return slices.CompactFunc(list, func(a, b endpoint) bool { return a.addr == b.addr })
}

// slicePorts returns a slice's ports by name and protocol.
func slicePorts(es *discovery.EndpointSlice, r *result) map[portKey]uint16 {
	ports := map[portKey]uint16{}
	for _, p := range es.Ports {
		if p.Port == nil || *p.Port < 1 || *p.Port > 65535 {
			continue // no port number: a slice for a service without selector, being filled
		}
		proto := lb.TCP
		if p.Protocol != nil {
			var err error
			if proto, err = lb.ParseProtocol(string(*p.Protocol)); err != nil {
				r.warnf("endpoint slice %s: %v: port skipped", es.Name, err)
				continue
			}
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		ports[portKey{name, proto}] = uint16(*p.Port)
	}
	return ports
}

// sliceEndpoint converts an endpoint's first address (the only one
// kube-proxy reads) and conditions; ok is false for an endpoint that is
// neither ready nor serving-and-terminating.
func sliceEndpoint(es *discovery.EndpointSlice, dep discovery.Endpoint, v6 bool, r *result) (endpoint, bool) {
	if len(dep.Addresses) == 0 {
		return endpoint{}, false
	}
	a, err := netip.ParseAddr(dep.Addresses[0])
	if err != nil || a.Unmap().Is6() != v6 {
		r.warnf("endpoint slice %s: address %q is not an %s address: skipped", es.Name, dep.Addresses[0], es.AddressType)
		return endpoint{}, false
	}
	// Unknown conditions count as ready and serving, as the API defines.
	c := dep.Conditions
	ready := c.Ready == nil || *c.Ready
	serving := c.Serving == nil || *c.Serving
	terminating := c.Terminating != nil && *c.Terminating
	if !ready && !(serving && terminating) {
		return endpoint{}, false
	}
	ep := endpoint{addr: netip.AddrPortFrom(a.Unmap(), 0), ready: ready}
	if dep.NodeName != nil {
		ep.nodeName = *dep.NodeName
	}
	if dep.Zone != nil {
		ep.zone = *dep.Zone
	}
	if h := dep.Hints; h != nil {
		for _, z := range h.ForZones {
			ep.zoneHints = append(ep.zoneHints, z.Name)
		}
		for _, n := range h.ForNodes {
			ep.nodeHints = append(ep.nodeHints, n.Name)
		}
	}
	return ep, true
}

// topology is the hint that narrows the cluster endpoints, kube-proxy's
// topology mode.
type topology uint8

const (
	topologyNone topology = iota
	topologySameZone
	topologySameNode
)

// topologyOf is kube-proxy's rule: hints count only when every ready
// endpoint has them and at least one names this node (node hints, checked
// first) or its zone; otherwise every endpoint is used.
func topologyOf(eps []endpoint, nodeName, zone string) topology {
	var ready, allNode, forNode, allZone, forZone = false, true, false, true, false
	for _, ep := range eps {
		if !ep.ready {
			continue
		}
		ready = true
		if len(ep.nodeHints) == 0 {
			allNode = false
		} else if slices.Contains(ep.nodeHints, nodeName) {
			forNode = true
		}
		if len(ep.zoneHints) == 0 {
			allZone = false
		} else if slices.Contains(ep.zoneHints, zone) {
			forZone = true
		}
	}
	switch {
	case !ready:
		return topologyNone
	case allNode && forNode && nodeName != "":
		return topologySameNode
	case allZone && forZone && zone != "":
		return topologySameZone
	}
	return topologyNone
}

// backends turns one port's endpoints into lb.Backends. Under a topology
// mode, ready endpoints hinted elsewhere get weight 0: no new flows, but
// their established flows keep their backend entry. Local endpoints of a
// service with a Local policy keep weight 1, since that policy ignores
// topology.
func backends(eps []endpoint, v6 bool, set settings, e *env) []lb.Backend {
	topo := topologyNone
	if set.usesCluster() {
		topo = topologyOf(eps, e.nodeName, e.zone)
	}
	out := make([]lb.Backend, 0, len(eps))
	for _, ep := range eps {
		local := ep.nodeName != "" && ep.nodeName == e.nodeName
		be := lb.Backend{
			Addr:     ep.addr.Addr(),
			Port:     ep.addr.Port(),
			Weight:   1,
			State:    lb.BackendActive,
			Zone:     ep.zone,
			NodeName: ep.nodeName,
			Local:    local,
		}
		if !ep.ready {
			be.State = lb.BackendTerminating
		}
		if ep.nodeName != "" && e.nodeIP != nil {
			be.Tunnel = e.nodeIP(ep.nodeName, v6)
		}
		if ep.ready && !(local && set.usesLocal()) {
			switch {
			case topo == topologySameNode && !slices.Contains(ep.nodeHints, e.nodeName),
				topo == topologySameZone && !slices.Contains(ep.zoneHints, e.zone):
				be.Weight = 0
			}
		}
		out = append(out, be)
	}
	return out
}
