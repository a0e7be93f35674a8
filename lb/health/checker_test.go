package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
)

// wait bounds how long a test waits for something that should happen
// soon; it is a failure bound, not a measurement.
const wait = 10 * time.Second

// newChecker returns a Checker whose flips arrive on the returned channel,
// closed when the test ends.
func newChecker(t *testing.T) (*Checker, chan struct{}) {
	t.Helper()
	changes := make(chan struct{}, 64)
	c := New(nil, func() { changes <- struct{}{} })
	t.Cleanup(c.Close)
	return c, changes
}

func nextChange(t *testing.T, changes <-chan struct{}) {
	t.Helper()
	select {
	case <-changes:
	case <-time.After(wait):
		t.Fatal("onChange was not called")
	}
}

func service(name string, hc *lb.HealthCheck, backends ...netip.AddrPort) *lb.Service {
	s := &lb.Service{
		Name:        lb.ServiceName{Name: name},
		Frontends:   []lb.Frontend{{Addr: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: lb.TCP, Kind: lb.KindEdgeVIP}},
		HealthCheck: hc,
	}
	for _, b := range backends {
		s.Backends = append(s.Backends, lb.Backend{Addr: b.Addr(), Port: b.Port(), Weight: 1, State: lb.BackendActive})
	}
	return s
}

// fastCheck probes often so tests finish quickly; nothing asserts timing.
func fastCheck(typ string, rise, fall int) *lb.HealthCheck {
	return &lb.HealthCheck{Type: typ, Path: "/healthz", Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: rise, Fall: fall}
}

// stateOf returns the state Apply gives backend i of the only service.
func stateOf(t *testing.T, c *Checker, s *lb.Service, i int) lb.BackendState {
	t.Helper()
	return c.Apply([]*lb.Service{s})[0].Backends[i].State
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	// Accept and drop, so the backlog never fills.
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	return l
}

func TestTCPFlips(t *testing.T) {
	c, changes := newChecker(t)
	l := listen(t, "127.0.0.1:0")
	addr := netip.MustParseAddrPort(l.Addr().String())
	s := service("web", fastCheck("tcp", 2, 2), addr)
	c.Set([]*lb.Service{s})
	if got := stateOf(t, c, s, 0); got != lb.BackendActive {
		t.Fatalf("a new backend is %s, want active until probes say otherwise", got)
	}

	l.Close()
	nextChange(t, changes)
	if got := stateOf(t, c, s, 0); got != lb.BackendQuarantined {
		t.Fatalf("after the listener closed: %s, want quarantined", got)
	}
	st := c.Status()
	if len(st) != 1 || st[0].Healthy || st[0].LastError == "" || st[0].Backend != addr || st[0].Type != "tcp" {
		t.Fatalf("Status: %+v", st)
	}

	listen(t, addr.String()) // the same port again
	nextChange(t, changes)
	if got := stateOf(t, c, s, 0); got != lb.BackendActive {
		t.Fatalf("after the listener came back: %s, want active", got)
	}
}

func TestHTTPFlips(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	var paths atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.URL.Path)
		if r.URL.Path == "/elsewhere" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Location", "/elsewhere")
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	c, changes := newChecker(t)

	// The backend's own port is closed: probes must use the check's port.
	check := fastCheck("http", 1, 1)
	check.Port = netip.MustParseAddrPort(srv.Listener.Addr().String()).Port()
	s := service("api", check, netip.MustParseAddrPort("127.0.0.1:1"))
	c.Set([]*lb.Service{s})

	status.Store(http.StatusServiceUnavailable)
	nextChange(t, changes)
	if got := stateOf(t, c, s, 0); got != lb.BackendQuarantined {
		t.Fatalf("after HTTP 503: %s, want quarantined", got)
	}
	if p, _ := paths.Load().(string); p != "/healthz" {
		t.Errorf("probe asked for %q, want /healthz", p)
	}

	// A redirect is healthy and not followed (its target answers 500).
	status.Store(http.StatusFound)
	nextChange(t, changes)
	if got := stateOf(t, c, s, 0); got != lb.BackendActive {
		t.Fatalf("after HTTP 302: %s, want active", got)
	}
	if p, _ := paths.Load().(string); p != "/healthz" {
		t.Errorf("the redirect to %q was followed", p)
	}
}

// scripted is a prober fed one result at a time by the test. A probe
// first announces itself on asks, then takes its result; settle waits for
// the next announcement, which comes after the previous result was
// recorded, so the test knows exactly what the Checker has counted.
type scripted struct {
	asks    chan struct{}
	results chan error
	asked   bool // an announcement was taken and not yet answered
}

func newScripted(c *Checker) *scripted {
	s := &scripted{asks: make(chan struct{}), results: make(chan error)}
	c.probe = func(ctx context.Context, _ netip.AddrPort, _ *lb.HealthCheck) error {
		select {
		case s.asks <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err := <-s.results:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s
}

// settle returns once every result fed so far has been recorded.
func (s *scripted) settle(t *testing.T) {
	t.Helper()
	if s.asked {
		return
	}
	select {
	case <-s.asks:
		s.asked = true
	case <-time.After(wait):
		t.Fatal("the probe did not run")
	}
}

func (s *scripted) feed(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		s.settle(t)
		s.asked = false
		select {
		case s.results <- err:
		case <-time.After(wait):
			t.Fatal("the probe did not take its result")
		}
	}
}

var errDown = errors.New("connection refused")

func TestThresholds(t *testing.T) {
	c, changes := newChecker(t)
	probe := newScripted(c)
	hc := fastCheck("tcp", 2, 3)
	hc.Interval, hc.Timeout = time.Microsecond, time.Microsecond
	s := service("web", hc, netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80"))
	s.Backends = s.Backends[:1] // one target, so results go to it alone
	c.Set([]*lb.Service{s})

	check := func(healthy bool, successes, failures int) {
		t.Helper()
		st := c.Status()[0]
		if st.Healthy != healthy || st.Successes != successes || st.Failures != failures {
			t.Fatalf("status %+v, want healthy=%v successes=%d failures=%d", st, healthy, successes, failures)
		}
	}
	probe.feed(t, errDown, errDown)
	probe.settle(t)
	check(true, 0, 2)
	probe.feed(t, nil, errDown, errDown)
	probe.settle(t)
	check(true, 0, 2) // the success in between reset the count
	probe.feed(t, errDown)
	probe.settle(t)
	check(false, 0, 3)
	nextChange(t, changes)
	probe.feed(t, nil)
	probe.settle(t)
	check(false, 1, 0)
	probe.feed(t, nil)
	probe.settle(t)
	check(true, 2, 0)
	nextChange(t, changes)
	select {
	case <-changes:
		t.Fatal("onChange called more than once per flip")
	default:
	}
}

func TestSetKeepsAndStops(t *testing.T) {
	c, changes := newChecker(t)
	probe := newScripted(c)
	hc := fastCheck("tcp", 1, 1)
	a := netip.MustParseAddrPort("10.0.0.1:80")
	s := service("web", hc, a)
	c.Set([]*lb.Service{s})
	probe.feed(t, errDown)
	nextChange(t, changes)

	// The same target again keeps its state.
	c.Set([]*lb.Service{service("web", hc, a)})
	if got := stateOf(t, c, s, 0); got != lb.BackendQuarantined {
		t.Fatalf("after Set with the same target: %s, want still quarantined", got)
	}
	// A changed check keeps the health but restarts the counts.
	hc2 := *hc
	hc2.Fall = 2
	s2 := service("web", &hc2, a)
	c.Set([]*lb.Service{s2})
	if st := c.Status(); len(st) != 1 || st[0].Healthy || st[0].Failures != 0 {
		t.Fatalf("after a check change: %+v", st)
	}

	// Terminating backends and services without a check are not probed.
	term := service("web", &hc2, a)
	term.Backends[0].State = lb.BackendTerminating
	c.Set([]*lb.Service{term, service("other", nil, a)})
	if st := c.Status(); len(st) != 0 {
		t.Fatalf("probing %+v, want nothing", st)
	}
	if got := c.Apply([]*lb.Service{s2})[0]; got != s2 {
		t.Fatal("Apply copied a service it had no reason to change")
	}
}

func TestApplyCopies(t *testing.T) {
	c, changes := newChecker(t)
	down, up := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	c.probe = func(_ context.Context, addr netip.AddrPort, _ *lb.HealthCheck) error {
		if addr == down {
			return errDown
		}
		return nil
	}
	s := service("web", fastCheck("tcp", 1, 1), down, up)
	s.Backends = append(s.Backends, lb.Backend{Addr: down.Addr(), Port: 81, Weight: 1, State: lb.BackendTerminating})
	plain := service("plain", nil, down)
	c.Set([]*lb.Service{s, plain})
	nextChange(t, changes)

	out := c.Apply([]*lb.Service{s, plain})
	if out[1] != plain {
		t.Error("a service without a health check was copied")
	}
	if out[0] == s {
		t.Fatal("a service with a quarantined backend was not copied")
	}
	want := []lb.BackendState{lb.BackendQuarantined, lb.BackendActive, lb.BackendTerminating}
	for i, b := range out[0].Backends {
		if b.State != want[i] {
			t.Errorf("backend %s: %s, want %s", b.AddrPort(), b.State, want[i])
		}
		if s.Backends[i].State == lb.BackendQuarantined {
			t.Errorf("Apply modified its input's backend %s", b.AddrPort())
		}
	}
}

func TestCloseStopsProbes(t *testing.T) {
	c := New(nil, nil)
	probe := newScripted(c)
	c.Set([]*lb.Service{service("web", fastCheck("tcp", 1, 1), netip.MustParseAddrPort("10.0.0.1:80"))})
	probe.feed(t, nil)
	c.Close() // returns only once the probe goroutine has ended
	c.Set([]*lb.Service{service("web", fastCheck("tcp", 1, 1), netip.MustParseAddrPort("10.0.0.1:80"))})
	if st := c.Status(); len(st) != 0 {
		t.Fatalf("probing after Close: %+v", st)
	}
}
