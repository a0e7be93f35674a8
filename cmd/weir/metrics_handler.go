package main

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
)

// metricsHandler serves /metrics: the registry's families, then the
// per-service and per-backend counters written straight from the map
// collector's snapshot. A node with 10k services of 10 endpoints has
// 220k such series; built as client_golang metrics (a message, a counter
// and label pairs per series, and the registry's checks over all of
// them) one scrape grew the agent's resident memory by ~120 MiB, which
// the Go heap then kept. Written as text they take a line buffer.
// Clients that negotiate protobuf get them built as messages, as the
// registry would have.
//
// Scrapes gather one at a time (the collector hands its snapshot over in
// a field), and write their answers concurrently: a client that stops
// reading holds up no other.
type metricsHandler struct {
	reg  prometheus.Gatherer
	maps *mapCollector // nil: the registry has everything
	mu   sync.Mutex
}

// newMetricsHandler serves reg, in which maps (when not nil) is
// registered; maps then leaves its per-service and per-backend series to
// the handler.
func newMetricsHandler(reg prometheus.Gatherer, maps *mapCollector) *metricsHandler {
	if maps != nil {
		maps.streamCounters = true
	}
	return &metricsHandler{reg: reg, maps: maps}
}

// gather gathers the registry and takes the collector's snapshot.
func (h *metricsHandler) gather() ([]*dto.MetricFamily, *statsSnapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	mfs, err := h.reg.Gather()
	var snap *statsSnapshot
	if h.maps != nil {
		snap, h.maps.streamed = h.maps.streamed, nil
	}
	return mfs, snap, err
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mfs, snap, err := h.gather()
	if err != nil && len(mfs) == 0 {
		http.Error(w, "gathering metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	// As promhttp with its default ContinueOnError-free options would not:
	// what was gathered is served even when a collector failed; the
	// map collector says which map it couldn't read in
	// weir_map_read_errors.
	format := expfmt.Negotiate(r.Header)
	w.Header().Set("Content-Type", string(format))
	var out io.Writer = w
	if acceptsGzip(r.Header) {
		w.Header().Set("Content-Encoding", "gzip")
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = gz
	}
	bw := bufio.NewWriterSize(out, 64<<10)
	defer bw.Flush()
	enc := expfmt.NewEncoder(bw, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return // the client went away
		}
	}
	if snap == nil {
		return
	}
	text := format.FormatType() == expfmt.TypeTextPlain
	for _, f := range counterFamilies(snap) {
		if text {
			if err := f.writeText(bw); err != nil {
				return
			}
		} else if err := enc.Encode(f.message()); err != nil {
			return
		}
	}
	for _, f := range backendFamilies() {
		if text {
			if err := f.writeText(bw, snap); err != nil {
				return
			}
		} else if err := enc.Encode(f.message(snap)); err != nil {
			return
		}
	}
}

func acceptsGzip(h http.Header) bool {
	for _, part := range strings.Split(h.Get("Accept-Encoding"), ",") {
		enc, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(enc, "gzip") {
			return true
		}
	}
	return false
}

// counterFamily is a family of counters over the rows of a snapshot:
// series appends row i's label values (in the order of labels, sorted
// by name) to values and returns them and the row's value.
type counterFamily struct {
	name, help string
	labels     []string
	rows       int
	series     func(i int, values []string) ([]string, uint64)
}

// counterFamilies are the four families the map collector leaves to
// metricsHandler.
func counterFamilies(s *statsSnapshot) []counterFamily {
	svc := func(v func(*serviceStats) uint64) func(int, []string) ([]string, uint64) {
		return func(i int, vals []string) ([]string, uint64) {
			st := &s.Services[i]
			return append(vals, st.Scope, st.Service), v(st)
		}
	}
	svcLabels := []string{"scope", "service"}
	return []counterFamily{
		{svcBytesName, svcBytesHelp, svcLabels, len(s.Services), svc(func(st *serviceStats) uint64 { return st.Bytes })},
		{svcPacketsName, svcPacketsHelp, svcLabels, len(s.Services), svc(func(st *serviceStats) uint64 { return st.Packets })},
	}
}

// backendFamily is a per-backend family: it formats each backend's
// address as it writes it rather than holding 100k strings.
type backendFamily struct {
	name, help string
	value      func(*backendCounter) uint64
}

func backendFamilies() []backendFamily {
	return []backendFamily{
		{beBytesName, beBytesHelp, func(c *backendCounter) uint64 { return c.bytes }},
		{bePacketsName, bePacketsHelp, func(c *backendCounter) uint64 { return c.packets }},
	}
}

func writeFamilyHeader(w *bufio.Writer, name, help string) error {
	_, err := fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", name, escapeHelp(help), name)
	return err
}

// writeText writes the family in the text exposition format, as expfmt
// would.
func (f counterFamily) writeText(w *bufio.Writer) error {
	if err := writeFamilyHeader(w, f.name, f.help); err != nil {
		return err
	}
	var line []byte
	vals := make([]string, 0, len(f.labels))
	for i := range f.rows {
		var v uint64
		vals, v = f.series(i, vals[:0])
		line = append(line[:0], f.name...)
		for j, l := range f.labels {
			line = appendLabel(line, j == 0, l, vals[j])
		}
		line = appendValue(line, v)
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

func (f backendFamily) writeText(w *bufio.Writer, s *statsSnapshot) error {
	if err := writeFamilyHeader(w, f.name, f.help); err != nil {
		return err
	}
	var line []byte
	for i := range s.backends {
		c := &s.backends[i]
		n := s.backendNames[c.name]
		line = append(line[:0], f.name...)
		line = append(line, `{backend="`...)
		line = c.addrPort().AppendTo(line) // nothing to escape
		line = append(line, '"')
		line = appendLabel(line, false, "scope", n.Scope)
		line = appendLabel(line, false, "service", n.Name)
		line = appendValue(line, f.value(c))
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

// message builds the family as a protobuf message, for clients that
// negotiated a format other than text.
func (f backendFamily) message(s *statsSnapshot) *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: proto.String(f.name), Help: proto.String(f.help), Type: dto.MetricType_COUNTER.Enum(),
		Metric: make([]*dto.Metric, len(s.backends))}
	for i := range s.backends {
		c := &s.backends[i]
		n := s.backendNames[c.name]
		mf.Metric[i] = &dto.Metric{
			Label: []*dto.LabelPair{
				{Name: proto.String("backend"), Value: proto.String(c.addrPort().String())},
				{Name: proto.String("scope"), Value: proto.String(n.Scope)},
				{Name: proto.String("service"), Value: proto.String(n.Name)},
			},
			Counter: &dto.Counter{Value: proto.Float64(float64(f.value(c)))},
		}
	}
	return mf
}

func appendLabel(line []byte, first bool, name, value string) []byte {
	if first {
		line = append(line, '{')
	} else {
		line = append(line, ',')
	}
	line = append(line, name...)
	line = append(line, `="`...)
	line = appendLabelValue(line, value)
	return append(line, '"')
}

func appendValue(line []byte, v uint64) []byte {
	line = append(line, "} "...)
	line = strconv.AppendUint(line, v, 10)
	return append(line, '\n')
}

// message builds the family as a protobuf message, for clients that
// negotiated a format other than text.
func (f counterFamily) message() *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: proto.String(f.name), Help: proto.String(f.help), Type: dto.MetricType_COUNTER.Enum(),
		Metric: make([]*dto.Metric, f.rows)}
	for i := range f.rows {
		vals, v := f.series(i, nil)
		m := &dto.Metric{Counter: &dto.Counter{Value: proto.Float64(float64(v))}}
		for j, l := range f.labels {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(l), Value: proto.String(vals[j])})
		}
		mf.Metric[i] = m
	}
	return mf
}

// appendLabelValue escapes a label value as the text format requires.
func appendLabelValue(b []byte, v string) []byte {
	if !strings.ContainsAny(v, "\\\"\n") {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, v[i])
		}
	}
	return b
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}
