package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Protocol is an L4 protocol, numbered as in the IP header so the datapath
// can use it unchanged.
type Protocol uint8

const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProtocol accepts TCP, UDP or SCTP in any case.
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "TCP", "tcp":
		return TCP, nil
	case "UDP", "udp":
		return UDP, nil
	case "SCTP", "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP or SCTP)", s)
}

// Scope says which datapath serves a frontend. External frontends are
// served by XDP on the node's devices and by the socket hooks; internal
// frontends only by the socket hooks (a ClusterIP).
type Scope uint8

const (
	ScopeExternal Scope = 0
	ScopeInternal Scope = 1
)

func (s Scope) String() string {
	if s == ScopeInternal {
		return "internal"
	}
	return "external"
}

// FrontendKind is the Kubernetes (or edge) origin of a frontend address.
type FrontendKind uint8

const (
	KindClusterIP FrontendKind = iota
	KindNodePort
	KindLoadBalancer
	KindExternalIP
	KindEdgeVIP
)

var kindNames = [...]string{"ClusterIP", "NodePort", "LoadBalancer", "ExternalIP", "EdgeVIP"}

func (k FrontendKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Mode is how north-south traffic reaches a backend.
type Mode uint8

const (
	// ModeDSR encapsulates to the backend's node; the backend answers the
	// client directly.
	ModeDSR Mode = iota
	// ModeSNAT rewrites source and destination; replies come back through
	// the load balancer.
	ModeSNAT
	// ModeHybrid uses DSR for TCP and SNAT for everything else.
	ModeHybrid
)

var modeNames = [...]string{"dsr", "snat", "hybrid"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode accepts dsr, snat or hybrid.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want dsr, snat or hybrid)", s)
}

// BackendState is a backend's eligibility for new flows.
type BackendState uint8

const (
	// BackendActive takes new flows.
	BackendActive BackendState = iota
	// BackendTerminating takes no new flows but keeps its established ones.
	BackendTerminating
	// BackendQuarantined failed its health check: it takes no new flows.
	BackendQuarantined
)

var stateNames = [...]string{"active", "terminating", "quarantined"}

func (s BackendState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ServiceName identifies a service port: Kubernetes namespace/name plus
// the port's name, or an edge service's name with an empty namespace.
// IPv6 tells the two halves of a dual-stack service apart: a Service is
// single-family, so a source splits a dual-stack one in two. The
// reconciler sets IPv6 from the frontends' family; sources need not.
type ServiceName struct {
	Namespace string
	Name      string
	Port      string
	IPv6      bool
}

func (n ServiceName) String() string {
	s := n.Name
	if n.Namespace != "" {
		s = n.Namespace + "/" + n.Name
	}
	if n.Port != "" {
		s += ":" + n.Port
	}
	if n.IPv6 {
		s += " (IPv6)"
	}
	return s
}

// Frontend is an address a service answers on.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol Protocol
	Scope    Scope
	Kind     FrontendKind
}

// AddrPort is the frontend's address and port.
func (f Frontend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(f.Addr, f.Port) }

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", f.AddrPort(), f.Protocol)
}

// Backend is one endpoint of a service.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Tunnel is the address of the backend's node, the outer destination of
	// DSR encapsulation. The zero value means Addr.
	Tunnel netip.Addr
	Weight uint16
	State  BackendState
	Zone   string
	// NodeName is the node the backend runs on; Local is true when that is
	// this node (used by the Local traffic policies).
	NodeName string
	Local    bool
}

// AddrPort is the backend's address and port.
func (b Backend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }

// TunnelAddr is the outer destination for DSR: Tunnel, or Addr when unset.
func (b Backend) TunnelAddr() netip.Addr {
	if b.Tunnel.IsValid() {
		return b.Tunnel
	}
	return b.Addr
}

// HealthCheck configures active probing of a service's backends.
type HealthCheck struct {
	Type     string // "tcp" or "http"
	Path     string // http only
	Port     uint16 // 0: the backend's port
	Interval time.Duration
	Timeout  time.Duration
	Rise     int // consecutive successes to become healthy
	Fall     int // consecutive failures to become quarantined
}

// Service is one service port with its frontends and backends: the unit the
// reconciler programs.
type Service struct {
	Name      ServiceName
	Frontends []Frontend
	Backends  []Backend
	Mode      Mode
	// SessionAffinity is the ClientIP affinity timeout; zero is off.
	SessionAffinity time.Duration
	// ExternalLocal and InternalLocal are the Local traffic policies:
	// external (or internal) frontends use only backends with Local set.
	ExternalLocal bool
	InternalLocal bool
	// SourceRanges limits the clients of external frontends other than
	// NodePorts and external IPs (load-balancer addresses and edge VIPs),
	// as kube-proxy applies loadBalancerSourceRanges; empty allows all.
	SourceRanges []netip.Prefix
	// MaglevTableSize is the table size for external frontends; zero means
	// the node's default.
	MaglevTableSize uint32
	HealthCheck     *HealthCheck
}

// Clone returns a deep copy of s: sources hand services to several owners
// (the reconciler, health checks), and none may see another's changes.
func (s *Service) Clone() *Service {
	c := *s
	c.Frontends = slices.Clone(s.Frontends)
	c.Backends = slices.Clone(s.Backends)
	c.SourceRanges = slices.Clone(s.SourceRanges)
	if s.HealthCheck != nil {
		hc := *s.HealthCheck
		c.HealthCheck = &hc
	}
	return &c
}
