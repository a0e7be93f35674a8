package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weir-lb/weir/maglev"
)

// MaxSessionAffinity is the longest ClientIP affinity timeout, as in
// Kubernetes (service.spec.sessionAffinityConfig allows up to 86400s).
const MaxSessionAffinity = 24 * time.Hour

// Name lengths the datapath can store: the frontend entry keeps the
// service's "namespace/name" and port name in fixed, NUL-terminated arrays
// (WEIR_NAME_LEN and WEIR_PORT_NAME_LEN in bpf/include/consts.h).
const (
	MaxNameLen     = 127
	MaxPortNameLen = 31
)

// ValidationError is one problem Validate found. Field and Index locate it
// in the model so that a source can point at its own input (the edge config
// maps them to a file line); Error renders it for people.
type ValidationError struct {
	// Service is the service's name as ServiceName.String prints it.
	Service string
	// Field is the Service field: "Name", "Frontends", "Backends", "Mode",
	// "SessionAffinity", "SourceRanges", "MaglevTableSize" or "HealthCheck".
	Field string
	// Index is the element of Frontends, Backends or SourceRanges, counted
	// from 0; -1 when the problem is the field as a whole.
	Index int
	// Sub is the field inside the element or the HealthCheck ("Addr",
	// "Port", "Protocol", "Scope", "Kind", "Tunnel", "Weight", "State",
	// "Type", "Path", "Interval", "Timeout", "Rise", "Fall"); empty when the
	// whole element is at fault.
	Sub string
	// Object is how the faulty part prints, e.g. "frontend 2 (10.0.0.1:0/TCP)".
	Object string
	// Reason says what is wrong and how to fix it.
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("service %q: %s: %s", e.Service, e.Object, e.Reason)
}

// Validate checks that s can be programmed into the datapath. It reports
// every problem it finds, joined with errors.Join; each is a
// *ValidationError naming the service, the field and the fix. A service
// with no backends is valid: the datapath then rejects its clients.
func Validate(s *Service) error {
	if s == nil {
		return errors.New("service is nil: pass a *lb.Service built by a source")
	}
	v := validator{svc: s.Name.String()}
	v.name(s.Name)
	v.mode(s.Mode)
	v.frontends(s.Frontends)
	v.backends(s.Backends, s.Frontends)
	v.affinity(s.SessionAffinity)
	v.sourceRanges(s.SourceRanges, s.Frontends)
	v.tableSize(s.MaglevTableSize)
	v.healthCheck(s.HealthCheck)
	return errors.Join(v.errs...)
}

// validator collects the problems of one service.
type validator struct {
	svc  string
	errs []error
}

func (v *validator) add(field string, index int, sub, object, format string, args ...any) {
	v.errs = append(v.errs, &ValidationError{
		Service: v.svc,
		Field:   field,
		Index:   index,
		Sub:     sub,
		Object:  object,
		Reason:  fmt.Sprintf(format, args...),
	})
}

func (v *validator) name(n ServiceName) {
	full := ServiceName{Namespace: n.Namespace, Name: n.Name}.String()
	switch {
	case n.Name == "":
		v.add("Name", -1, "", "name", "the name is empty (set ServiceName.Name)")
	case len(full) > MaxNameLen:
		v.add("Name", -1, "", "name", "%q is %d bytes long; the datapath stores at most %d (use a shorter name)",
			full, len(full), MaxNameLen)
	case hasControl(n.Namespace + n.Name + n.Port):
		v.add("Name", -1, "", "name", "%q contains control characters (use printable characters)", n.String())
	}
	if len(n.Port) > MaxPortNameLen {
		v.add("Name", -1, "Port", "port name", "%q is %d bytes long; the datapath stores at most %d (use a shorter port name)",
			n.Port, len(n.Port), MaxPortNameLen)
	}
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func (v *validator) mode(m Mode) {
	if int(m) >= len(modeNames) {
		v.add("Mode", -1, "", "mode", "%s is not a known mode (use dsr, snat or hybrid)", m)
	}
}

// checkAddr returns why a is unusable as a frontend, backend or tunnel
// address, or "" when it is fine.
func checkAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "the address is missing or not valid (set an IPv4 or IPv6 address)"
	case a.Is4In6():
		return fmt.Sprintf("%s is an IPv4-mapped IPv6 address (write it as %s)", a, a.Unmap())
	case a.Zone() != "":
		return fmt.Sprintf("%s has an IPv6 zone, which the datapath cannot match (remove %%%s)", a, a.Zone())
	case a.IsUnspecified():
		return fmt.Sprintf("%s is the unspecified address (use a unicast address)", a)
	case a.IsMulticast():
		return fmt.Sprintf("%s is a multicast address (use a unicast address)", a)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%s is the broadcast address (use a unicast address)", a)
	}
	return ""
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// serviceFamily returns the first frontend with a usable address, which
// sets the service's address family. One family per service: the DSR path
// encapsulates IPv4 in IPv4 (IPIP) and IPv6 in IPv6 (IP6IP6), and the SNAT
// path translates within one family, so no mode can carry a client of one
// family to a backend of the other.
func serviceFamily(fes []Frontend) (Frontend, int, bool) {
	for i, fe := range fes {
		if checkAddr(fe.Addr) == "" {
			return fe, i, true
		}
	}
	return Frontend{}, -1, false
}

func (v *validator) frontends(fes []Frontend) {
	if len(fes) == 0 {
		v.add("Frontends", -1, "", "frontends", "the service has no frontend (add at least one address, port and protocol)")
		return
	}
	seen := make(map[Frontend]int, len(fes))
	for i, fe := range fes {
		if why := checkAddr(fe.Addr); why != "" {
			v.add("Frontends", i, "Addr", frontendObject(i, fe), "%s", why)
		} else if first, j, _ := serviceFamily(fes); first.Addr.Is4() != fe.Addr.Is4() {
			v.add("Frontends", i, "Addr", frontendObject(i, fe), "an %s frontend in a service whose frontend %d (%s) is %s: a service carries one address family (make a separate service per family)",
				family(fe.Addr), j, first, family(first.Addr))
		}
		if fe.Port == 0 {
			v.add("Frontends", i, "Port", frontendObject(i, fe), "port 0 is not valid (use 1-65535)")
		}
		if !knownProtocol(fe.Protocol) {
			v.add("Frontends", i, "Protocol", frontendObject(i, fe), "protocol %s is not supported (use TCP, UDP or SCTP)", fe.Protocol)
		}
		if fe.Scope != ScopeExternal && fe.Scope != ScopeInternal {
			v.add("Frontends", i, "Scope", frontendObject(i, fe), "scope %d is not known (use external or internal)", fe.Scope)
		}
		if int(fe.Kind) >= len(kindNames) {
			v.add("Frontends", i, "Kind", frontendObject(i, fe), "%s is not a known kind (use one of %s)", fe.Kind, strings.Join(kindNames[:], ", "))
		}
		// Scope and Kind don't make two frontends different to a client:
		// the socket hooks serve external frontends too.
		key := Frontend{Addr: fe.Addr, Port: fe.Port, Protocol: fe.Protocol}
		if j, dup := seen[key]; dup {
			v.add("Frontends", i, "", frontendObject(i, fe), "duplicates frontend %d (remove one of them)", j)
			continue
		}
		seen[key] = i
	}
}

// frontendObject names frontend i in a problem, formatted only then.
func frontendObject(i int, fe Frontend) string { return fmt.Sprintf("frontend %d (%s)", i, fe) }

func knownProtocol(p Protocol) bool { return p == TCP || p == UDP || p == SCTP }

func (v *validator) backends(bes []Backend, fes []Frontend) {
	seen := newSeenBackends(len(bes))
	weighted := 0
	for i, be := range bes {
		if be.Weight > 0 {
			weighted++
		}
		if int(be.State) >= len(stateNames) {
			v.add("Backends", i, "State", backendObject(i, be), "%s is not a known state (use active, terminating or quarantined)", be.State)
		}
		if be.Port == 0 {
			v.add("Backends", i, "Port", backendObject(i, be), "port 0 is not valid (use 1-65535)")
		}
		if why := checkAddr(be.Addr); why != "" {
			v.add("Backends", i, "Addr", backendObject(i, be), "%s", why)
			continue
		}
		if j, dup := seen.first(bes, be.AddrPort()); dup {
			v.add("Backends", i, "", backendObject(i, be), "duplicates backend %d (remove one of them)", j)
		} else {
			seen.add(be.AddrPort(), i)
		}
		v.backendFamily(i, be, fes)
	}
	if len(bes) > 0 && weighted == 0 {
		v.add("Backends", -1, "Weight", "backends", "all %d backends have weight 0; give at least one a weight > 0", len(bes))
	}
}

// seenBackends finds the first earlier backend with an address:port. A
// service's few backends are scanned; only many get a map (a map per
// service was most of what validating 10k services allocated).
type seenBackends struct {
	few [seenScanMax]int // indexes added, when there are few backends
	n   int
	m   map[netip.AddrPort]int
}

const seenScanMax = 16

func newSeenBackends(n int) seenBackends {
	if n <= seenScanMax {
		return seenBackends{}
	}
	return seenBackends{m: make(map[netip.AddrPort]int, n)}
}

func (s *seenBackends) first(bes []Backend, ap netip.AddrPort) (int, bool) {
	if s.m != nil {
		j, ok := s.m[ap]
		return j, ok
	}
	for _, j := range s.few[:s.n] {
		if bes[j].AddrPort() == ap {
			return j, true
		}
	}
	return 0, false
}

func (s *seenBackends) add(ap netip.AddrPort, i int) {
	if s.m != nil {
		s.m[ap] = i
		return
	}
	s.few[s.n] = i
	s.n++
}

// backendObject names backend i in a problem. It is formatted only when
// there is one: validation runs for every backend of a 10k-service sync.
func backendObject(i int, be Backend) string { return fmt.Sprintf("backend %d (%s)", i, be.AddrPort()) }

// backendFamily checks a backend against the service's family (see
// serviceFamily) and its tunnel against its own address.
func (v *validator) backendFamily(i int, be Backend, fes []Frontend) {
	if fe, j, ok := serviceFamily(fes); ok && fe.Addr.Is4() != be.Addr.Is4() {
		v.add("Backends", i, "Addr", backendObject(i, be), "an %s backend behind %s frontend %d (%s): the datapath does not translate between families (use %s backends, or a separate service per family)",
			family(be.Addr), family(fe.Addr), j, fe, family(fe.Addr))
		return
	}
	if !be.Tunnel.IsValid() {
		return
	}
	if why := checkAddr(be.Tunnel); why != "" {
		v.add("Backends", i, "Tunnel", backendObject(i, be), "tunnel %s", why)
		return
	}
	if be.Tunnel.Is4() != be.Addr.Is4() {
		v.add("Backends", i, "Tunnel", backendObject(i, be), "tunnel %s is %s but the backend is %s: DSR encapsulates within one family (use an %s node address)",
			be.Tunnel, family(be.Tunnel), family(be.Addr), family(be.Addr))
	}
}

func (v *validator) affinity(d time.Duration) {
	if d < 0 || d > MaxSessionAffinity {
		v.add("SessionAffinity", -1, "", "session affinity", "timeout %s is out of range (use 0 to switch it off, or up to %s)", d, MaxSessionAffinity)
	}
}

func (v *validator) sourceRanges(prefixes []netip.Prefix, fes []Frontend) {
	if len(fes) == 0 {
		return // reported as missing frontends; every range would be noise
	}
	for i, p := range prefixes {
		obj := fmt.Sprintf("source range %d (%s)", i, p)
		switch {
		case !p.IsValid():
			v.add("SourceRanges", i, "", obj, "the prefix is not valid (use CIDR notation such as 203.0.113.0/24)")
			continue
		case p.Addr().Is4In6():
			v.add("SourceRanges", i, "", obj, "the prefix is IPv4-mapped IPv6 (write it in IPv4 form)")
			continue
		case p != p.Masked():
			v.add("SourceRanges", i, "", obj, "host bits are set (use %s)", p.Masked())
			continue
		}
		if !hasExternalOfFamily(fes, p.Addr().Is4()) {
			v.add("SourceRanges", i, "", obj, "no external frontend is %s, so the range would never match (remove it, or add an %s external frontend)",
				family(p.Addr()), family(p.Addr()))
		}
	}
}

func hasExternalOfFamily(fes []Frontend, v4 bool) bool {
	for _, fe := range fes {
		if fe.Scope == ScopeExternal && fe.Addr.IsValid() && fe.Addr.Unmap().Is4() == v4 {
			return true
		}
	}
	return false
}

func (v *validator) tableSize(m uint32) {
	if m == 0 {
		return
	}
	if err := maglev.ValidTableSize(m); err != nil {
		v.add("MaglevTableSize", -1, "", "maglev table size", "%d is not an allowed size (use 0 for the node's default, or one of %v)", m, maglev.AllowedTableSizes)
	}
}

func (v *validator) healthCheck(hc *HealthCheck) {
	if hc == nil {
		return
	}
	const obj = "health check"
	switch hc.Type {
	case "tcp":
	case "http":
		if !strings.HasPrefix(hc.Path, "/") {
			v.add("HealthCheck", -1, "Path", obj, "path %q must start with / (e.g. /healthz)", hc.Path)
		}
	default:
		v.add("HealthCheck", -1, "Type", obj, "type %q is not known (use tcp or http)", hc.Type)
	}
	if hc.Interval <= 0 {
		v.add("HealthCheck", -1, "Interval", obj, "interval %s must be positive (e.g. 2s)", hc.Interval)
	}
	if hc.Timeout <= 0 {
		v.add("HealthCheck", -1, "Timeout", obj, "timeout %s must be positive (e.g. 1s)", hc.Timeout)
	} else if hc.Interval > 0 && hc.Timeout > hc.Interval {
		v.add("HealthCheck", -1, "Timeout", obj, "timeout %s is longer than the interval %s (make it at most the interval)", hc.Timeout, hc.Interval)
	}
	if hc.Rise < 1 {
		v.add("HealthCheck", -1, "Rise", obj, "rise %d must be at least 1", hc.Rise)
	}
	if hc.Fall < 1 {
		v.add("HealthCheck", -1, "Fall", obj, "fall %d must be at least 1", hc.Fall)
	}
}
