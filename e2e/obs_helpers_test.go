package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/topo"
)

// Helpers of the observability tests (metrics, weir observe, inspect,
// the dashboard).

// udpDatagram is what sendUDP sends: 3 bytes, so a datagram is a
// 45-byte IPv4 frame (14 Ethernet + 20 IP + 8 UDP + 3).
const (
	udpDatagram      = "who"
	udpFrameBytesV4  = 14 + 20 + 8 + float64(len(udpDatagram))
	obsClientPortMin = 30000
)

// sendUDP sends one datagram to dst from each of the client's source
// ports, each from its own socket. With wantReply it waits for every
// answer and returns how many came from each backend (by name).
func (l *lab) sendUDP(dst netip.AddrPort, ports []int, wantReply bool) map[string]int {
	l.t.Helper()
	got := map[string]int{}
	err := l.client.Do(func() error {
		for _, p := range ports {
			conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: p})
			if err != nil {
				return fmt.Errorf("bind port %d: %w", p, err)
			}
			_, err = conn.WriteToUDPAddrPort([]byte(udpDatagram), dst)
			if err == nil && wantReply {
				_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 64)
				var n int
				if n, _, err = conn.ReadFromUDPAddrPort(buf); err == nil {
					got[string(buf[:n])]++
				}
			}
			conn.Close()
			if err != nil {
				return fmt.Errorf("datagram from port %d to %s: %w", p, dst, err)
			}
		}
		return nil
	})
	must(l.t, err)
	return got
}

// portRange returns n consecutive ports from first.
func portRange(first, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = first + i
	}
	return out
}

// scrape fetches the LB agent's /metrics (startLB serves it on
// 127.0.0.1:9963 in the LB's namespace) as series -> value, a series
// written as in the text format: name{label="value",...}.
func (l *lab) scrape() map[string]float64 {
	l.t.Helper()
	var body string
	err := l.lb.Do(func() error {
		code, b, err := httpGet("127.0.0.1:9963", "/metrics", 5*time.Second)
		if err == nil && code != 200 {
			err = fmt.Errorf("/metrics: %d %s", code, b)
		}
		body = b
		return err
	})
	must(l.t, err)
	series, err := parseMetrics(body)
	must(l.t, err)
	return series
}

// parseMetrics parses the Prometheus text format's sample lines.
func parseMetrics(body string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics line %q has no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// metricNames returns the metric names of a scrape's series.
func metricNames(series map[string]float64) map[string]bool {
	names := map[string]bool{}
	for s := range series {
		name, _, _ := strings.Cut(s, "{")
		names[name] = true
	}
	return names
}

// wantMetric checks one series' value.
func wantMetric(t *testing.T, series map[string]float64, name string, want float64) {
	t.Helper()
	got, ok := series[name]
	switch {
	case !ok:
		var similar []string
		base, _, _ := strings.Cut(name, "{")
		for s := range series {
			if strings.HasPrefix(s, base) {
				similar = append(similar, s)
			}
		}
		sort.Strings(similar)
		t.Errorf("no series %s; have %v", name, similar)
	case got != want:
		t.Errorf("%s = %v, want %v", name, got, want)
	}
}

// weir runs the weir binary in the LB's namespace (so ifindexes resolve
// to its devices) and returns its stdout.
func (l *lab) weir(args ...string) string {
	l.t.Helper()
	cmd := l.lb.Command(l.bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		l.t.Fatalf("weir %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// observer is a `weir observe` running in the LB's namespace.
type observer struct {
	cmd    *exec.Cmd
	done   chan struct{}
	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
}

// lockedWriter lets the test read the output while the process writes.
type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startObserve starts `weir observe -o json` against the LB's maps with
// the extra args; the test ends it (by PID) if it is still running.
func (l *lab) startObserve(args ...string) *observer {
	l.t.Helper()
	o := &observer{done: make(chan struct{})}
	all := append([]string{"observe", "-o", "json", "--bpf-root", l.bpfRoot("lb")}, args...)
	o.cmd = l.lb.Command(l.bin, all...)
	o.cmd.Stdout = lockedWriter{&o.mu, &o.stdout}
	o.cmd.Stderr = lockedWriter{&o.mu, &o.stderr}
	must(l.t, o.cmd.Start())
	go func() {
		_ = o.cmd.Wait()
		close(o.done)
	}()
	l.t.Cleanup(func() {
		select {
		case <-o.done:
		default:
			_ = o.cmd.Process.Signal(syscall.SIGTERM)
			<-o.done
		}
	})
	return o
}

// obsEvent is the documented JSON of one `weir observe -o json` line.
type obsEvent struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Reason  string    `json:"reason"`
	Proto   string    `json:"proto"`
	Src     string    `json:"src"`
	Dst     string    `json:"dst"`
	Device  string    `json:"device"`
	Service string    `json:"service"`
	Backend string    `json:"backend"`
	Lost    uint64    `json:"lost"`
}

// events parses what the observer printed so far.
func (o *observer) events(t *testing.T) []obsEvent {
	t.Helper()
	o.mu.Lock()
	out := o.stdout.String()
	o.mu.Unlock()
	var evs []obsEvent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e obsEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("observe printed %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

// wait waits for the observer to exit on its own (--count or --timeout).
func (o *observer) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(timeout):
		t.Fatalf("weir observe still running after %s", timeout)
	}
	if code := o.cmd.ProcessState.ExitCode(); code != 0 {
		o.mu.Lock()
		defer o.mu.Unlock()
		t.Fatalf("weir observe exited %d: %s", code, o.stderr.String())
	}
}

// addVeth adds a veth pair with both ends in h, up.
func addVeth(t *testing.T, h *topo.Host, a, b string) {
	t.Helper()
	out, err := h.Run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, n := range []string{a, b} {
		if out, err := h.Run("ip", "link", "set", n, "up"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
}

// dashboardPath is the Grafana dashboard shipped in deploy/.
const dashboardPath = "../deploy/grafana/weir.json"

// dashboardQueries returns every PromQL expression of the dashboard:
// the panels' targets (nested rows included) and the template variables'
// queries. It fails the test on invalid JSON.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	must(t, err)
	var d struct {
		Title      string            `json:"title"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}
	if d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no title or no panels", dashboardPath)
	}
	var exprs []string
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		var p struct {
			Title   string            `json:"title"`
			Type    string            `json:"type"`
			Panels  []json.RawMessage `json:"panels"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		}
		must(t, json.Unmarshal(raw, &p))
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
		for _, sub := range p.Panels {
			walk(sub)
		}
	}
	for _, p := range d.Panels {
		walk(p)
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // the older form: a plain string
		}
		if e := variableExpr(q.Query); e != "" {
			exprs = append(exprs, e)
		}
	}
	return exprs
}

var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*\w+\s*\)\s*$`)

// variableExpr is the PromQL inside a template variable's query:
// label_values(EXPR, label) reads EXPR; label_values(label) reads none.
func variableExpr(q string) string {
	if m := labelValues.FindStringSubmatch(q); m != nil {
		return m[1]
	}
	if strings.HasPrefix(strings.TrimSpace(q), "label_values(") {
		return ""
	}
	return q
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promVariables = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords  = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// promqlMetrics returns the metric names a PromQL expression (with
// Grafana variables) reads: identifiers that are not functions (followed
// by a parenthesis), keywords, label names or label values.
func promqlMetrics(expr string) []string {
	e := promStrings.ReplaceAllString(expr, " ")
	e = promVariables.ReplaceAllString(e, " ")
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		id := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if promKeywords[id] || strings.HasPrefix(rest, "(") {
			continue
		}
		// A number's exponent (1e3) or a duration (5m) is not a name.
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue
		}
		names = append(names, id)
	}
	return names
}

// obsConfig is an edge config of UDP services on the lab's VIPs: dns on
// 10.202.100.1:5353 (the backends' UDP servers) and blocked on
// 10.202.100.2:5353, whose source ranges exclude the client.
func obsConfig(l *lab, extra string) string {
	var b strings.Builder
	b.WriteString("services:\n  - name: dns\n    vip: 10.202.100.1\n    port: 5353\n    protocol: UDP\n    mode: dsr\n    backends:\n")
	for i := range l.backends {
		fmt.Fprintf(&b, "      - {address: %s, port: 5353}\n", backendAddr(i, false))
	}
	b.WriteString("  - name: blocked\n    vip: 10.202.100.2\n    port: 5353\n    protocol: UDP\n    mode: dsr\n" +
		"    source_ranges: [192.0.2.0/24]\n    backends:\n")
	fmt.Fprintf(&b, "      - {address: %s, port: 5353}\n", backendAddr(0, false))
	b.WriteString(extra)
	return b.String()
}

var (
	dnsVIP     = netip.MustParseAddrPort("10.202.100.1:5353")
	blockedVIP = netip.MustParseAddrPort("10.202.100.2:5353")
)
