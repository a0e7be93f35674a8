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
	// Unlike promhttp's default (a 500), what was gathered is served when
	// a collector failed: weir_map_read_errors names the map that
	// couldn't be read.
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

// counterFamily is a family of counters over the rows of a snapshot.
// label appends row i's value of labels[j] (sorted by name) to b, its
// strings through str (which escapes them for the text format); value
// is row i's count. Labels are appended rather than returned so that a
// backend's address is formatted into the line, not held as one of 100k
// strings.
type counterFamily struct {
	name, help string
	labels     []string
	rows       int
	label      func(b []byte, i, j int, str func([]byte, string) []byte) []byte
	value      func(i int) uint64
}

// counterFamilies are the four families the map collector leaves to
// metricsHandler.
func counterFamilies(s *statsSnapshot) []counterFamily {
	svcLabel := func(b []byte, i, j int, str func([]byte, string) []byte) []byte {
		if j == 0 {
			return str(b, s.Services[i].Scope)
		}
		return str(b, s.Services[i].Service)
	}
	beLabel := func(b []byte, i, j int, str func([]byte, string) []byte) []byte {
		c := &s.backends[i]
		switch j {
		case 0:
			return c.addrPort().AppendTo(b) // nothing to escape
		case 1:
			return str(b, s.backendNames[c.name].Scope)
		}
		return str(b, s.backendNames[c.name].Name)
	}
	svcLabels, beLabels := []string{"scope", "service"}, []string{"backend", "scope", "service"}
	return []counterFamily{
		{svcBytesName, svcBytesHelp, svcLabels, len(s.Services), svcLabel, func(i int) uint64 { return s.Services[i].Bytes }},
		{svcPacketsName, svcPacketsHelp, svcLabels, len(s.Services), svcLabel, func(i int) uint64 { return s.Services[i].Packets }},
		{beBytesName, beBytesHelp, beLabels, len(s.backends), beLabel, func(i int) uint64 { return s.backends[i].bytes }},
		{bePacketsName, bePacketsHelp, beLabels, len(s.backends), beLabel, func(i int) uint64 { return s.backends[i].packets }},
	}
}

// writeText writes the family in the text exposition format, as expfmt
// would.
func (f counterFamily) writeText(w *bufio.Writer) error {
	if _, err := fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", f.name, escapeHelp(f.help), f.name); err != nil {
		return err
	}
	var line []byte
	for i := range f.rows {
		line = append(line[:0], f.name...)
		for j, l := range f.labels {
			if j == 0 {
				line = append(line, '{')
			} else {
				line = append(line, ',')
			}
			line = append(line, l...)
			line = append(line, `="`...)
			line = f.label(line, i, j, appendLabelValue)
			line = append(line, '"')
		}
		line = append(line, "} "...)
		line = strconv.AppendUint(line, f.value(i), 10)
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

// message builds the family as a protobuf message, for clients that
// negotiated a format other than text (which alone escapes label
// values).
func (f counterFamily) message() *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: proto.String(f.name), Help: proto.String(f.help), Type: dto.MetricType_COUNTER.Enum(),
		Metric: make([]*dto.Metric, f.rows)}
	for i := range f.rows {
		m := &dto.Metric{Counter: &dto.Counter{Value: proto.Float64(float64(f.value(i)))}}
		for j, l := range f.labels {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(l), Value: proto.String(string(f.label(nil, i, j, appendRaw)))})
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

func appendRaw(b []byte, v string) []byte { return append(b, v...) }

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}
