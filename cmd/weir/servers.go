package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startServers starts the metrics and health servers. A bind failure is a
// start-up error naming the flag.
func (a *agent) startServers() ([]*http.Server, error) {
	var servers []*http.Server
	start := func(flag, addr string, h http.Handler) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--%s %s: %w", flag, addr, err)
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("server stopped", "flag", flag, "err", err)
			}
		}()
		return nil
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	registerAgentMetrics(reg, a)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.healthHandlers(mux)
	if err := start("metrics-bind-address", a.opts.metricsBindAddress, mux); err != nil {
		return servers, err
	}
	hmux := http.NewServeMux()
	a.healthHandlers(hmux)
	if err := start("healthz-bind-address", a.opts.healthzBindAddress, hmux); err != nil {
		for _, s := range servers {
			_ = s.Close()
		}
		return nil, err
	}
	return servers, nil
}

// healthHandlers serves /healthz, /livez and /readyz: 200 when every hook
// is attached and the last sync succeeded, 503 naming what is wrong.
func (a *agent) healthHandlers(mux *http.ServeMux) {
	h := func(w http.ResponseWriter, _ *http.Request) {
		problems := a.status.problems()
		a.status.mu.Lock()
		body := map[string]any{
			"lastUpdated": a.status.lastSync.UTC().Format(time.RFC3339Nano),
			"currentTime": time.Now().UTC().Format(time.RFC3339Nano),
			"synced":      a.status.hasSynced,
			"problems":    problems,
		}
		ok := a.status.hasSynced && len(problems) == 0
		a.status.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(body)
	}
	mux.HandleFunc("/healthz", h)
	mux.HandleFunc("/livez", h)
	mux.HandleFunc("/readyz", h)
}
