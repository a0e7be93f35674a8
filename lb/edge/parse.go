package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/weir-lb/weir/lb"
)

// Defaults are the agent-wide settings a service may override.
type Defaults struct {
	Mode            lb.Mode
	MaglevTableSize uint32
}

// Health check and affinity defaults, documented in the package comment.
const (
	defaultInterval = 2 * time.Second
	defaultTimeout  = time.Second
	defaultRise     = 2
	defaultFall     = 3
	defaultPath     = "/"
	defaultAffinity = 3 * time.Hour // kube-proxy's default ClientIP timeout
)

// The keys of each mapping: the file format's contract.
var (
	topKeys      = []string{"services"}
	serviceKeys  = []string{"name", "vip", "port", "protocol", "scope", "mode", "maglev_table_size", "source_ranges", "session_affinity", "health_check", "backends"}
	backendKeys  = []string{"address", "port", "tunnel", "weight"}
	affinityKeys = []string{"timeout"}
	checkKeys    = []string{"type", "path", "port", "interval", "timeout", "rise", "fall"}
)

// validName keeps names usable as metric labels and in logs.
var validName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Load reads and parses the edge config at path.
func Load(path string, defaults Defaults) ([]*lb.Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("edge config: %w (check the path, or create the file with `services: []`)", err)
	}
	return Parse(path, data, defaults)
}

// Parse parses an edge config; name is the file name its errors carry.
// It returns the services in file order, each accepted by lb.Validate, or
// every problem found as *Error values joined with errors.Join.
func Parse(name string, data []byte, defaults Defaults) ([]*lb.Service, error) {
	l := &errorList{file: name}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		l.at(nil, "", "the file is empty (write `services: []` to serve nothing)")
		return nil, l.err()
	case err != nil:
		return nil, syntaxError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, syntaxError(name, err)
		}
		l.at(&extra, "", "a second YAML document; the file must hold one (remove the --- separator)")
		return nil, l.err()
	}
	services := l.top(&doc, defaults)
	if err := l.err(); err != nil {
		return nil, err
	}
	return services, nil
}

// parsed is one service with the nodes it came from, for locating the
// problems found after parsing.
type parsed struct {
	svc      *lb.Service
	f        fields
	backends []fields
	ranges   []*yaml.Node
	affinity fields
	check    fields
}

func (l *errorList) top(doc *yaml.Node, defaults Defaults) []*lb.Service {
	root := doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	top, _ := l.mapping(root, "", topKeys...)
	if top.node.Kind != yaml.MappingNode {
		return nil
	}
	list := top.get("services")
	if list == nil {
		l.at(top.node, "services", "missing or empty (write `services: []` to serve nothing)")
		return nil
	}
	items, ok := l.sequence(list, "services", "services")
	if !ok {
		return nil
	}
	var all []*parsed
	for i, item := range items {
		p := l.service(item, fmt.Sprintf("services[%d]", i), defaults)
		if p == nil {
			continue
		}
		if err := lb.Validate(p.svc); err != nil {
			l.validation(p, err)
			continue
		}
		if !l.dsrPorts(p) {
			continue
		}
		all = append(all, p)
	}
	l.conflicts(all)
	out := make([]*lb.Service, len(all))
	for i, p := range all {
		out[i] = p.svc
	}
	return out
}

// dsrPorts reports backends a DSR service can't reach: the client's packet
// arrives at the backend unchanged inside the tunnel, so the backend must
// listen on the VIP's port. (The socket hooks translate ports, so an
// internal service may map them.) It returns whether all is well.
func (l *errorList) dsrPorts(p *parsed) bool {
	fe := p.svc.Frontends[0]
	dsr := p.svc.Mode == lb.ModeDSR || (p.svc.Mode == lb.ModeHybrid && fe.Protocol == lb.TCP)
	if !dsr || fe.Scope != lb.ScopeExternal {
		return true
	}
	ok := true
	for i, b := range p.svc.Backends {
		if b.Port == fe.Port || i >= len(p.backends) {
			continue
		}
		f := p.backends[i]
		n := f.get("port")
		if n == nil {
			n = f.node
		}
		l.at(n, f.sub("port"), "%d differs from the service's port %d, but %s mode delivers the client's packet unchanged (make the backend listen on %d, or use mode: snat)",
			b.Port, fe.Port, p.svc.Mode, fe.Port)
		ok = false
	}
	return ok
}

// conflicts reports services sharing a name or a frontend.
func (l *errorList) conflicts(all []*parsed) {
	names := map[string]*parsed{}
	frontends := map[lb.Frontend]*parsed{}
	for _, p := range all {
		name := p.svc.Name.Name
		if first := names[name]; first != nil {
			l.at(p.f.get("name"), p.f.sub("name"), "service %q is already defined at %s (give each service its own name)",
				name, l.where(first.f.node))
		} else {
			names[name] = p
		}
		fe := p.svc.Frontends[0]
		key := lb.Frontend{Addr: fe.Addr, Port: fe.Port, Protocol: fe.Protocol}
		if first := frontends[key]; first != nil {
			l.at(p.f.get("vip"), p.f.sub("vip"), "%s is used by both service %q (%s) and service %q (give each service its own vip, port or protocol)",
				fe, first.svc.Name.Name, l.where(first.f.node), name)
		} else {
			frontends[key] = p
		}
	}
}

// service parses one entry of services; nil if it has errors.
func (l *errorList) service(n *yaml.Node, path string, defaults Defaults) *parsed {
	before := len(l.errs)
	f, ok := l.mapping(n, path, serviceKeys...)
	if !ok && f.node.Kind != yaml.MappingNode {
		return nil
	}
	p := &parsed{f: f}
	s := &lb.Service{Mode: defaults.Mode, MaglevTableSize: defaults.MaglevTableSize}
	fe := lb.Frontend{Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindEdgeVIP}
	p.svc = s

	if v, ok := l.required(f, "name", "a service name"); ok {
		if !validName.MatchString(v.Value) {
			l.at(v, f.sub("name"), "%q has characters other than letters, digits, '.', '_' and '-' (rename it)", v.Value)
		}
		s.Name = lb.ServiceName{Name: v.Value}
	}
	if v := f.get("vip"); v == nil {
		l.at(f.node, f.sub("vip"), "missing (set the virtual IP, such as 192.0.2.10)")
	} else {
		fe.Addr, _ = l.addr(v, f.sub("vip"))
	}
	if v := f.get("port"); v == nil {
		l.at(f.node, f.sub("port"), "missing (set the port the vip listens on, 1-65535)")
	} else {
		fe.Port, _ = l.port(v, f.sub("port"))
	}
	if v := f.get("protocol"); v != nil {
		if word, ok := l.oneOf(v, f.sub("protocol"), "TCP", "UDP", "SCTP", "tcp", "udp", "sctp"); ok {
			fe.Protocol, _ = lb.ParseProtocol(word)
		}
	}
	if v := f.get("scope"); v != nil {
		if word, ok := l.oneOf(v, f.sub("scope"), "external", "internal"); ok && word == "internal" {
			fe.Scope = lb.ScopeInternal
		}
	}
	if v := f.get("mode"); v != nil {
		if word, ok := l.oneOf(v, f.sub("mode"), "dsr", "snat", "hybrid"); ok {
			s.Mode, _ = lb.ParseMode(word)
		}
	}
	if v := f.get("maglev_table_size"); v != nil {
		if m, ok := l.integer(v, f.sub("maglev_table_size"), 1, 1<<32-1); ok {
			s.MaglevTableSize = uint32(m)
		}
	}
	s.Frontends = []lb.Frontend{fe}
	l.sourceRanges(p)
	l.affinity(p)
	l.healthCheck(p)
	l.backends(p, fe.Port)
	if len(l.errs) > before {
		return nil
	}
	return p
}

// required returns a key's value, reporting it when absent.
func (l *errorList) required(f fields, key, want string) (*yaml.Node, bool) {
	v := f.get(key)
	if v == nil {
		l.at(f.node, f.sub(key), "missing (set %s)", want)
		return nil, false
	}
	if _, ok := l.scalar(v, f.sub(key), want); !ok {
		return nil, false
	}
	return v, true
}

func (l *errorList) sourceRanges(p *parsed) {
	v := p.f.get("source_ranges")
	if v == nil {
		return
	}
	items, ok := l.sequence(v, p.f.sub("source_ranges"), "CIDR prefixes")
	if !ok {
		return
	}
	p.ranges = items
	for i, item := range items {
		pfx, _ := l.prefix(item, fmt.Sprintf("%s[%d]", p.f.sub("source_ranges"), i))
		p.svc.SourceRanges = append(p.svc.SourceRanges, pfx)
	}
}

func (l *errorList) affinity(p *parsed) {
	v := p.f.get("session_affinity")
	if v == nil {
		return
	}
	f, ok := l.mapping(v, p.f.sub("session_affinity"), affinityKeys...)
	p.affinity = f
	if !ok {
		return
	}
	p.svc.SessionAffinity = defaultAffinity
	if t := f.get("timeout"); t != nil {
		p.svc.SessionAffinity, _ = l.duration(t, f.sub("timeout"))
	}
}

func (l *errorList) healthCheck(p *parsed) {
	v := p.f.get("health_check")
	if v == nil {
		return
	}
	f, ok := l.mapping(v, p.f.sub("health_check"), checkKeys...)
	p.check = f
	if !ok {
		return
	}
	hc := &lb.HealthCheck{Interval: defaultInterval, Timeout: defaultTimeout, Rise: defaultRise, Fall: defaultFall}
	p.svc.HealthCheck = hc
	if t := f.get("type"); t == nil {
		l.at(f.node, f.sub("type"), "missing (use tcp or http)")
	} else {
		hc.Type, _ = l.oneOf(t, f.sub("type"), "tcp", "http")
	}
	if path := f.get("path"); path != nil {
		if hc.Type == "tcp" {
			l.at(path, f.sub("path"), "only http checks have a path (remove it, or use type: http)")
		} else {
			hc.Path, _ = l.scalar(path, f.sub("path"), "a URL path such as /healthz")
		}
	} else if hc.Type == "http" {
		hc.Path = defaultPath
	}
	if port := f.get("port"); port != nil {
		hc.Port, _ = l.port(port, f.sub("port"))
	}
	if d := f.get("interval"); d != nil {
		hc.Interval, _ = l.duration(d, f.sub("interval"))
	}
	if d := f.get("timeout"); d != nil {
		hc.Timeout, _ = l.duration(d, f.sub("timeout"))
	}
	if n := f.get("rise"); n != nil {
		rise, _ := l.integer(n, f.sub("rise"), 1, 1000)
		hc.Rise = int(rise)
	}
	if n := f.get("fall"); n != nil {
		fall, _ := l.integer(n, f.sub("fall"), 1, 1000)
		hc.Fall = int(fall)
	}
}

func (l *errorList) backends(p *parsed, servicePort uint16) {
	v := p.f.get("backends")
	if v == nil {
		return
	}
	items, ok := l.sequence(v, p.f.sub("backends"), "backends")
	if !ok {
		return
	}
	for i, item := range items {
		f, ok := l.mapping(item, fmt.Sprintf("%s[%d]", p.f.sub("backends"), i), backendKeys...)
		p.backends = append(p.backends, f)
		if !ok && f.node.Kind != yaml.MappingNode {
			continue
		}
		b := lb.Backend{Port: servicePort, Weight: 1, State: lb.BackendActive}
		if a, ok := l.required(f, "address", "the backend's IP address"); ok {
			b.Addr, _ = l.addr(a, f.sub("address"))
		}
		if port := f.get("port"); port != nil {
			b.Port, _ = l.port(port, f.sub("port"))
		}
		if t := f.get("tunnel"); t != nil {
			b.Tunnel, _ = l.addr(t, f.sub("tunnel"))
		}
		if w := f.get("weight"); w != nil {
			weight, _ := l.integer(w, f.sub("weight"), 0, 65535)
			b.Weight = uint16(weight)
		}
		p.svc.Backends = append(p.svc.Backends, b)
	}
}

// validation reports lb.Validate's findings at the nodes they came from.
func (l *errorList) validation(p *parsed, err error) {
	var joined interface{ Unwrap() []error }
	errs := []error{err}
	if errors.As(err, &joined) {
		errs = joined.Unwrap()
	}
	for _, e := range errs {
		var ve *lb.ValidationError
		if !errors.As(e, &ve) {
			l.at(p.f.node, p.f.path, "%v", e)
			continue
		}
		n, path := p.locate(ve)
		l.at(n, path, "%s", ve.Reason)
	}
}

// locate finds the node a validation error is about: the key's value when
// the file sets it, else the mapping that would hold it (the value came
// from a default).
func (p *parsed) locate(ve *lb.ValidationError) (*yaml.Node, string) {
	at := func(f fields, key string) (*yaml.Node, string) {
		if f.node == nil {
			return p.f.node, p.f.path
		}
		if key == "" {
			return f.node, f.path
		}
		if v := f.get(key); v != nil {
			return v, f.sub(key)
		}
		return f.node, f.sub(key)
	}
	switch ve.Field {
	case "Name":
		return at(p.f, "name")
	case "Mode":
		return at(p.f, "mode")
	case "MaglevTableSize":
		return at(p.f, "maglev_table_size")
	case "SessionAffinity":
		if p.affinity.node == nil {
			return at(p.f, "session_affinity")
		}
		return at(p.affinity, "timeout")
	case "Frontends":
		return at(p.f, map[string]string{"Addr": "vip", "Port": "port", "Protocol": "protocol", "Scope": "scope"}[ve.Sub])
	case "SourceRanges":
		if ve.Index >= 0 && ve.Index < len(p.ranges) {
			return p.ranges[ve.Index], fmt.Sprintf("%s[%d]", p.f.sub("source_ranges"), ve.Index)
		}
		return at(p.f, "source_ranges")
	case "Backends":
		if ve.Index >= 0 && ve.Index < len(p.backends) {
			return at(p.backends[ve.Index], map[string]string{"Addr": "address", "Port": "port", "Tunnel": "tunnel", "Weight": "weight"}[ve.Sub])
		}
		return at(p.f, "backends")
	case "HealthCheck":
		return at(p.check, strings.ToLower(ve.Sub))
	}
	return p.f.node, p.f.path
}
