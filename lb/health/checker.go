package health

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weir-lb/weir/lb"
)

// Checker probes backends and tracks their health. Its methods are safe
// for concurrent use.
type Checker struct {
	log      *slog.Logger
	onChange func()
	probe    prober

	wg sync.WaitGroup // one per running target goroutine

	mu      sync.Mutex
	closed  bool
	targets map[targetKey]*target
}

// targetKey is what is probed: a backend of a service. The same backend
// in two services is two targets, as each service has its own check.
type targetKey struct {
	service lb.ServiceName
	backend netip.AddrPort
}

// target is one probed backend. Its state is guarded by Checker.mu.
type target struct {
	key    targetKey
	hc     lb.HealthCheck
	addr   netip.AddrPort // where probes go: the backend's address, the check's port
	cancel context.CancelFunc

	healthy   bool
	successes int // consecutive
	failures  int // consecutive
	lastErr   error
	lastProbe time.Time
}

// New returns a Checker probing nothing until Set is called. onChange may
// be nil; logger may be nil to discard logs.
func New(logger *slog.Logger, onChange func()) *Checker {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func() {}
	}
	return &Checker{
		log:      logger,
		onChange: onChange,
		probe:    newNetProber().probe,
		targets:  map[targetKey]*target{},
	}
}

// Set makes the Checker probe the active backends of the services that
// have a HealthCheck, and stop probing everything else. A target whose
// check is unchanged keeps its health; one whose check changed keeps its
// health but restarts its counts.
func (c *Checker) Set(services []*lb.Service) {
	want := map[targetKey]*target{}
	for _, s := range services {
		if s.HealthCheck == nil {
			continue
		}
		for _, b := range s.Backends {
			if b.State != lb.BackendActive {
				continue
			}
			k := targetKey{service: s.Name, backend: b.AddrPort()}
			if want[k] != nil {
				continue // a duplicate; lb.Validate reports it
			}
			port := b.Port
			if s.HealthCheck.Port != 0 {
				port = s.HealthCheck.Port
			}
			want[k] = &target{key: k, hc: *s.HealthCheck, addr: netip.AddrPortFrom(b.Addr, port), healthy: true}
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for k, old := range c.targets {
		if n := want[k]; n != nil && n.hc == old.hc && n.addr == old.addr {
			delete(want, k) // unchanged: keep probing
			continue
		} else if n != nil {
			n.healthy = old.healthy
		}
		old.cancel()
		delete(c.targets, k)
	}
	for k, t := range want {
		ctx, cancel := context.WithCancel(context.Background())
		t.cancel = cancel
		c.targets[k] = t
		c.wg.Go(func() { c.run(ctx, t) })
	}
}

// Close stops every probe and waits for them to end. Set does nothing
// afterwards.
func (c *Checker) Close() {
	c.mu.Lock()
	c.closed = true
	for k, t := range c.targets {
		t.cancel()
		delete(c.targets, k)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// run probes t every interval until ctx ends.
func (c *Checker) run(ctx context.Context, t *target) {
	timer := time.NewTimer(firstDelay(t.hc.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		err := c.probe(ctx, t.addr, &t.hc)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the backend
		}
		c.record(t, start, err)
		// The interval runs from probe start to probe start; a probe takes
		// at most the timeout, which is at most the interval.
		timer.Reset(max(0, t.hc.Interval-time.Since(start)))
	}
}

// record counts a probe's result and reports a flip.
func (c *Checker) record(t *target, at time.Time, err error) {
	c.mu.Lock()
	if c.targets[t.key] != t {
		c.mu.Unlock()
		return // replaced or removed while probing
	}
	t.lastProbe, t.lastErr = at, err
	flipped := false
	if err == nil {
		t.successes++
		t.failures = 0
		if !t.healthy && t.successes >= t.hc.Rise {
			t.healthy, flipped = true, true
		}
	} else {
		t.failures++
		t.successes = 0
		if t.healthy && t.failures >= t.hc.Fall {
			t.healthy, flipped = false, true
		}
	}
	healthy, failures := t.healthy, t.failures
	c.mu.Unlock()

	if !flipped {
		return
	}
	if healthy {
		c.log.Info("backend healthy again; it takes new flows", "service", t.key.service.String(), "backend", t.key.backend.String())
	} else {
		c.log.Warn("backend failed its health check; quarantined", "service", t.key.service.String(), "backend", t.key.backend.String(),
			"failures", failures, "error", err)
	}
	c.onChange()
}

// Apply returns services with every active backend whose target is
// unhealthy marked lb.BackendQuarantined. Services it changes are copied;
// the others are returned as they are. The input is never modified.
func (c *Checker) Apply(services []*lb.Service) []*lb.Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*lb.Service, len(services))
	for i, s := range services {
		out[i] = s
		if s.HealthCheck == nil {
			continue
		}
		var backends []lb.Backend // allocated at the first quarantine
		for j, b := range s.Backends {
			if b.State != lb.BackendActive {
				continue
			}
			t := c.targets[targetKey{service: s.Name, backend: b.AddrPort()}]
			if t == nil || t.healthy {
				continue
			}
			if backends == nil {
				backends = slices.Clone(s.Backends)
			}
			backends[j].State = lb.BackendQuarantined
		}
		if backends != nil {
			cp := *s
			cp.Backends = backends
			out[i] = &cp
		}
	}
	return out
}

// BackendStatus is the health of one probed backend.
type BackendStatus struct {
	Service lb.ServiceName
	Backend netip.AddrPort // the backend, as in the service
	Probe   netip.AddrPort // where probes go
	Type    string         // "tcp" or "http"
	Healthy bool
	// Successes and Failures count the current run of equal results.
	Successes int
	Failures  int
	// LastProbe is when the last probe started; zero before the first.
	LastProbe time.Time
	// LastError is why the last probe failed; empty if it succeeded.
	LastError string
}

// Status returns every target, ordered by service and backend.
func (c *Checker) Status() []BackendStatus {
	c.mu.Lock()
	out := make([]BackendStatus, 0, len(c.targets))
	for _, t := range c.targets {
		st := BackendStatus{
			Service:   t.key.service,
			Backend:   t.key.backend,
			Probe:     t.addr,
			Type:      t.hc.Type,
			Healthy:   t.healthy,
			Successes: t.successes,
			Failures:  t.failures,
			LastProbe: t.lastProbe,
		}
		if t.lastErr != nil {
			st.LastError = t.lastErr.Error()
		}
		out = append(out, st)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b BackendStatus) int {
		return cmp.Or(cmp.Compare(a.Service.String(), b.Service.String()), a.Backend.Compare(b.Backend))
	})
	return out
}
