package xdpbench

import (
	"fmt"
	"io"
	"slices"
)

// Mode is how packets reach the program.
type Mode string

const (
	// ModeTestRun runs the program with BPF_PROG_TEST_RUN: ns per packet.
	ModeTestRun Mode = "test-run"
	// ModeLive attaches the program to a veth and drives it with the
	// live-frames generator: packets per second at a sink.
	ModeLive Mode = "live"
	// ModeBoth runs test-run, then live.
	ModeBoth Mode = "both"
)

// ParseMode accepts test-run, live or both.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeTestRun, ModeLive, ModeBoth:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q (want test-run, live or both)", s)
}

func (m Mode) modes() []Mode {
	if m == ModeBoth {
		return []Mode{ModeTestRun, ModeLive}
	}
	return []Mode{m}
}

// Options configure Run. Zero fields take the defaults below.
type Options struct {
	Mode Mode
	// Scenarios narrows the run to these names (ScenarioNames); empty
	// runs every scenario the mode and the program allow.
	Scenarios []string
	// Services are the service counts swept (default 1, 1000, 10000,
	// 100000). The maps are sized for the largest.
	Services []int
	// Flows are the flow counts of the scenarios that cycle through
	// established flows (default 10000): flow f goes to service f mod N.
	// New-flow scenarios make every packet a new flow regardless.
	Flows []int
	// Sizes are frame sizes in bytes, Ethernet header included (default
	// 64). A size below a family's headers is raised to them.
	Sizes []int
	// IPs are the families, 4 and/or 6 (default both).
	IPs []int
	// Protos are tcp and/or udp (default both).
	Protos []string
	// Backends per service (default 4) and Maglev table slots per
	// service (default 251, a prime; the table's size doesn't change the
	// per-packet work, one array read, and 100k tables of the external
	// default 16381 would take 6.5 GB).
	Backends  int
	TableSize int
	// Packets per measurement: test-run default 1,000,000; live default
	// 2,000,000.
	Packets     int
	LivePackets int
	// Runs per measurement (default 3), alternated with the baseline's
	// runs; the median counts.
	Runs int
	// BatchSize is the live-frames batch (default 64, the kernel's).
	BatchSize int
	// Object and Program name another XDP object file and the program in
	// it to benchmark instead of Weir's weir_xdp.
	Object, Program string
	// Progress receives one line per step (nil: none).
	Progress io.Writer
}

// Defaults.
var (
	DefaultServices = []int{1, 1000, 10000, 100000}
	DefaultFlows    = []int{10000}
	DefaultSizes    = []int{64}
	DefaultIPs      = []int{4, 6}
	DefaultProtos   = []string{"tcp", "udp"}
)

const (
	DefaultBackends    = 4
	DefaultTableSize   = 251
	DefaultPackets     = 1_000_000
	DefaultLivePackets = 2_000_000
	DefaultRuns        = 3
	DefaultBatchSize   = 64
	// MaxServices bounds --services: VIPs are drawn from a /9.
	MaxServices = 1 << 22
	// maxFlows bounds --flows (the harness's modulo is a 32-bit
	// immediate; beyond a few million the warm-up dominates anyway).
	maxFlows = 1 << 24
)

func (o Options) withDefaults() Options {
	if o.Mode == "" {
		o.Mode = ModeTestRun
	}
	def := func(v []int, d []int) []int {
		if len(v) == 0 {
			return slices.Clone(d)
		}
		return v
	}
	o.Services = def(o.Services, DefaultServices)
	o.Flows = def(o.Flows, DefaultFlows)
	o.Sizes = def(o.Sizes, DefaultSizes)
	o.IPs = def(o.IPs, DefaultIPs)
	if len(o.Protos) == 0 {
		o.Protos = slices.Clone(DefaultProtos)
	}
	if o.Backends == 0 {
		o.Backends = DefaultBackends
	}
	if o.TableSize == 0 {
		o.TableSize = DefaultTableSize
	}
	if o.Packets == 0 {
		o.Packets = DefaultPackets
	}
	if o.LivePackets == 0 {
		o.LivePackets = DefaultLivePackets
	}
	if o.Runs == 0 {
		o.Runs = DefaultRuns
	}
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	return o
}

func (o Options) validate() error {
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return err
	}
	for _, n := range o.Services {
		if n < 1 || n > MaxServices {
			return fmt.Errorf("services %d out of range (1 to %d)", n, MaxServices)
		}
	}
	for _, n := range o.Flows {
		if n < 1 || n > maxFlows {
			return fmt.Errorf("flows %d out of range (1 to %d)", n, maxFlows)
		}
	}
	for _, n := range o.Sizes {
		if n < 14 || n > MaxFrameSize {
			return fmt.Errorf("frame size %d out of range (up to %d bytes; sizes below a family's headers are raised to them)", n, MaxFrameSize)
		}
	}
	for _, ip := range o.IPs {
		if ip != 4 && ip != 6 {
			return fmt.Errorf("ip %d: want 4 or 6", ip)
		}
	}
	for _, p := range o.Protos {
		if _, err := parseProto(p); err != nil {
			return err
		}
	}
	if o.Backends < 1 || o.Backends > 1024 {
		return fmt.Errorf("backends %d out of range (1 to 1024 per service)", o.Backends)
	}
	if o.TableSize < o.Backends || o.TableSize > 65537 {
		return fmt.Errorf("table size %d out of range (at least the %d backends, at most 65537)", o.TableSize, o.Backends)
	}
	if o.Packets < 1 || o.LivePackets < 1 || o.Runs < 1 {
		return fmt.Errorf("packets (%d, live %d) and runs (%d) must be positive", o.Packets, o.LivePackets, o.Runs)
	}
	if o.BatchSize < 1 || o.BatchSize > 256 {
		return fmt.Errorf("batch size %d out of range (1 to 256, the kernel's limit)", o.BatchSize)
	}
	if (o.Object == "") != (o.Program == "") {
		return fmt.Errorf("--object and --program go together: the object file and the XDP program in it")
	}
	return nil
}
