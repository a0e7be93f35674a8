package lb

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weir-lb/weir/maglev"
)

// DefaultInternalTableSize is the table size of internal views: the socket
// hooks pick a backend by weighted random choice over it, so it only needs
// to express weights, not to minimise disruption like an external table.
const DefaultInternalTableSize uint32 = 251

// flatOptions are the node-wide settings flattening depends on.
type flatOptions struct {
	defaultTableSize  uint32 // external views whose service sets no size
	internalTableSize uint32
}

// frontendIdent is what makes two frontends of a service the same one to a
// client: scope and kind don't (the socket hooks serve external frontends
// too), so changing them updates the frontend instead of replacing it.
type frontendIdent struct {
	addr  netip.Addr
	port  uint16
	proto Protocol
}

func (id frontendIdent) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(id.addr, id.port), id.proto)
}

// flatService is a service as the datapath sees it, before IDs are
// assigned: one view per scope, the frontends and their keys.
type flatService struct {
	name ServiceName
	// views is indexed by Scope; nil when the service has no such view.
	views     [2]*flatView
	frontends []flatFrontend // sorted by address, port, protocol
}

// flatView is the backend set seen through one scope's frontends. Its
// slices may share memory with each other and the other view: read-only.
type flatView struct {
	// backends are all backends of the view, whatever their state, so that
	// established flows keep their backend entry; sorted by address:port.
	backends []Backend
	// usable are the backends that take new flows and fill the table, in
	// the same order; empty means the view has no table and the datapath
	// rejects.
	usable          []Backend
	tableSize       uint32
	mode            Mode
	flags           ServiceFlags
	affinityTimeout time.Duration
	sourceRanges    []netip.Prefix // external view only; sorted
}

// flatFrontend is one frontend, normalized.
type flatFrontend struct {
	Frontend
}

func (f flatFrontend) ident() frontendIdent {
	return frontendIdent{addr: f.Addr, port: f.Port, proto: f.Protocol}
}

// entryFlags are the flags of the frontend's service entries in a view
// with flags view. Source ranges restrict load-balancer addresses and
// edge VIPs, not a service's NodePorts or external IPs: kube-proxy
// applies loadBalancerSourceRanges to the load-balancer IPs only, and a
// client allowed through a NodePort under kube-proxy must be under Weir.
func (f flatFrontend) entryFlags(view ServiceFlags) ServiceFlags {
	if f.Kind == KindNodePort || f.Kind == KindExternalIP {
		return view &^ FlagSourceRanges
	}
	return view
}

// keyScopes are the scopes of the service keys a frontend gets. An
// external frontend is also looked up by the socket hooks (local clients
// dial external addresses too), and those lookups use the internal view.
func (f flatFrontend) keyScopes() []Scope {
	if f.Scope == ScopeExternal {
		return []Scope{ScopeExternal, ScopeInternal}
	}
	return []Scope{ScopeInternal}
}

func (f flatFrontend) key(scope Scope) ServiceKey {
	return ServiceKey{Addr: f.Addr, Port: f.Port, Protocol: f.Protocol, Scope: scope}
}

// flatten turns a service into its datapath views. It is pure: the same
// service and options always give the same result. It expects a service
// that passed Validate, but still rejects what would corrupt the maps
// (duplicate frontends or backends, a bad table size).
func flatten(s *Service, opts flatOptions) (*flatService, error) {
	fs := &flatService{name: s.Name, frontends: make([]flatFrontend, 0, len(s.Frontends))}
	external := false
	for _, fe := range s.Frontends {
		fe.Addr = fe.Addr.Unmap()
		external = external || fe.Scope == ScopeExternal
		fs.frontends = append(fs.frontends, flatFrontend{fe})
	}
	if len(fs.frontends) == 0 {
		return fs, nil
	}
	slices.SortFunc(fs.frontends, func(a, b flatFrontend) int { return compareIdent(a.ident(), b.ident()) })
	// Sorted, duplicates are neighbours: no set to build per service.
	for i := 1; i < len(fs.frontends); i++ {
		if id := fs.frontends[i].ident(); id == fs.frontends[i-1].ident() {
			return nil, fmt.Errorf("service %s: frontend %s is listed twice (remove one)", s.Name, id)
		}
	}

	backends, err := normalizeBackends(s)
	if err != nil {
		return nil, err
	}
	affinity := roundAffinity(s.SessionAffinity)
	view := func(local bool, size uint32) (*flatView, error) {
		if err := maglev.ValidTableSize(size); err != nil {
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		}
		v := &flatView{tableSize: size, mode: s.Mode, affinityTimeout: affinity, backends: backends}
		if local {
			v.backends = localBackends(backends)
			v.flags |= FlagLocalOnly
		}
		v.usable = usableBackends(v.backends)
		if affinity > 0 {
			v.flags |= FlagAffinity
		}
		return v, nil
	}

	if fs.views[ScopeInternal], err = view(s.InternalLocal, opts.internalTableSize); err != nil {
		return nil, err
	}
	if external {
		size := opts.defaultTableSize
		if s.MaglevTableSize != 0 {
			size = s.MaglevTableSize
		}
		ext, err := view(s.ExternalLocal, size)
		if err != nil {
			return nil, err
		}
		if len(s.SourceRanges) > 0 {
			ext.flags |= FlagSourceRanges
			ext.sourceRanges = normalizePrefixes(s.SourceRanges)
		}
		fs.views[ScopeExternal] = ext
	}
	return fs, nil
}

// normalizeBackends returns the service's backends sorted by address and
// port, addresses unmapped and the tunnel resolved (the datapath stores a
// concrete outer address), rejecting duplicates.
func normalizeBackends(s *Service) ([]Backend, error) {
	out := make([]Backend, 0, len(s.Backends))
	for _, b := range s.Backends {
		b.Addr = b.Addr.Unmap()
		b.Tunnel = b.TunnelAddr().Unmap()
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.AddrPort().Compare(b.AddrPort()) })
	for i := 1; i < len(out); i++ {
		if out[i].AddrPort() == out[i-1].AddrPort() {
			return nil, fmt.Errorf("service %s: backend %s is listed twice (remove one)", s.Name, out[i].AddrPort())
		}
	}
	return out, nil
}

// localBackends are the backends on this node.
func localBackends(bs []Backend) []Backend {
	n := 0
	for _, b := range bs {
		if b.Local {
			n++
		}
	}
	out := make([]Backend, 0, n)
	for _, b := range bs {
		if b.Local {
			out = append(out, b)
		}
	}
	return out
}

// usableBackends are the backends that may take new flows: the active ones
// with a weight, or, when there are none, the terminating ones with a
// weight (Kubernetes' terminating-endpoint fallback: better a draining pod
// than a refused connection). Quarantined backends never are. The result
// is bs itself when every backend is usable (views are read-only).
func usableBackends(bs []Backend) []Backend {
	active, terminating := 0, 0
	for _, b := range bs {
		if b.Weight == 0 {
			continue
		}
		switch b.State {
		case BackendActive:
			active++
		case BackendTerminating:
			terminating++
		}
	}
	want, n := BackendActive, active
	if active == 0 {
		want, n = BackendTerminating, terminating
	}
	if n == len(bs) {
		return bs
	}
	out := make([]Backend, 0, n)
	for _, b := range bs {
		if b.Weight > 0 && b.State == want {
			out = append(out, b)
		}
	}
	return out
}

// roundAffinity rounds up to whole seconds: the datapath stores seconds,
// and a value that doesn't survive the round trip would be rewritten on
// every restart.
func roundAffinity(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

// normalizePrefixes masks, unmaps, sorts and deduplicates.
func normalizePrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, normalizePrefix(p))
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func normalizePrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func compareIdent(a, b frontendIdent) int {
	if c := a.addr.Compare(b.addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.port, b.port); c != 0 {
		return c
	}
	return cmp.Compare(a.proto, b.proto)
}

// entryName splits a service name into the two names a frontend entry
// stores: "namespace/name" (or the edge name) and the port name.
func entryName(n ServiceName) (service, port string) {
	return ServiceName{Namespace: n.Namespace, Name: n.Name}.String(), n.Port
}
