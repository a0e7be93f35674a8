package xdpbench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Result is one measurement. The JSON names are a contract: scripts and
// plots read them.
type Result struct {
	Scenario string `json:"scenario"`
	Mode     Mode   `json:"mode"`
	// Program is what was measured: "weir_xdp", or FILE:NAME.
	Program  string `json:"program"`
	Services int    `json:"services"`
	// Flows is the number of flows cycled through; 0 means a new flow
	// per packet.
	Flows int    `json:"flows"`
	IP    int    `json:"ip"`
	Proto string `json:"proto"`
	// Size is the frame size in bytes (Ethernet header included).
	Size int `json:"size"`
	// Packets per run, and Runs (the median counts).
	Packets int `json:"packets"`
	Runs    int `json:"runs"`

	// Test-run: the kernel's ns per packet, median and best run.
	NsPerPacket    *float64 `json:"ns_per_packet,omitempty"`
	NsPerPacketMin *float64 `json:"ns_per_packet_min,omitempty"`
	// Live: frames received at the sink per second of the generator
	// CPU's time (median run; the whole path runs on that CPU, see
	// live.go), the same per second of wall time, and frames the
	// generator sent that never reached the sink (median run).
	PPS     *float64 `json:"pps,omitempty"`
	WallPPS *float64 `json:"pps_wall,omitempty"`
	Drops   *uint64  `json:"drops,omitempty"`

	// Baseline is the scenario the ratio divides by, measured in the
	// same run, alternating with this one: noop (test-run) or xdp-tx
	// (live, a plain XDP_TX hairpin).
	Baseline string  `json:"baseline"`
	BaseNs   float64 `json:"baseline_ns_per_packet,omitempty"`
	BasePPS  float64 `json:"baseline_pps,omitempty"`
	// Ratio is ns_per_packet / baseline (test-run: the cost relative to
	// doing nothing) or pps / baseline (live: the speed relative to a
	// plain hairpin).
	Ratio float64 `json:"ratio"`
	// Verdicts are the program's answers to a sample of single packets
	// (test-run), by name.
	Verdicts map[string]int `json:"verdicts,omitempty"`
}

// Value is the result's figure: ns per packet (test-run) or pps (live).
func (r Result) Value() float64 {
	if r.NsPerPacket != nil {
		return *r.NsPerPacket
	}
	if r.PPS != nil {
		return *r.PPS
	}
	return 0
}

// WriteJSON writes results as one indented JSON array.
func WriteJSON(w io.Writer, results []Result) error {
	if results == nil {
		results = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// ReadJSON reads results written by WriteJSON.
func ReadJSON(r io.Reader) ([]Result, error) {
	var rs []Result
	if err := json.NewDecoder(r).Decode(&rs); err != nil {
		return nil, fmt.Errorf("read benchmark results: %w (want the JSON array of `weir bench xdp --json`)", err)
	}
	return rs, nil
}

// csvHeader are the CSV columns, named as the JSON fields.
var csvHeader = []string{"scenario", "mode", "program", "services", "flows", "ip", "proto", "size", "packets", "runs",
	"ns_per_packet", "ns_per_packet_min", "pps", "pps_wall", "drops", "baseline", "baseline_ns_per_packet", "baseline_pps", "ratio", "verdicts"}

// WriteCSV writes results with a header row; absent figures are empty.
func WriteCSV(w io.Writer, results []Result) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	for _, r := range results {
		if err := cw.Write([]string{
			r.Scenario, string(r.Mode), r.Program, strconv.Itoa(r.Services), strconv.Itoa(r.Flows), strconv.Itoa(r.IP),
			r.Proto, strconv.Itoa(r.Size), strconv.Itoa(r.Packets), strconv.Itoa(r.Runs),
			optFloat(r.NsPerPacket), optFloat(r.NsPerPacketMin), optFloat(r.PPS), optFloat(r.WallPPS), optUint(r.Drops),
			r.Baseline, floatOrEmpty(r.BaseNs), floatOrEmpty(r.BasePPS), fmtFloat(r.Ratio), verdictString(r.Verdicts),
		}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteTable writes results as an aligned table for people.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "MODE\tSCENARIO\tIP\tPROTO\tSIZE\tSERVICES\tFLOWS\tNS/PKT\tMPPS/CPU\tMPPS WALL\tLOST\tBASELINE\tRATIO\tVERDICTS\t")
	for _, r := range results {
		ns, mpps, wall, drops := "-", "-", "-", "-"
		if r.NsPerPacket != nil {
			ns = strconv.FormatFloat(*r.NsPerPacket, 'f', 1, 64)
		}
		if r.PPS != nil {
			mpps = strconv.FormatFloat(*r.PPS/1e6, 'f', 3, 64)
		}
		if r.WallPPS != nil {
			wall = strconv.FormatFloat(*r.WallPPS/1e6, 'f', 3, 64)
		}
		if r.Drops != nil {
			drops = strconv.FormatUint(*r.Drops, 10)
		}
		flows := strconv.Itoa(r.Flows)
		if r.Flows == 0 {
			flows = "new"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t\n",
			r.Mode, r.Scenario, r.IP, r.Proto, r.Size, r.Services, flows, ns, mpps, wall, drops, r.Baseline, r.Ratio, verdictString(r.Verdicts))
	}
	return tw.Flush()
}

func verdictString(v map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(v)) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, v[k]))
	}
	return strings.Join(parts, " ")
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func floatOrEmpty(f float64) string {
	if f == 0 {
		return ""
	}
	return fmtFloat(f)
}

func optFloat(f *float64) string {
	if f == nil {
		return ""
	}
	return fmtFloat(*f)
}

func optUint(u *uint64) string {
	if u == nil {
		return ""
	}
	return strconv.FormatUint(*u, 10)
}
