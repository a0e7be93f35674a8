package main

// kube-proxy compatible health checks: the node's /healthz (healthReport)
// and one HTTP server per service with externalTrafficPolicy Local on its
// healthCheckNodePort (hcServers), which cloud load balancers probe to
// send traffic only to nodes with local endpoints.

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/k8s"
)

// healthReport is the body of /healthz, /livez and /readyz: kube-proxy's
// fields (lastUpdated, currentTime, nodeEligible, healthy) and Weir's.
type healthReport struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
	Synced       bool      `json:"synced"`
	Problems     []string  `json:"problems"`
}

// report judges the agent's health at now: healthy once the first sync
// succeeded, while nothing is wrong and the last sync is at most
// staleAfter old (kube-proxy allows two sync periods). With
// withNodeEligible (the /healthz view) a node that Kubernetes is deleting
// or draining is reported not eligible and not healthy, so that load
// balancers stop sending it traffic.
func (s *agentStatus) report(now time.Time, staleAfter time.Duration, withNodeEligible bool) healthReport {
	problems := s.problems()
	s.mu.Lock()
	r := healthReport{
		LastUpdated: s.lastSync.UTC(),
		CurrentTime: now.UTC(),
		Synced:      s.hasSynced,
	}
	eligible := s.nodeEligible
	s.mu.Unlock()
	if r.Synced && staleAfter > 0 && now.Sub(r.LastUpdated) > staleAfter {
		problems = append(problems, fmt.Sprintf("no sync for %s (more than %s): the sync loop is stuck",
			now.Sub(r.LastUpdated).Round(time.Second), staleAfter))
	}
	if !r.Synced {
		problems = append(problems, "waiting for the first successful sync")
	}
	if withNodeEligible && eligible != nil {
		e := eligible()
		r.NodeEligible = &e
		if !e {
			problems = append(problems, "this node is being deleted or drained (no Node object, deletionTimestamp set, or ToBeDeletedByClusterAutoscaler taint)")
		}
	}
	if problems == nil {
		problems = []string{}
	}
	r.Problems = problems
	r.Healthy = len(problems) == 0
	return r
}

// staleAfter is how old the last sync may get before the agent counts as
// stuck: two sync periods, as kube-proxy's health timeout.
func (a *agent) staleAfter() time.Duration { return 2 * a.opts.syncPeriod }

// serviceProxyHealthy is what the service health checks report as
// serviceProxyHealthy: the agent's health without node eligibility, as
// kube-proxy's.
func (a *agent) serviceProxyHealthy() bool {
	return a.status.report(time.Now(), a.staleAfter(), false).Healthy
}

// hcServers runs the health-check node port servers. Its methods are safe
// for concurrent use.
type hcServers struct {
	host    string // listen address: "" for every address of the netns
	healthy func() bool
	log     *slog.Logger

	mu      sync.Mutex
	servers map[lb.ServiceName]*hcServer
}

func newHCServers(host string, healthy func() bool, log *slog.Logger) *hcServers {
	return &hcServers{host: host, healthy: healthy, log: log, servers: map[lb.ServiceName]*hcServer{}}
}

// update makes the servers match want: it stops those of services gone
// or moved to another port, starts the missing ones and sets every
// endpoint count. A port that can't be bound is logged and tried again on
// the next update.
func (h *hcServers) update(want map[lb.ServiceName]k8s.HealthCheckPort) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, s := range h.servers {
		if w, ok := want[name]; !ok || w.Port != s.port {
			s.close()
			delete(h.servers, name)
			h.log.Info("health-check node port closed", "service", name, "port", s.port)
		}
	}
	for name, w := range want {
		s, ok := h.servers[name]
		if !ok {
			var err error
			if s, err = h.start(name, w.Port); err != nil {
				h.log.Error("health-check node port not served; will retry", "service", name, "port", w.Port, "err", err)
				continue
			}
			h.servers[name] = s
			h.log.Info("health-check node port open", "service", name, "port", w.Port)
		}
		s.endpoints[0].Store(int64(w.LocalEndpoints))
		s.endpoints[1].Store(int64(w.LocalEndpointsV6))
	}
}

// close stops every server.
func (h *hcServers) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, s := range h.servers {
		s.close()
		delete(h.servers, name)
	}
}

func (h *hcServers) start(name lb.ServiceName, port uint16) (*hcServer, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(h.host, strconv.Itoa(int(port))))
	if err != nil {
		return nil, err
	}
	s := &hcServer{name: name, port: port, healthy: h.healthy}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health-check node port server stopped", "service", name, "port", port, "err", err)
		}
	}()
	return s, nil
}

// hcServer answers one service's health checks.
type hcServer struct {
	name    lb.ServiceName
	port    uint16
	healthy func() bool
	srv     *http.Server
	// endpoints are the local endpoint counts, IPv4 then IPv6.
	endpoints [2]atomic.Int64
}

func (s *hcServer) close() { _ = s.srv.Close() }

// hcBody is kube-proxy's health-check answer.
type hcBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// ServeHTTP answers any path, as kube-proxy does: 200 while the service
// has local endpoints of the family the request came over (the node
// address it was sent to) and the agent is healthy, else 503.
func (s *hcServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b hcBody
	b.Service.Namespace, b.Service.Name = s.name.Namespace, s.name.Name
	b.LocalEndpoints = int(s.endpoints[familyIndex(r)].Load())
	b.ServiceProxyHealthy = s.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(b.LocalEndpoints))
	if b.LocalEndpoints > 0 && b.ServiceProxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(b)
}

// familyIndex is 1 for a request that reached the server over IPv6, else 0
// (IPv4, also as an IPv4-mapped address on a dual-stack listener).
func familyIndex(r *http.Request) int {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().Is4() {
			return 1
		}
	}
	return 0
}
