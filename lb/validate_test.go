package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// validService returns a service that passes Validate; each test case
// breaks one thing in it.
func validService(t *testing.T) *Service {
	t.Helper()
	return &Service{
		Name: ServiceName{Namespace: "default", Name: "web", Port: "http"},
		Frontends: []Frontend{
			{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: TCP, Scope: ScopeInternal, Kind: KindClusterIP},
			{Addr: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: TCP, Scope: ScopeExternal, Kind: KindLoadBalancer},
		},
		Backends: []Backend{
			{Addr: netip.MustParseAddr("10.1.0.5"), Port: 8080, Weight: 1, State: BackendActive},
			{Addr: netip.MustParseAddr("10.1.0.6"), Port: 8080, Weight: 1, State: BackendTerminating, Tunnel: netip.MustParseAddr("172.16.0.2")},
		},
		Mode:            ModeDSR,
		SessionAffinity: 3 * time.Hour,
		SourceRanges:    []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		MaglevTableSize: 16381,
		HealthCheck:     &HealthCheck{Type: "http", Path: "/healthz", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
	}
}

// validationErrors returns the *ValidationError parts of err.
func validationErrors(t *testing.T, err error) []*ValidationError {
	t.Helper()
	var out []*ValidationError
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			var ve *ValidationError
			if !errors.As(e, &ve) {
				t.Fatalf("error %q is not a *lb.ValidationError", e)
			}
			out = append(out, ve)
		}
		return out
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %q is not a *lb.ValidationError", err)
	}
	return []*ValidationError{ve}
}

func TestValidateAcceptsValid(t *testing.T) {
	cases := map[string]func(*Service){
		"as built":      func(*Service) {},
		"no backends":   func(s *Service) { s.Backends = nil },
		"default table": func(s *Service) { s.MaglevTableSize = 0 },
		"tcp check": func(s *Service) {
			s.HealthCheck = &HealthCheck{Type: "tcp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
		},
		"no check":       func(s *Service) { s.HealthCheck = nil },
		"max affinity":   func(s *Service) { s.SessionAffinity = MaxSessionAffinity },
		"one weight > 0": func(s *Service) { s.Backends[0].Weight = 0 },
		"ipv6": func(s *Service) {
			s.Frontends = []Frontend{{Addr: netip.MustParseAddr("2001:db8::10"), Port: 443, Protocol: UDP, Kind: KindEdgeVIP}}
			s.Backends = []Backend{{Addr: netip.MustParseAddr("2001:db8:1::5"), Port: 443, Weight: 7, Tunnel: netip.MustParseAddr("2001:db8:2::1")}}
			s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("2001:db8:ff::/48")}
		},
		"same addr other proto": func(s *Service) {
			s.Frontends = append(s.Frontends, Frontend{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: UDP, Scope: ScopeInternal})
		},
		"same addr other port": func(s *Service) { s.Backends[1].Addr = s.Backends[0].Addr; s.Backends[1].Port = 9090 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := validService(t)
			mutate(s)
			if err := Validate(s); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Service)
		field  string // ValidationError.Field
		index  int
		sub    string
		text   []string // substrings of the error text
	}{
		{"empty name", func(s *Service) { s.Name.Name = "" }, "Name", -1, "", []string{"name: the name is empty"}},
		{"long name", func(s *Service) { s.Name.Name = strings.Repeat("a", 120) }, "Name", -1, "", []string{"name:", "bytes long", "at most 127"}},
		{"long port name", func(s *Service) { s.Name.Port = strings.Repeat("p", 32) }, "Name", -1, "Port", []string{"port name:", "at most 31"}},
		{"control char", func(s *Service) { s.Name.Name = "we\nb" }, "Name", -1, "", []string{"control characters"}},
		{"unknown mode", func(s *Service) { s.Mode = 9 }, "Mode", -1, "", []string{"mode: mode(9) is not a known mode"}},
		{"no frontends", func(s *Service) { s.Frontends = nil }, "Frontends", -1, "", []string{"frontends: the service has no frontend"}},
		{"frontend port 0", func(s *Service) { s.Frontends[1].Port = 0 }, "Frontends", 1, "Port",
			[]string{`service "default/web:http": frontend 1 (192.0.2.10:0/TCP): port 0 is not valid (use 1-65535)`}},
		{"frontend no addr", func(s *Service) { s.Frontends[0].Addr = netip.Addr{} }, "Frontends", 0, "Addr", []string{"frontend 0", "not valid"}},
		{"frontend unspecified", func(s *Service) { s.Frontends[0].Addr = netip.IPv4Unspecified() }, "Frontends", 0, "Addr", []string{"frontend 0 (0.0.0.0:80/TCP)", "unspecified"}},
		{"frontend v6 unspecified", func(s *Service) {
			s.Frontends = []Frontend{{Addr: netip.IPv6Unspecified(), Port: 80, Protocol: TCP}}
			s.Backends, s.SourceRanges = nil, nil
		}, "Frontends", 0, "Addr", []string{"frontend 0", "unspecified"}},
		{"frontend multicast", func(s *Service) { s.Frontends[1].Addr = netip.MustParseAddr("239.1.1.1") }, "Frontends", 1, "Addr", []string{"frontend 1", "multicast"}},
		{"frontend broadcast", func(s *Service) { s.Frontends[1].Addr = netip.MustParseAddr("255.255.255.255") }, "Frontends", 1, "Addr", []string{"frontend 1", "broadcast"}},
		{"frontend mapped", func(s *Service) { s.Frontends[0].Addr = netip.MustParseAddr("::ffff:10.0.0.1") }, "Frontends", 0, "Addr", []string{"frontend 0", "IPv4-mapped", "write it as 10.0.0.1"}},
		{"frontend zone", func(s *Service) {
			s.Frontends = []Frontend{{Addr: netip.MustParseAddr("fe80::1%eth0"), Port: 80, Protocol: TCP}}
			s.Backends, s.SourceRanges = nil, nil
		}, "Frontends", 0, "Addr", []string{"frontend 0", "zone"}},
		{"frontend protocol", func(s *Service) { s.Frontends[0].Protocol = 1 }, "Frontends", 0, "Protocol", []string{"frontend 0", "protocol proto(1) is not supported (use TCP, UDP or SCTP)"}},
		{"frontend scope", func(s *Service) { s.Frontends[0].Scope = 5 }, "Frontends", 0, "Scope", []string{"frontend 0", "scope 5 is not known"}},
		{"frontend kind", func(s *Service) { s.Frontends[0].Kind = 42 }, "Frontends", 0, "Kind", []string{"frontend 0", "kind(42) is not a known kind"}},
		{"duplicate frontend", func(s *Service) {
			fe := s.Frontends[1]
			fe.Kind, fe.Scope = KindExternalIP, ScopeInternal
			s.Frontends = append(s.Frontends, fe)
		}, "Frontends", 2, "", []string{"frontend 2 (192.0.2.10:80/TCP): duplicates frontend 1"}},
		{"backend port 0", func(s *Service) { s.Backends[1].Port = 0 }, "Backends", 1, "Port", []string{"backend 1 (10.1.0.6:0): port 0 is not valid (use 1-65535)"}},
		{"backend no addr", func(s *Service) { s.Backends[0].Addr = netip.Addr{} }, "Backends", 0, "Addr", []string{"backend 0", "not valid"}},
		{"backend multicast", func(s *Service) { s.Backends[0].Addr = netip.MustParseAddr("224.0.0.1") }, "Backends", 0, "Addr", []string{"backend 0", "multicast"}},
		{"duplicate backend", func(s *Service) { s.Backends[1].Addr = s.Backends[0].Addr }, "Backends", 1, "", []string{"backend 1 (10.1.0.5:8080): duplicates backend 0"}},
		{"backend state", func(s *Service) { s.Backends[0].State = 7 }, "Backends", 0, "State", []string{"backend 0", "state(7) is not a known state"}},
		{"v6 backend behind v4", func(s *Service) { s.Backends[0].Addr = netip.MustParseAddr("2001:db8::5") }, "Backends", 0, "Addr",
			[]string{"backend 0 ([2001:db8::5]:8080)", "an IPv6 backend behind IPv4 frontend 0"}},
		{"v4 backend behind v6", func(s *Service) {
			s.Frontends = []Frontend{{Addr: netip.MustParseAddr("2001:db8::10"), Port: 80, Protocol: TCP}}
			s.Backends, s.SourceRanges = s.Backends[:1], nil
		}, "Backends", 0, "Addr", []string{"backend 0 (10.1.0.5:8080)", "an IPv4 backend behind IPv6 frontend 0"}},
		{"mixed frontend families", func(s *Service) {
			s.Frontends = append(s.Frontends, Frontend{Addr: netip.MustParseAddr("2001:db8::10"), Port: 80, Protocol: TCP})
			s.Backends = nil
		}, "Frontends", 2, "Addr", []string{"frontend 2 ([2001:db8::10]:80/TCP): an IPv6 frontend in a service whose frontend 0 (10.0.0.1:80/TCP) is IPv4"}},
		{"tunnel family", func(s *Service) { s.Backends[1].Tunnel = netip.MustParseAddr("2001:db8::1") }, "Backends", 1, "Tunnel",
			[]string{"backend 1", "tunnel 2001:db8::1 is IPv6 but the backend is IPv4"}},
		{"tunnel unspecified", func(s *Service) { s.Backends[1].Tunnel = netip.IPv4Unspecified() }, "Backends", 1, "Tunnel", []string{"backend 1", "tunnel 0.0.0.0 is the unspecified"}},
		{"all weights 0", func(s *Service) { s.Backends[0].Weight, s.Backends[1].Weight = 0, 0 }, "Backends", -1, "Weight",
			[]string{"backends: all 2 backends have weight 0; give at least one a weight > 0"}},
		{"negative affinity", func(s *Service) { s.SessionAffinity = -time.Second }, "SessionAffinity", -1, "", []string{"session affinity: timeout -1s is out of range"}},
		{"long affinity", func(s *Service) { s.SessionAffinity = 25 * time.Hour }, "SessionAffinity", -1, "", []string{"session affinity: timeout 25h0m0s is out of range", "up to 24h"}},
		{"invalid range", func(s *Service) { s.SourceRanges = append(s.SourceRanges, netip.Prefix{}) }, "SourceRanges", 1, "", []string{"source range 1", "not valid"}},
		{"unmasked range", func(s *Service) { s.SourceRanges[0] = netip.MustParsePrefix("198.51.100.7/24") }, "SourceRanges", 0, "", []string{"source range 0 (198.51.100.7/24): host bits are set (use 198.51.100.0/24)"}},
		{"mapped range", func(s *Service) { s.SourceRanges[0] = netip.MustParsePrefix("::ffff:198.51.100.0/120") }, "SourceRanges", 0, "", []string{"source range 0", "IPv4-mapped"}},
		{"range family", func(s *Service) { s.SourceRanges[0] = netip.MustParsePrefix("2001:db8::/32") }, "SourceRanges", 0, "", []string{"source range 0 (2001:db8::/32): no external frontend is IPv6"}},
		{"range without external", func(s *Service) { s.Frontends = s.Frontends[:1] }, "SourceRanges", 0, "", []string{"source range 0", "no external frontend is IPv4"}},
		{"table size", func(s *Service) { s.MaglevTableSize = 1000 }, "MaglevTableSize", -1, "", []string{"maglev table size: 1000 is not an allowed size", "16381"}},
		{"check type", func(s *Service) { s.HealthCheck.Type = "icmp" }, "HealthCheck", -1, "Type", []string{`health check: type "icmp" is not known (use tcp or http)`}},
		{"check path", func(s *Service) { s.HealthCheck.Path = "healthz" }, "HealthCheck", -1, "Path", []string{`health check: path "healthz" must start with /`}},
		{"check interval", func(s *Service) { s.HealthCheck.Interval = 0 }, "HealthCheck", -1, "Interval", []string{"health check: interval 0s must be positive"}},
		{"check timeout", func(s *Service) { s.HealthCheck.Timeout = 0 }, "HealthCheck", -1, "Timeout", []string{"health check: timeout 0s must be positive"}},
		{"check timeout > interval", func(s *Service) { s.HealthCheck.Timeout = 3 * time.Second }, "HealthCheck", -1, "Timeout", []string{"health check: timeout 3s is longer than the interval 2s"}},
		{"check rise", func(s *Service) { s.HealthCheck.Rise = 0 }, "HealthCheck", -1, "Rise", []string{"health check: rise 0 must be at least 1"}},
		{"check fall", func(s *Service) { s.HealthCheck.Fall = -1 }, "HealthCheck", -1, "Fall", []string{"health check: fall -1 must be at least 1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := validService(t)
			tc.mutate(s)
			err := Validate(s)
			if err == nil {
				t.Fatal("Validate accepted the service")
			}
			for _, want := range tc.text {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("service %q: ", s.Name.String())) {
				t.Errorf("error %q does not start by naming the service", err)
			}
			ves := validationErrors(t, err)
			if len(ves) != 1 {
				t.Fatalf("want one problem, got %d: %v", len(ves), err)
			}
			ve := ves[0]
			if ve.Field != tc.field || ve.Index != tc.index || ve.Sub != tc.sub {
				t.Errorf("located at %s[%d].%s, want %s[%d].%s", ve.Field, ve.Index, ve.Sub, tc.field, tc.index, tc.sub)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	s := validService(t)
	s.Frontends[0].Port = 0
	s.Backends[1].Port = 0
	s.HealthCheck.Rise = 0
	ves := validationErrors(t, Validate(s))
	if len(ves) != 3 {
		t.Fatalf("want 3 problems, got %d: %v", len(ves), ves)
	}
}

func TestValidateNil(t *testing.T) {
	if err := Validate(nil); err == nil {
		t.Fatal("Validate(nil) succeeded")
	}
}
