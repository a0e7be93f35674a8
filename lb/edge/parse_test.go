package edge

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
)

var testDefaults = Defaults{Mode: lb.ModeSNAT, MaglevTableSize: 4093}

// mustParse parses a config the test expects to be valid.
func mustParse(t *testing.T, text string) []*lb.Service {
	t.Helper()
	svcs, err := Parse("edge.yaml", []byte(text), testDefaults)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return svcs
}

func TestParseEveryField(t *testing.T) {
	got := mustParse(t, `
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    protocol: UDP
    mode: snat
    maglev_table_size: 16381
    source_ranges: [0.0.0.0/0, 198.51.100.0/24]
    session_affinity: {timeout: 90m}
    health_check: {type: http, path: /healthz, port: 8081, interval: 5s, timeout: 2s, rise: 4, fall: 6}
    backends:
      - address: 10.0.1.5
        port: 8080
        tunnel: 172.16.0.5
        weight: 100
      - address: 10.0.1.6
        port: 8080
        weight: 0
  - name: v6.api_1
    vip: 2001:db8::10
    port: 443
    protocol: sctp
    scope: internal
    session_affinity: {}
    health_check: {type: tcp}
    backends:
      - address: 2001:db8:1::5
`)
	want := []*lb.Service{
		{
			Name: lb.ServiceName{Name: "web"},
			Frontends: []lb.Frontend{{
				Addr: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: lb.UDP, Scope: lb.ScopeExternal, Kind: lb.KindEdgeVIP,
			}},
			Backends: []lb.Backend{
				{Addr: netip.MustParseAddr("10.0.1.5"), Port: 8080, Tunnel: netip.MustParseAddr("172.16.0.5"), Weight: 100, State: lb.BackendActive},
				{Addr: netip.MustParseAddr("10.0.1.6"), Port: 8080, Weight: 0, State: lb.BackendActive},
			},
			Mode:            lb.ModeSNAT,
			SessionAffinity: 90 * time.Minute,
			SourceRanges:    []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("198.51.100.0/24")},
			MaglevTableSize: 16381,
			HealthCheck:     &lb.HealthCheck{Type: "http", Path: "/healthz", Port: 8081, Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 4, Fall: 6},
		},
		{
			Name: lb.ServiceName{Name: "v6.api_1"},
			Frontends: []lb.Frontend{{
				Addr: netip.MustParseAddr("2001:db8::10"), Port: 443, Protocol: lb.SCTP, Scope: lb.ScopeInternal, Kind: lb.KindEdgeVIP,
			}},
			// The backend's port defaults to the service's, its weight to 1.
			Backends:        []lb.Backend{{Addr: netip.MustParseAddr("2001:db8:1::5"), Port: 443, Weight: 1, State: lb.BackendActive}},
			Mode:            testDefaults.Mode,
			SessionAffinity: 3 * time.Hour,
			MaglevTableSize: testDefaults.MaglevTableSize,
			HealthCheck:     &lb.HealthCheck{Type: "tcp", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed\n%s\nwant\n%s", dump(got), dump(want))
	}
}

// dump prints services for a failure message, health check included.
func dump(svcs []*lb.Service) string {
	var b strings.Builder
	for _, s := range svcs {
		c := *s
		c.HealthCheck = nil
		fmt.Fprintf(&b, "%+v health_check=%+v\n", c, s.HealthCheck)
	}
	return b.String()
}

func TestParseDefaults(t *testing.T) {
	got := mustParse(t, `
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    health_check: {type: http}
`)
	s := got[0]
	fe := s.Frontends[0]
	if fe.Protocol != lb.TCP || fe.Scope != lb.ScopeExternal || fe.Kind != lb.KindEdgeVIP {
		t.Errorf("frontend %+v: want TCP, external, EdgeVIP", fe)
	}
	if s.Mode != testDefaults.Mode || s.MaglevTableSize != testDefaults.MaglevTableSize {
		t.Errorf("mode %s, table %d: want the defaults %s, %d", s.Mode, s.MaglevTableSize, testDefaults.Mode, testDefaults.MaglevTableSize)
	}
	want := lb.HealthCheck{Type: "http", Path: "/", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if *s.HealthCheck != want {
		t.Errorf("health check %+v, want %+v", *s.HealthCheck, want)
	}
	if s.Backends != nil || s.SessionAffinity != 0 || s.SourceRanges != nil {
		t.Errorf("optional fields set: %+v", s)
	}
}

func TestParseEmptyServiceList(t *testing.T) {
	for _, text := range []string{"services: []\n", "# nothing served\nservices: []\n"} {
		got := mustParse(t, text)
		if got == nil || len(got) != 0 {
			t.Errorf("%q: got %v, want an empty, non-nil list", text, got)
		}
	}
}

func TestParseAliases(t *testing.T) {
	got := mustParse(t, `
services:
  - name: a
    vip: 192.0.2.10
    port: 80
    backends: &pool
      - address: 10.0.1.5
  - name: b
    vip: 192.0.2.11
    port: 80
    backends: *pool
`)
	if !reflect.DeepEqual(got[0].Backends, got[1].Backends) {
		t.Fatalf("alias not followed: %v vs %v", got[0].Backends, got[1].Backends)
	}
}

// A config with one service, for error cases to break. Line numbers:
//
//	1 services:
//	2   - name: web
//	3     vip: 192.0.2.10
//	4     port: 80
//	5     backends:
//	6       - address: 10.0.1.5
//	7         port: 8080
const baseConfig = `services:
  - name: web
    vip: 192.0.2.10
    port: 80
    backends:
      - address: 10.0.1.5
        port: 8080
`

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string // each must appear in the error, in order of appearance
	}{
		{"empty file", "", []string{"edge.yaml: the file is empty (write `services: []` to serve nothing)"}},
		{"comment only", "# nothing\n", []string{"edge.yaml: the file is empty"}},
		{"syntax", "services:\n  - name: web\n    vip: a: b\n", []string{"edge.yaml:3: YAML syntax: mapping values are not allowed in this context"}},
		{"tabs", "services:\n\t- name: web\n", []string{"edge.yaml:2: YAML syntax:"}},
		{"two documents", "services: []\n---\nservices: []\n", []string{"edge.yaml:2:1: a second YAML document"}},
		{"top not mapping", "- a\n", []string{"edge.yaml:1:1: (top level): is a list, want a mapping of services"}},
		{"no services", "other: 1\n", []string{"edge.yaml:1:1: other: unknown field (want one of services)", "edge.yaml:1:1: services: missing or empty"}},
		{"null services", "services:\n", []string{"edge.yaml:1:1: services: missing or empty (write `services: []` to serve nothing)"}},
		{"services not list", "services: {}\n", []string{"edge.yaml:1:11: services: is a mapping, want a list of services"}},
		{"service not mapping", "services: [web]\n", []string{`edge.yaml:1:12: services[0]: is "web", want a mapping of name, vip`}},
		{"unknown field", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    prot: TCP\n", 1),
			[]string{"edge.yaml:5:5: services[0].prot: unknown field (want one of name, vip, port,"}},
		{"unknown backend field", strings.Replace(baseConfig, "        port: 8080\n", "        port: 8080\n        wieght: 3\n", 1),
			[]string{"edge.yaml:8:9: services[0].backends[0].wieght: unknown field (want one of address, port, tunnel, weight)"}},
		{"repeated key", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    port: 81\n", 1),
			[]string{"edge.yaml:5:5: services[0].port: repeated; it is already set at edge.yaml:4 (keep one)"}},
		{"missing name", strings.Replace(baseConfig, "  - name: web\n    vip", "  - vip", 1),
			[]string{"edge.yaml:2:5: services[0].name: missing (set a service name)"}},
		{"bad name", strings.Replace(baseConfig, "name: web", "name: web/1", 1),
			[]string{`edge.yaml:2:11: services[0].name: "web/1" has characters other than letters`}},
		{"long name", strings.Replace(baseConfig, "name: web", "name: "+strings.Repeat("w", 130), 1),
			[]string{"edge.yaml:2:11: services[0].name:", "at most 127"}},
		{"missing vip", strings.Replace(baseConfig, "    vip: 192.0.2.10\n", "", 1),
			[]string{"edge.yaml:2:5: services[0].vip: missing"}},
		{"bad vip", strings.Replace(baseConfig, "192.0.2.10", "192.0.2.300", 1),
			[]string{`edge.yaml:3:10: services[0].vip: "192.0.2.300" is not an IP address`}},
		{"list vip", strings.Replace(baseConfig, "192.0.2.10", "[192.0.2.10]", 1),
			[]string{`edge.yaml:3:10: services[0].vip: is a list, want an IPv4 or IPv6 address`}},
		{"multicast vip", strings.Replace(baseConfig, "192.0.2.10", "239.0.0.1", 1),
			[]string{"edge.yaml:3:10: services[0].vip: 239.0.0.1 is a multicast address"}},
		{"missing port", strings.Replace(baseConfig, "    port: 80\n", "", 1),
			[]string{"edge.yaml:2:5: services[0].port: missing"}},
		{"port range", strings.Replace(baseConfig, "port: 80\n", "port: 70000\n", 1),
			[]string{"edge.yaml:4:11: services[0].port: 70000 is out of range (use 1-65535)"}},
		{"port zero", strings.Replace(baseConfig, "port: 80\n", "port: 0\n", 1),
			[]string{"edge.yaml:4:11: services[0].port: 0 is out of range (use 1-65535)"}},
		{"port text", strings.Replace(baseConfig, "port: 80\n", "port: http\n", 1),
			[]string{`edge.yaml:4:11: services[0].port: is "http", want a whole number from 1 to 65535`}},
		{"protocol", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    protocol: ICMP\n", 1),
			[]string{`edge.yaml:5:15: services[0].protocol: "ICMP" is not known (use one of TCP, UDP, SCTP`}},
		{"scope", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    scope: public\n", 1),
			[]string{`edge.yaml:5:12: services[0].scope: "public" is not known (use one of external, internal)`}},
		{"mode", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    mode: nat\n", 1),
			[]string{`edge.yaml:5:11: services[0].mode: "nat" is not known (use one of dsr, snat, hybrid)`}},
		{"table size", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    maglev_table_size: 1000\n", 1),
			[]string{"edge.yaml:5:24: services[0].maglev_table_size: 1000 is not an allowed size"}},
		{"table size negative", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    maglev_table_size: -1\n", 1),
			[]string{"edge.yaml:5:24: services[0].maglev_table_size: -1 is out of range"}},
		{"source range", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    source_ranges: [10.0.0.0/8, 10.1.2.3/16]\n", 1),
			[]string{"edge.yaml:5:33: services[0].source_ranges[1]: host bits are set (use 10.1.0.0/16)"}},
		{"source range syntax", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    source_ranges: [10.0.0.0]\n", 1),
			[]string{`edge.yaml:5:21: services[0].source_ranges[0]: "10.0.0.0" is not a CIDR prefix`}},
		{"source range family", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    source_ranges: [\"::/0\"]\n", 1),
			[]string{"edge.yaml:5:21: services[0].source_ranges[0]: no external frontend is IPv6"}},
		{"source ranges scalar", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    source_ranges: 10.0.0.0/8\n", 1),
			[]string{`edge.yaml:5:20: services[0].source_ranges: is "10.0.0.0/8", want a list of CIDR prefixes`}},
		{"affinity duration", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    session_affinity: {timeout: 3}\n", 1),
			[]string{`edge.yaml:5:33: services[0].session_affinity.timeout: "3" is not a duration`}},
		{"affinity too long", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    session_affinity: {timeout: 48h}\n", 1),
			[]string{"edge.yaml:5:33: services[0].session_affinity.timeout: timeout 48h0m0s is out of range"}},
		{"affinity unknown", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    session_affinity: {ttl: 1h}\n", 1),
			[]string{"edge.yaml:5:24: services[0].session_affinity.ttl: unknown field (want one of timeout)"}},
		{"check type missing", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {interval: 1s}\n", 1),
			[]string{"edge.yaml:5:19: services[0].health_check.type: missing (use tcp or http)"}},
		{"check type", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: icmp}\n", 1),
			[]string{`edge.yaml:5:26: services[0].health_check.type: "icmp" is not known (use one of tcp, http)`}},
		{"check tcp path", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, path: /}\n", 1),
			[]string{"edge.yaml:5:37: services[0].health_check.path: only http checks have a path"}},
		{"check http path", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: http, path: healthz}\n", 1),
			[]string{`edge.yaml:5:38: services[0].health_check.path: path "healthz" must start with /`}},
		{"check port", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, port: 0}\n", 1),
			[]string{"edge.yaml:5:37: services[0].health_check.port: 0 is out of range (use 1-65535)"}},
		{"check interval", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, interval: often}\n", 1),
			[]string{`edge.yaml:5:41: services[0].health_check.interval: "often" is not a duration`}},
		{"check timeout over interval", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, timeout: 5s}\n", 1),
			[]string{"edge.yaml:5:40: services[0].health_check.timeout: timeout 5s is longer than the interval 2s"}},
		{"check timeout over default interval via interval", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, interval: 0s}\n", 1),
			[]string{"edge.yaml:5:41: services[0].health_check.interval: interval 0s must be positive"}},
		{"check rise", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, rise: 0}\n", 1),
			[]string{"edge.yaml:5:37: services[0].health_check.rise: 0 is out of range (use 1-1000)"}},
		{"check fall", strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    health_check: {type: tcp, fall: many}\n", 1),
			[]string{`edge.yaml:5:37: services[0].health_check.fall: is "many", want a whole number from 1 to 1000`}},
		{"backends not list", strings.Replace(baseConfig, "    backends:\n      - address: 10.0.1.5\n        port: 8080\n", "    backends: 10.0.1.5\n", 1),
			[]string{`edge.yaml:5:15: services[0].backends: is "10.0.1.5", want a list of backends`}},
		{"backend address missing", strings.Replace(baseConfig, "      - address: 10.0.1.5\n        port: 8080\n", "      - port: 8080\n", 1),
			[]string{"edge.yaml:6:9: services[0].backends[0].address: missing (set the backend's IP address)"}},
		{"backend address", strings.Replace(baseConfig, "address: 10.0.1.5", "address: backend-1", 1),
			[]string{`edge.yaml:6:18: services[0].backends[0].address: "backend-1" is not an IP address`}},
		{"backend port", strings.Replace(baseConfig, "port: 8080", "port: 65536", 1),
			[]string{"edge.yaml:7:15: services[0].backends[0].port: 65536 is out of range (use 1-65535)"}},
		{"backend tunnel", strings.Replace(baseConfig, "        port: 8080\n", "        port: 8080\n        tunnel: 2001:db8::1\n", 1),
			[]string{"edge.yaml:8:17: services[0].backends[0].tunnel: tunnel 2001:db8::1 is IPv6 but the backend is IPv4"}},
		{"backend family", strings.Replace(baseConfig, "address: 10.0.1.5", "address: 2001:db8::5", 1),
			[]string{"edge.yaml:6:18: services[0].backends[0].address: an IPv6 backend behind IPv4 frontend 0"}},
		{"backend weight range", strings.Replace(baseConfig, "        port: 8080\n", "        port: 8080\n        weight: 70000\n", 1),
			[]string{"edge.yaml:8:17: services[0].backends[0].weight: 70000 is out of range (use 0-65535)"}},
		{"all weights zero", strings.Replace(baseConfig, "        port: 8080\n", "        port: 8080\n        weight: 0\n", 1),
			[]string{"edge.yaml:6:7: services[0].backends: all 1 backends have weight 0; give at least one a weight > 0"}},
		{"duplicate backend", baseConfig + "      - address: 10.0.1.5\n        port: 8080\n",
			[]string{"edge.yaml:8:9: services[0].backends[1]: duplicates backend 0 (remove one of them)"}},
		{"duplicate name", baseConfig + "  - name: web\n    vip: 192.0.2.11\n    port: 80\n",
			[]string{`edge.yaml:8:11: services[1].name: service "web" is already defined at edge.yaml:2`}},
		{"duplicate frontend", baseConfig + "  - name: api\n    vip: 192.0.2.10\n    port: 80\n    scope: internal\n",
			[]string{`edge.yaml:9:10: services[1].vip: 192.0.2.10:80/TCP is used by both service "web" (edge.yaml:2) and service "api"`}},
		{"several problems", strings.Replace(strings.Replace(baseConfig, "port: 80\n", "port: 0\n", 1), "port: 8080", "port: -1", 1),
			[]string{"edge.yaml:4:11: services[0].port: 0 is out of range", "edge.yaml:7:15: services[0].backends[0].port: -1 is out of range"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := Parse("edge.yaml", []byte(tc.text), testDefaults)
			if err == nil {
				t.Fatalf("Parse accepted it: %v", svcs)
			}
			if svcs != nil {
				t.Errorf("Parse returned services with an error: %v", svcs)
			}
			rest := err.Error()
			for _, want := range tc.want {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("error\n%s\ndoes not contain (in order)\n%s", err, want)
				}
				rest = rest[i+len(want):]
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "edge.yaml" {
				t.Errorf("error %v is not an *edge.Error naming the file", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if _, err := Load(path, testDefaults); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load of a missing file: %v; want an error naming %s", err, path)
	}
	if err := os.WriteFile(path, []byte(baseConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	svcs, err := Load(path, testDefaults)
	if err != nil || len(svcs) != 1 || svcs[0].Name.Name != "web" {
		t.Fatalf("Load: %v, %v", svcs, err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(baseConfig, "port: 80\n", "port: 0\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, testDefaults); err == nil || !strings.HasPrefix(err.Error(), path+":4:11: ") {
		t.Fatalf("Load of a broken file: %v; want an error at %s:4:11", err, path)
	}
}

func TestParseDSRPortMismatch(t *testing.T) {
	text := strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n    mode: dsr\n", 1)
	_, err := Parse("edge.yaml", []byte(text), testDefaults)
	if err == nil || !strings.Contains(err.Error(), "edge.yaml:8:15: services[0].backends[0].port: 8080 differs from the service's port 80, but dsr mode") {
		t.Fatalf("err = %v, want the DSR port error at the backend's port", err)
	}
	// SNAT translates ports; internal services go through the socket hooks.
	for _, extra := range []string{"    mode: snat\n", "    mode: dsr\n    scope: internal\n"} {
		text := strings.Replace(baseConfig, "    port: 80\n", "    port: 80\n"+extra, 1)
		if _, err := Parse("edge.yaml", []byte(text), testDefaults); err != nil {
			t.Errorf("with %q: %v", extra, err)
		}
	}
}
