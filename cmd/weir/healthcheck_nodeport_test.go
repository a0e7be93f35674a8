package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/k8s"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func newTestHCServers(t *testing.T, healthy func() bool) *hcServers {
	t.Helper()
	h := newHCServers("127.0.0.1", healthy, slog.New(slog.DiscardHandler))
	t.Cleanup(h.close)
	return h
}

// probe GETs a health-check port and returns the status, the body and
// the endpoint-weight header.
func probe(t *testing.T, port uint16) (int, string, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz")
	if err != nil {
		t.Fatalf("probe port %d: %v", port, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	return resp.StatusCode, strings.TrimSpace(string(body)), resp.Header.Get("X-Load-Balancing-Endpoint-Weight")
}

func expectClosed(t *testing.T, port uint16) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(int(port)), time.Second)
	if err == nil {
		conn.Close()
		t.Errorf("port %d still accepts connections", port)
	}
}

func TestHealthCheckNodePortAnswersLikeKubeProxy(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	h := newTestHCServers(t, healthy.Load)
	web := lb.ServiceName{Namespace: "default", Name: "web"}
	port := freePort(t)

	for _, tc := range []struct {
		name      string
		endpoints int
		healthy   bool
		status    int
		body      string
	}{
		{"local endpoints", 2, true, http.StatusOK,
			`{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}`},
		{"no local endpoint", 0, true, http.StatusServiceUnavailable,
			`{"service":{"namespace":"default","name":"web"},"localEndpoints":0,"serviceProxyHealthy":true}`},
		{"agent unhealthy", 3, false, http.StatusServiceUnavailable,
			`{"service":{"namespace":"default","name":"web"},"localEndpoints":3,"serviceProxyHealthy":false}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			healthy.Store(tc.healthy)
			h.update(map[lb.ServiceName]k8s.HealthCheckPort{web: {Port: port, LocalEndpoints: tc.endpoints}})
			status, body, weight := probe(t, port)
			if status != tc.status || body != tc.body {
				t.Errorf("got %d %s\nwant %d %s", status, body, tc.status, tc.body)
			}
			if weight != strconv.Itoa(tc.endpoints) {
				t.Errorf("X-Load-Balancing-Endpoint-Weight %q, want %d", weight, tc.endpoints)
			}
		})
	}
}

func TestHealthCheckNodePortsFollowServices(t *testing.T) {
	h := newTestHCServers(t, func() bool { return true })
	web := lb.ServiceName{Namespace: "default", Name: "web"}
	api := lb.ServiceName{Namespace: "shop", Name: "api"}
	p1, p2, p3 := freePort(t), freePort(t), freePort(t)

	h.update(map[lb.ServiceName]k8s.HealthCheckPort{web: {Port: p1, LocalEndpoints: 1}, api: {Port: p2, LocalEndpoints: 1}})
	for _, p := range []uint16{p1, p2} {
		if status, body, _ := probe(t, p); status != http.StatusOK {
			t.Errorf("port %d: %d %s", p, status, body)
		}
	}
	// web moves to another port; api goes away.
	h.update(map[lb.ServiceName]k8s.HealthCheckPort{web: {Port: p3, LocalEndpoints: 1}})
	expectClosed(t, p1)
	expectClosed(t, p2)
	if status, body, _ := probe(t, p3); status != http.StatusOK || !strings.Contains(body, `"name":"web"`) {
		t.Errorf("moved port: %d %s", status, body)
	}
	h.update(nil)
	expectClosed(t, p3)
}

func TestHealthCheckNodePortRetriesABusyPort(t *testing.T) {
	h := newTestHCServers(t, func() bool { return true })
	web := lb.ServiceName{Namespace: "default", Name: "web"}
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(blocker.Addr().(*net.TCPAddr).Port)
	want := map[lb.ServiceName]k8s.HealthCheckPort{web: {Port: port, LocalEndpoints: 1}}
	h.update(want) // the port is taken: logged, not served
	if len(h.servers) != 0 {
		t.Fatalf("a server was recorded for a port it could not bind")
	}
	blocker.Close()
	h.update(want)
	if status, body, _ := probe(t, port); status != http.StatusOK {
		t.Errorf("after the retry: %d %s", status, body)
	}
}

// testAgent is an agent with only what the health endpoints read.
func testAgent() *agent {
	return &agent{opts: agentOptions{syncPeriod: 30 * time.Second}, status: newAgentStatus(), log: slog.New(slog.DiscardHandler)}
}

func getHealth(t *testing.T, a *agent, path string) (int, healthReport) {
	t.Helper()
	mux := http.NewServeMux()
	a.healthHandlers(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var r healthReport
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, r
}

func TestHealthzLikeKubeProxy(t *testing.T) {
	a := testAgent()
	if code, r := getHealth(t, a, "/healthz"); code != http.StatusServiceUnavailable || r.Healthy ||
		!strings.Contains(strings.Join(r.Problems, ";"), "first successful sync") {
		t.Errorf("before the first sync: %d %+v", code, r)
	}

	a.status.recordSync(time.Millisecond, nil, true)
	code, r := getHealth(t, a, "/healthz")
	if code != http.StatusOK || !r.Healthy || len(r.Problems) != 0 || r.NodeEligible != nil {
		t.Errorf("after a sync: %d %+v", code, r)
	}
	if d := r.CurrentTime.Sub(r.LastUpdated); d < 0 || d > time.Minute {
		t.Errorf("lastUpdated %s and currentTime %s are not the last sync and now", r.LastUpdated, r.CurrentTime)
	}

	// Stale: the last sync is older than two sync periods.
	if r := a.status.report(time.Now().Add(61*time.Second), a.staleAfter(), true); r.Healthy ||
		!strings.Contains(strings.Join(r.Problems, ";"), "sync loop is stuck") {
		t.Errorf("stale: %+v", r)
	}
	if r := a.status.report(time.Now().Add(59*time.Second), a.staleAfter(), true); !r.Healthy {
		t.Errorf("not yet stale: %+v", r)
	}

	// A node being drained fails /healthz only.
	var eligible atomic.Bool
	a.status.nodeEligible = eligible.Load
	if code, r := getHealth(t, a, "/healthz"); code != http.StatusServiceUnavailable || r.NodeEligible == nil || *r.NodeEligible {
		t.Errorf("/healthz on an ineligible node: %d %+v", code, r)
	}
	if code, r := getHealth(t, a, "/livez"); code != http.StatusOK || r.NodeEligible != nil {
		t.Errorf("/livez on an ineligible node: %d %+v", code, r)
	}
	eligible.Store(true)
	if code, r := getHealth(t, a, "/healthz"); code != http.StatusOK || r.NodeEligible == nil || !*r.NodeEligible {
		t.Errorf("/healthz on an eligible node: %d %+v", code, r)
	}
	if !a.serviceProxyHealthy() {
		t.Error("serviceProxyHealthy() = false on a healthy agent")
	}

	a.status.recordSync(time.Millisecond, errors.New("datapath: map full"), true)
	if code, r := getHealth(t, a, "/readyz"); code != http.StatusServiceUnavailable ||
		!strings.Contains(strings.Join(r.Problems, ";"), "last sync failed: datapath: map full") {
		t.Errorf("after a failed sync: %d %+v", code, r)
	}
	if a.serviceProxyHealthy() {
		t.Error("serviceProxyHealthy() = true after a failed sync")
	}
}

func TestKubeFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, tc := range []struct {
		name    string
		args    []string
		env     string
		kube    bool
		wantErr string
	}{
		{name: "edge only", args: []string{"--config", "edge.yaml"}},
		{name: "both sources", args: []string{"--config", "edge.yaml", "--kubeconfig", "kc"}, wantErr: "two service sources"},
		{name: "kubeconfig", args: []string{"--kubeconfig", "kc", "--node-name", "n1"}, kube: true},
		{name: "in a pod", env: "10.96.0.1", kube: true},
		{name: "in a pod with an edge config", args: []string{"--config", "edge.yaml"}, env: "10.96.0.1"},
		{name: "bad nodeport CIDR", args: []string{"--kubeconfig", "kc", "--nodeport-addresses", "10.0.0.0/8,primary"}, wantErr: `--nodeport-addresses "primary"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBERNETES_SERVICE_HOST", tc.env)
			var o agentOptions
			if err := agentFlags(&o).Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := checkKubeFlags(&o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("checkKubeFlags = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.kubeSource() != tc.kube {
				t.Errorf("kubeSource() = %v, want %v", o.kubeSource(), tc.kube)
			}
			if tc.kube && o.nodeName == "" {
				t.Error("--node-name was not defaulted")
			}
		})
	}
	p, err := parseNodePortAddresses([]string{"10.1.2.3/8", " fd00::/64"})
	if err != nil || len(p) != 2 || p[0].String() != "10.0.0.0/8" || p[1].String() != "fd00::/64" {
		t.Errorf("parseNodePortAddresses = %v, %v", p, err)
	}
}

// TestHealthCheckNodePortCountsPerFamily: a dual-stack service's health
// check answers with the endpoints of the family it is asked over, as
// kube-proxy's per-family proxiers do, so a load balancer probing the
// IPv6 address is not sent to a node with only IPv4 endpoints.
func TestHealthCheckNodePortCountsPerFamily(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	h := newHCServers("", func() bool { return true }, slog.New(slog.DiscardHandler))
	t.Cleanup(h.close)
	web := lb.ServiceName{Namespace: "default", Name: "web"}
	port := freePort(t)
	h.update(map[lb.ServiceName]k8s.HealthCheckPort{web: {Port: port, LocalEndpoints: 1, LocalEndpointsV6: 0}})
	c := http.Client{Timeout: 5 * time.Second}
	for host, want := range map[string]int{"127.0.0.1": http.StatusOK, "[::1]": http.StatusServiceUnavailable} {
		resp, err := c.Get("http://" + host + ":" + strconv.Itoa(int(port)) + "/")
		if err != nil {
			t.Fatalf("probe %s: %v", host, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("probe over %s: %d, want %d", host, resp.StatusCode, want)
		}
	}
}
