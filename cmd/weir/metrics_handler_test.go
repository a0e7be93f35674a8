package main

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// TestMetricsHandler: /metrics answers with the same series the registry
// would have built, per-backend ones included, in text (plain and
// gzipped) and in protobuf.
func TestMetricsHandler(t *testing.T) {
	m := mustTestMaps(t)
	web4 := obsService(t, m, 1, "ns/web", "http", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:8080", "10.1.0.2:8080")
	// Two service IDs of one name and scope sharing a backend address
	// add up, in either path.
	dup := obsService(t, m, 2, "ns/web", "http", lb.ScopeExternal, "10.0.0.2", "10.1.0.1:8080")
	obsService(t, m, 3, "ns/web", "http", lb.ScopeInternal, "10.96.0.1", "10.1.0.1:8080")
	obsService(t, m, 4, "ns/web", "http", lb.ScopeExternal, "fd00::1", "[fd00:1::1]:8080")
	setPerCPU(t, m.BackendStats, uint32(web4[0]), 7, 700)
	setPerCPU(t, m.BackendStats, uint32(web4[1]), 3, 300)
	setPerCPU(t, m.BackendStats, uint32(dup[0]), 2, 20)
	setPerCPU(t, m.ServiceStats, 1, 10, 1000)

	want := gathered(t, newMapCollector(m))
	delete(want, "weir_map_scrape_duration_seconds")
	if got := want[`weir_backend_packets_total{backend="10.1.0.1:8080",scope="external",service="ns/web:http"}`]; got != 9 {
		t.Fatalf("registry path: shared backend counted %v packets, want 9", got)
	}

	reg := prometheus.NewPedanticRegistry()
	c := newMapCollector(m)
	obsMust(t, reg.Register(c))
	srv := httptest.NewServer(newMetricsHandler(reg, c))
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		name, accept string
		gzip         bool
	}{
		{"text", "text/plain;version=0.0.4", false},
		{"text-gzip", "text/plain;version=0.0.4", true},
		// What Prometheus 3 sends by default.
		{"prometheus", "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2", true},
		{"protobuf", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", srv.URL, nil)
			obsMust(t, err)
			req.Header.Set("Accept", tc.accept)
			if tc.gzip {
				req.Header.Set("Accept-Encoding", "gzip")
			} else {
				req.Header.Set("Accept-Encoding", "identity")
			}
			resp, err := srv.Client().Transport.RoundTrip(req)
			obsMust(t, err)
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var body io.Reader = resp.Body
			if tc.gzip {
				if resp.Header.Get("Content-Encoding") != "gzip" {
					t.Fatalf("Content-Encoding %q, want gzip", resp.Header.Get("Content-Encoding"))
				}
				gz, err := gzip.NewReader(resp.Body)
				obsMust(t, err)
				body = gz
			}
			format := expfmt.ResponseFormat(resp.Header)
			if tc.name == "protobuf" && format.FormatType() != expfmt.TypeProtoDelim {
				t.Fatalf("format %q, want delimited protobuf", format)
			}
			dec := expfmt.NewDecoder(body, format)
			var mfs []*dto.MetricFamily
			seen := map[string]bool{}
			for {
				mf := &dto.MetricFamily{}
				err := dec.Decode(mf)
				if errors.Is(err, io.EOF) {
					break
				}
				obsMust(t, err)
				if seen[mf.GetName()] {
					t.Errorf("family %s written twice", mf.GetName())
				}
				seen[mf.GetName()] = true
				mfs = append(mfs, mf)
			}
			got := seriesOf(mfs)
			for series, v := range want {
				if g, ok := got[series]; !ok {
					t.Errorf("missing %s", series)
				} else if g != v {
					t.Errorf("%s = %v, want %v", series, g, v)
				}
			}
			for series := range got {
				if _, ok := want[series]; !ok && strings.HasPrefix(series, "weir_") && !strings.HasPrefix(series, "weir_map_scrape_duration") {
					t.Errorf("unexpected %s", series)
				}
			}
		})
	}
}

func TestAppendLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		`ns/web:http`:  `ns/web:http`,
		`a"b`:          `a\"b`,
		`a\b`:          `a\\b`,
		"line\nbreak":  `line\nbreak`,
		`[fd00::1]:80`: `[fd00::1]:80`,
	} {
		if got := string(appendLabelValue(nil, in)); got != want {
			t.Errorf("appendLabelValue(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkMetricsScrape serves /metrics for 10k services x 10 backends,
// the allocations of one scrape included (the agent's transient heap).
func BenchmarkMetricsScrape(b *testing.B) {
	sizes := testMapSizes
	sizes.Services, sizes.Frontends, sizes.Backends = 1<<15, 1<<15, 1<<17
	m, err := bpf.OpenMaps(testutil.BPFRoot(b), sizes)
	obsMust(b, err)
	b.Cleanup(func() { m.Close() })
	dp := bpf.NewDatapath(m)
	for s := 1; s <= 10000; s++ {
		id := lb.ServiceID(s)
		obsMust(b, dp.UpsertFrontend(lb.FrontendID(id), lb.FrontendEntry{
			ServiceID: id, Addr: netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)}), Port: 80, Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindEdgeVIP, Service: fmt.Sprintf("scale/s%d", s), PortName: "http",
		}))
		for i := range 10 {
			bid := lb.BackendID(s*10 + i)
			obsMust(b, dp.UpsertBackend(bid, lb.BackendEntry{ServiceID: id,
				Addr: netip.AddrFrom4([4]byte{10, byte(s >> 8), byte(s), byte(i + 1)}), Port: 8080, Weight: 1}))
		}
	}
	reg := prometheus.NewRegistry()
	c := newMapCollector(m)
	obsMust(b, reg.Register(c))
	h := newMetricsHandler(reg, c)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("GET", "/metrics", nil)
		req.Header.Set("Accept", "text/plain;version=0.0.4")
		w := &countingWriter{header: http.Header{}, code: 200}
		h.ServeHTTP(w, req)
		if w.code != 200 {
			b.Fatalf("status %d", w.code)
		}
		b.SetBytes(w.n)
	}
}

// countingWriter is a ResponseWriter that keeps only the byte count, so
// a benchmark's allocations are the handler's.
type countingWriter struct {
	header http.Header
	code   int
	n      int64
}

func (w *countingWriter) Header() http.Header  { return w.header }
func (w *countingWriter) WriteHeader(code int) { w.code = code }
func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// blockedWriter is a client that stops reading: its writes never return
// until released.
type blockedWriter struct {
	countingWriter
	release chan struct{}
	writing chan struct{}
	once    sync.Once
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.writing) })
	<-w.release
	return len(p), nil
}

// TestMetricsHandlerStuckClient: a scrape whose client stopped reading
// holds up no other scrape.
func TestMetricsHandlerStuckClient(t *testing.T) {
	m := mustTestMaps(t)
	obsService(t, m, 1, "ns/web", "http", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:8080")
	reg := prometheus.NewRegistry()
	c := newMapCollector(m)
	obsMust(t, reg.Register(c))
	h := newMetricsHandler(reg, c)
	req := func() *http.Request {
		r := httptest.NewRequest("GET", "/metrics", nil)
		r.Header.Set("Accept", "text/plain;version=0.0.4")
		return r
	}

	stuck := &blockedWriter{countingWriter: countingWriter{header: http.Header{}}, release: make(chan struct{}), writing: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(stuck, req())
	}()
	t.Cleanup(func() { close(stuck.release); <-done })
	<-stuck.writing

	second := make(chan *countingWriter)
	go func() {
		w := &countingWriter{header: http.Header{}, code: 200}
		h.ServeHTTP(w, req())
		second <- w
	}()
	select {
	case w := <-second:
		if w.code != 200 || w.n == 0 {
			t.Fatalf("second scrape: status %d, %d bytes", w.code, w.n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a scrape waited for another whose client stopped reading")
	}
}
