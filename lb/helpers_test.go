package lb_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// newReconciler returns a reconciler over dp with the default options.
func newReconciler(tb testing.TB, dp lb.Datapath) *lb.Reconciler {
	tb.Helper()
	r, err := lb.NewReconciler(dp, lb.ReconcilerOptions{})
	if err != nil {
		tb.Fatalf("NewReconciler: %v", err)
	}
	return r
}

// faultyReconciler is a reconciler over a fake that checks every write,
// through a Faulty that injects the test's failures.
func faultyReconciler(tb testing.TB) (*lbtest.Fake, *lbtest.Faulty, *lb.Reconciler) {
	tb.Helper()
	fake := lbtest.NewFake()
	fake.CheckEveryWrite(true)
	faulty := lbtest.NewFaulty(fake)
	return fake, faulty, newReconciler(tb, faulty)
}

// mustSync runs a Sync that must succeed.
func mustSync(tb testing.TB, r *lb.Reconciler) lb.SyncResult {
	tb.Helper()
	res, err := r.Sync()
	if err != nil {
		tb.Fatalf("Sync: %v", err)
	}
	return res
}

// settle syncs until no Sync asks for another (a large round leaves the
// spare table generations to the next one).
func settle(tb testing.TB, r *lb.Reconciler) {
	tb.Helper()
	for range 3 {
		if !mustSync(tb, r).Again {
			return
		}
	}
	tb.Fatal("Sync still asks for another after 3 rounds")
}

// checkFake fails the test when the fake's tables reference missing
// entries, now or after any write so far.
func checkFake(tb testing.TB, f *lbtest.Fake) {
	tb.Helper()
	if err := f.Check(); err != nil {
		tb.Errorf("inconsistent datapath:\n%v\n%s", err, f)
	}
	if err := f.Violations(); err != nil {
		tb.Errorf("a write left the datapath inconsistent:\n%v", err)
	}
}

// checkNoLeaks compares the IDs the reconciler holds with the fake's
// entries.
func checkNoLeaks(tb testing.TB, r *lb.Reconciler, f *lbtest.Fake) {
	tb.Helper()
	st, err := f.Dump()
	if err != nil {
		tb.Fatal(err)
	}
	sids := map[lb.ServiceID]bool{}
	for _, e := range st.Services {
		sids[e.ServiceID] = true
	}
	s, fe, be := r.IDsInUse()
	if s != len(sids) || fe != len(st.Frontends) || be != len(st.Backends) {
		tb.Errorf("IDs in use: services %d frontends %d backends %d; the datapath has %d, %d, %d",
			s, fe, be, len(sids), len(st.Frontends), len(st.Backends))
	}
}

// The JSON form of services in testdata, terse on purpose:
//
//	{"name": "default/web:http",
//	 "frontends": [{"addr": "10.96.0.10:80", "kind": "ClusterIP"}],
//	 "backends": [{"addr": "10.0.0.1:8080"}, {"addr": "10.0.0.2:8080", "state": "terminating"}]}
//
// Defaults: protocol TCP; scope internal for ClusterIP and external for
// every other kind; backend weight 1 and state active.
type jsonService struct {
	Name            string         `json:"name"`
	Frontends       []jsonFrontend `json:"frontends"`
	Backends        []jsonBackend  `json:"backends"`
	Mode            string         `json:"mode"`
	Affinity        string         `json:"affinity"`
	ExternalLocal   bool           `json:"externalLocal"`
	InternalLocal   bool           `json:"internalLocal"`
	SourceRanges    []string       `json:"sourceRanges"`
	MaglevTableSize uint32         `json:"maglevTableSize"`
}

type jsonFrontend struct {
	Addr  string `json:"addr"`
	Proto string `json:"proto"`
	Kind  string `json:"kind"`
	Scope string `json:"scope"`
}

type jsonBackend struct {
	Addr   string  `json:"addr"`
	Weight *uint16 `json:"weight"`
	State  string  `json:"state"`
	Local  bool    `json:"local"`
	Tunnel string  `json:"tunnel"`
}

func parseServices(data []byte) ([]*lb.Service, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var in []jsonService
	if err := dec.Decode(&in); err != nil {
		return nil, err
	}
	var out []*lb.Service
	for _, js := range in {
		s, err := js.service()
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", js.Name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseName(s string) lb.ServiceName {
	var n lb.ServiceName
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		s, n.Port = s[:i], s[i+1:]
	}
	if ns, name, ok := strings.Cut(s, "/"); ok {
		n.Namespace, n.Name = ns, name
	} else {
		n.Name = s
	}
	return n
}

var kinds = map[string]lb.FrontendKind{
	"ClusterIP": lb.KindClusterIP, "NodePort": lb.KindNodePort, "LoadBalancer": lb.KindLoadBalancer,
	"ExternalIP": lb.KindExternalIP, "EdgeVIP": lb.KindEdgeVIP,
}

var states = map[string]lb.BackendState{
	"": lb.BackendActive, "active": lb.BackendActive, "terminating": lb.BackendTerminating, "quarantined": lb.BackendQuarantined,
}

func (js jsonService) service() (*lb.Service, error) {
	s := &lb.Service{
		Name:            parseName(js.Name),
		ExternalLocal:   js.ExternalLocal,
		InternalLocal:   js.InternalLocal,
		MaglevTableSize: js.MaglevTableSize,
	}
	var err error
	if js.Mode != "" {
		if s.Mode, err = lb.ParseMode(js.Mode); err != nil {
			return nil, err
		}
	}
	if js.Affinity != "" {
		if s.SessionAffinity, err = time.ParseDuration(js.Affinity); err != nil {
			return nil, err
		}
	}
	for _, p := range js.SourceRanges {
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, err
		}
		s.SourceRanges = append(s.SourceRanges, pr)
	}
	for _, jf := range js.Frontends {
		ap, err := netip.ParseAddrPort(jf.Addr)
		if err != nil {
			return nil, err
		}
		f := lb.Frontend{Addr: ap.Addr(), Port: ap.Port(), Protocol: lb.TCP}
		if jf.Proto != "" {
			if f.Protocol, err = lb.ParseProtocol(jf.Proto); err != nil {
				return nil, err
			}
		}
		kind, ok := kinds[jf.Kind]
		if !ok {
			return nil, fmt.Errorf("frontend %s: unknown kind %q", jf.Addr, jf.Kind)
		}
		f.Kind = kind
		switch jf.Scope {
		case "":
			if kind != lb.KindClusterIP {
				f.Scope = lb.ScopeExternal
			} else {
				f.Scope = lb.ScopeInternal
			}
		case "internal":
			f.Scope = lb.ScopeInternal
		case "external":
			f.Scope = lb.ScopeExternal
		default:
			return nil, fmt.Errorf("frontend %s: unknown scope %q", jf.Addr, jf.Scope)
		}
		s.Frontends = append(s.Frontends, f)
	}
	for _, jb := range js.Backends {
		ap, err := netip.ParseAddrPort(jb.Addr)
		if err != nil {
			return nil, err
		}
		b := lb.Backend{Addr: ap.Addr(), Port: ap.Port(), Weight: 1, Local: jb.Local}
		if jb.Weight != nil {
			b.Weight = *jb.Weight
		}
		st, ok := states[jb.State]
		if !ok {
			return nil, fmt.Errorf("backend %s: unknown state %q", jb.Addr, jb.State)
		}
		b.State = st
		if jb.Tunnel != "" {
			if b.Tunnel, err = netip.ParseAddr(jb.Tunnel); err != nil {
				return nil, err
			}
		}
		s.Backends = append(s.Backends, b)
	}
	return s, nil
}

// genService builds service i of a synthetic cluster: a ClusterIP with n
// backends, all addresses unique in i.
func genService(i, n int) *lb.Service {
	s := &lb.Service{
		Name: lb.ServiceName{Namespace: "bench", Name: "svc-" + strconv.Itoa(i), Port: "http"},
		Frontends: []lb.Frontend{{
			Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindClusterIP,
		}},
	}
	for j := range n {
		s.Backends = append(s.Backends, lb.Backend{
			Addr:   netip.AddrFrom4([4]byte{10, byte(1 + i>>8), byte(i), byte(1 + j)}),
			Port:   8080,
			Weight: 1,
		})
	}
	return s
}
