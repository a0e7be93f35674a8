package xdpbench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func f64(v float64) *float64 { return &v }
func u64(v uint64) *uint64   { return &v }

// sampleResults are a test-run and a live sweep over services.
func sampleResults() []Result {
	var rs []Result
	for i, n := range []int{1, 1000, 10000, 100000} {
		rs = append(rs,
			Result{Scenario: ScenarioNoop, Mode: ModeTestRun, Program: "weir_xdp", Services: n, Flows: 100, IP: 4, Proto: "tcp", Size: 64,
				Packets: 1000, Runs: 3, NsPerPacket: f64(20), NsPerPacketMin: f64(19), Baseline: ScenarioNoop, BaseNs: 20, Ratio: 1,
				Verdicts: map[string]int{"tx": 64}},
			Result{Scenario: ScenarioEstablished, Mode: ModeTestRun, Program: "weir_xdp", Services: n, Flows: 100, IP: 4, Proto: "tcp", Size: 64,
				Packets: 1000, Runs: 3, NsPerPacket: f64(200 + float64(i)), NsPerPacketMin: f64(190), Baseline: ScenarioNoop, BaseNs: 20, Ratio: 10},
			Result{Scenario: ScenarioEstablished, Mode: ModeLive, Program: "weir_xdp", Services: n, Flows: 100, IP: 4, Proto: "tcp", Size: 64,
				Packets: 1000, Runs: 3, PPS: f64(2e6), Drops: u64(3), Baseline: ScenarioXDPTX, BasePPS: 4e6, Ratio: 0.5},
		)
	}
	return rs
}

// TestJSONShape pins the field names of the contract.
func TestJSONShape(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, sampleResults()); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("not one JSON array: %v", err)
	}
	for _, r := range got {
		for _, k := range []string{"scenario", "mode", "services", "ip", "proto", "ratio", "flows", "size", "baseline"} {
			if _, ok := r[k]; !ok {
				t.Errorf("result lacks %q: %v", k, r)
			}
		}
		switch r["mode"] {
		case "test-run":
			if _, ok := r["ns_per_packet"]; !ok {
				t.Errorf("test-run result without ns_per_packet: %v", r)
			}
			if _, ok := r["pps"]; ok {
				t.Errorf("test-run result with pps: %v", r)
			}
		case "live":
			if _, ok := r["pps"]; !ok {
				t.Errorf("live result without pps: %v", r)
			}
			if _, ok := r["drops"]; !ok {
				t.Errorf("live result without drops: %v", r)
			}
		default:
			t.Errorf("mode %v", r["mode"])
		}
	}
	buf.Reset()
	if err := WriteJSON(&buf, nil); err != nil || strings.TrimSpace(buf.String()) != "[]" {
		t.Errorf("no results: %q, %v; want []", buf.String(), err)
	}
}

func TestCSV(t *testing.T) {
	var buf bytes.Buffer
	rs := sampleResults()
	if err := WriteCSV(&buf, rs); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(rs)+1 || !slices.Equal(rows[0], csvHeader) {
		t.Fatalf("%d rows, header %v", len(rows), rows[0])
	}
	col := func(name string) int { return slices.Index(csvHeader, name) }
	if rows[2][col("scenario")] != ScenarioEstablished || rows[2][col("ns_per_packet")] != "200" || rows[2][col("pps")] != "" {
		t.Errorf("test-run row: %v", rows[2])
	}
	if rows[3][col("pps")] != "2000000" || rows[3][col("ns_per_packet")] != "" || rows[3][col("ratio")] != "0.5" {
		t.Errorf("live row: %v", rows[3])
	}
	if rows[1][col("verdicts")] != "tx:64" {
		t.Errorf("verdicts %q", rows[1][col("verdicts")])
	}
}

func TestTable(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, sampleResults()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 13 || !strings.Contains(lines[0], "SCENARIO") || !strings.Contains(lines[3], "2.000") {
		t.Errorf("table:\n%s", buf.String())
	}
}

func TestPlotSVG(t *testing.T) {
	var buf bytes.Buffer
	if err := WritePlot(&buf, "svg", sampleResults(), PlotOptions{}); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	lines := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("invalid SVG: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	// noop and established: two ns series (the live one has no ns).
	if lines != 2 {
		t.Errorf("%d polylines, want 2", lines)
	}
	if err := WritePlot(&buf, "svg", nil, PlotOptions{}); err == nil {
		t.Error("a plot of nothing was drawn")
	}
}

func TestPlotPNG(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "live.png")
	if err := PlotFile(path, sampleResults(), PlotOptions{Y: "pps"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("invalid PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("image %v", b)
	}
	if err := PlotFile(filepath.Join(dir, "x.jpg"), sampleResults(), PlotOptions{}); err == nil {
		t.Error("a .jpg plot was accepted")
	}
	if err := PlotFile(filepath.Join(dir, "y.svg"), sampleResults(), PlotOptions{X: "flows", Y: "pps"}); err != nil {
		t.Errorf("flows axis: %v", err)
	}
}

func TestSelectScenarios(t *testing.T) {
	names := func(ss []scenario) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.name)
		}
		return out
	}
	all, err := selectScenarios(nil, ModeTestRun, true, true, true)
	if err != nil || !slices.Equal(names(all), ScenarioNames()) {
		t.Errorf("all test-run: %v, %v", names(all), err)
	}
	live, err := selectScenarios(nil, ModeLive, true, true, true)
	if err != nil || slices.Contains(names(live), ScenarioNoop) || slices.Contains(names(live), ScenarioPassNonService) ||
		slices.Contains(names(live), ScenarioSourceRangeDeny) || !slices.Contains(names(live), ScenarioXDPTX) {
		t.Errorf("all live: %v, %v", names(live), err)
	}
	// Given out of order, run in the table's order.
	two, err := selectScenarios([]string{ScenarioEstablished, ScenarioNoop}, ModeTestRun, true, true, true)
	if err != nil || !slices.Equal(names(two), []string{ScenarioNoop, ScenarioEstablished}) {
		t.Errorf("two: %v, %v", names(two), err)
	}
	if _, err := selectScenarios([]string{"bogus"}, ModeTestRun, true, true, true); err == nil {
		t.Error("unknown scenario accepted")
	}
	if _, err := selectScenarios([]string{ScenarioPassNonService}, ModeLive, true, true, true); err == nil {
		t.Error("pass-non-service accepted in live mode")
	}
	if ss, err := selectScenarios([]string{ScenarioPassNonService}, ModeLive, true, true, false); err != nil || len(ss) != 0 {
		t.Errorf("not strict: %v, %v", names(ss), err)
	}
	// Another program without Weir's maps: the packet scenarios.
	foreign, err := selectScenarios(nil, ModeTestRun, false, false, true)
	if err != nil || !slices.Equal(names(foreign), packetScenarios()) {
		t.Errorf("foreign: %v, %v", names(foreign), err)
	}
	if _, err := selectScenarios([]string{ScenarioAffinity}, ModeTestRun, false, false, true); err == nil {
		t.Error("affinity accepted for a program without Weir's maps")
	}
	if _, err := selectScenarios([]string{ScenarioPolicyStage}, ModeTestRun, true, false, true); err == nil {
		t.Error("a stage scenario accepted for a program without stages")
	}
}

func TestOptions(t *testing.T) {
	o := Options{}.withDefaults()
	if err := o.validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if o.Mode != ModeTestRun || !slices.Equal(o.Services, DefaultServices) {
		t.Errorf("defaults: %+v", o)
	}
	for _, bad := range []Options{
		{Services: []int{0}}, {Flows: []int{0}}, {IPs: []int{5}}, {Protos: []string{"sctp"}},
		{Sizes: []int{9000}}, {Object: "x.o"}, {Mode: "fast"}, {Backends: 8, TableSize: 7},
	} {
		if err := bad.withDefaults().validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestTemplate checks the offsets the harness writes at against a
// template's real fields.
func TestTemplate(t *testing.T) {
	macA, macB := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	for _, ip := range []int{4, 6} {
		for _, proto := range []uint8{protoTCP, protoUDP} {
			base := vipBase4
			if ip == 6 {
				base = vipBase6
			}
			tmpl, err := template(ip, proto, 64, base, macA, macB)
			if ip == 6 && proto == protoTCP {
				if err == nil {
					t.Errorf("a 64-byte IPv6/TCP frame was built")
				}
				tmpl, err = template(ip, proto, MinFrameSize(ip, proto), base, macA, macB)
			}
			if err != nil {
				t.Fatal(err)
			}
			lay := layoutOf(ip, proto)
			if got := tmpl[lay.srcPort+2 : lay.srcPort+4]; got[0] != 0 || got[1] != servicePort {
				t.Errorf("ipv%d/%d: destination port at %d is % x", ip, proto, lay.srcPort+2, got)
			}
			if got := addrPlus(base, 0).As16(); !bytes.Equal(tmpl[lay.dstLow:lay.dstLow+4], got[12:]) {
				t.Errorf("ipv%d/%d: VIP low bytes at %d are % x", ip, proto, lay.dstLow, tmpl[lay.dstLow:lay.dstLow+4])
			}
			client := clientNet4.Addr().As16()
			if ip == 6 {
				client = clientNet6.Addr().As16()
			}
			if !bytes.Equal(tmpl[lay.srcLow:lay.srcLow+2], client[14:]) {
				t.Errorf("ipv%d/%d: client low bytes at %d are % x", ip, proto, lay.srcLow, tmpl[lay.srcLow:lay.srcLow+2])
			}
			if isTunnel(tmpl) {
				t.Errorf("ipv%d/%d: the template passes for a tunnel packet", ip, proto)
			}
		}
	}
}
