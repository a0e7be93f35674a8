package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	maps := registerAgentMetrics(reg, a)
	mux := http.NewServeMux()
	mux.Handle("/metrics", newMetricsHandler(reg, maps))
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

// healthHandlers serves /healthz, /livez and /readyz as kube-proxy does:
// a JSON healthReport, 200 when healthy and 503 naming what is wrong (a
// hook not attached, a failed or stale sync, a source not synced). Only
// /healthz also fails on a node that Kubernetes is deleting or draining.
func (a *agent) healthHandlers(mux *http.ServeMux) {
	handler := func(withNodeEligible bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			r := a.status.report(time.Now(), a.staleAfter(), withNodeEligible)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			if !r.Healthy {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			_ = json.NewEncoder(w).Encode(r)
		}
	}
	mux.HandleFunc("/healthz", handler(true))
	mux.HandleFunc("/livez", handler(false))
	mux.HandleFunc("/readyz", handler(false))
}
