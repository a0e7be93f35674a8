package xdpbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Generator and Sink are the live-mode machinery for other benchmarks
// (`weir bench kube-proxy` drives a NodePort with them): the harness as
// a live-frames generator sending one host's flows to one destination,
// and a counting XDP sink.

// GeneratorConfig describes a generator's frames.
type GeneratorConfig struct {
	// Proto is "tcp" or "udp" (default udp). Size is the frame size
	// (default: the headers only). IPv4 only.
	Proto string
	Size  int
	// SrcMAC and DstMAC: the sending device's and the next hop's.
	SrcMAC, DstMAC net.HardwareAddr
	// Src is the client; its port cycles over Flows flows (1 to 65536).
	Src   netip.Addr
	Dst   netip.AddrPort
	Flows int
	// BatchSize is the live-frames batch (default 64).
	BatchSize int
}

// Generator sends frames with BPF_F_TEST_XDP_LIVE_FRAMES. Frames carry
// a valid IPv4 header checksum and no UDP checksum, so a kernel stack
// forwards them (a TCP checksum is not maintained).
type Generator struct {
	cfg  GeneratorConfig
	tmpl []byte
	prog *ebpf.Program
	closer
}

// NewGenerator loads a generator.
func NewGenerator(cfg GeneratorConfig) (_ *Generator, err error) {
	if cfg.Proto == "" {
		cfg.Proto = "udp"
	}
	proto, err := parseProto(cfg.Proto)
	if err != nil {
		return nil, err
	}
	if !cfg.Src.Is4() || !cfg.Dst.Addr().Is4() {
		return nil, fmt.Errorf("generator: %s -> %s: IPv4 addresses only", cfg.Src, cfg.Dst)
	}
	if cfg.Flows < 1 || cfg.Flows > 1<<16 {
		return nil, fmt.Errorf("generator: %d flows out of range (1 to 65536 ports of one client)", cfg.Flows)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	g := &Generator{cfg: cfg}
	defer func() {
		if err != nil {
			err = errors.Join(err, g.close())
		}
	}()
	size := max(cfg.Size, MinFrameSize(4, proto))
	if g.tmpl, err = template(4, proto, size, cfg.Dst.Addr(), cfg.SrcMAC, cfg.DstMAC); err != nil {
		return nil, err
	}
	lay := layoutOf(4, proto)
	src := cfg.Src.As4()
	copy(g.tmpl[14+12:], src[:])
	g.tmpl[lay.srcPort+2], g.tmpl[lay.srcPort+3] = byte(cfg.Dst.Port()>>8), byte(cfg.Dst.Port())
	// The header checksum again, over the real addresses.
	g.tmpl[14+10], g.tmpl[14+11] = 0, 0
	c := ipChecksum(g.tmpl[14 : 14+20])
	g.tmpl[14+10], g.tmpl[14+11] = byte(c>>8), byte(c)
	tx, err := constProg("weir_bench_tx", xdpTX, ebpf.AttachXDP, 0)
	if err != nil {
		return nil, err
	}
	g.add(tx.Close)
	target, err := newTarget(tx)
	if err != nil {
		return nil, err
	}
	g.add(target.Close)
	counter, err := newCounter()
	if err != nil {
		return nil, err
	}
	g.add(counter.Close)
	if g.prog, err = newHarness(harnessSpec{tmpl: g.tmpl, lay: lay, counter: counter, flows: uint32(cfg.Flows), keepSrc: true,
		services: 1, target: target, attachType: ebpf.AttachXDP}); err != nil {
		return nil, err
	}
	g.add(g.prog.Close)
	return g, nil
}

// Close releases the generator.
func (g *Generator) Close() error { return g.close() }

// SendStats are the costs of one Send.
type SendStats struct {
	// CPU is the CPU time the frames' whole path took: the sending
	// thread's (the generator and every softirq it ran: the path of a
	// frame through veth pairs and kernel stacks runs there, inline),
	// plus what the ksoftirqd threads ran meanwhile (softirq work the
	// kernel deferred; on a busy machine that may include others' work,
	// which only makes the figure conservative).
	CPU  time.Duration
	Wall time.Duration
}

// Send transmits n frames out of the device ifindex, which must be in
// the calling thread's network namespace (lock the thread and enter it).
func (g *Generator) Send(ctx context.Context, ifindex, n int) (SendStats, error) {
	soft0, err := ksoftirqdTime()
	if err != nil {
		return SendStats{}, err
	}
	var ru0, ru1 unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru0); err != nil {
		return SendStats{}, err
	}
	start := time.Now()
	_, err = progRun(ctx, g.prog, runOpts{data: g.tmpl, ifindex: ifindex, repeat: uint32(n), flags: flagLiveFrames, batchSize: uint32(g.cfg.BatchSize)})
	wall := time.Since(start)
	if err != nil {
		return SendStats{}, err
	}
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru1); err != nil {
		return SendStats{}, err
	}
	soft1, err := ksoftirqdTime()
	if err != nil {
		return SendStats{}, err
	}
	cpu := rusageTime(ru1) - rusageTime(ru0) + soft1 - soft0
	return SendStats{CPU: cpu, Wall: wall}, nil
}

func rusageTime(r unix.Rusage) time.Duration {
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

// ksoftirqdTime is the CPU time all ksoftirqd threads have run
// (/proc/PID/schedstat, in ns).
func ksoftirqdTime() (time.Duration, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "ksoftirqd/") {
			continue
		}
		st, err := os.ReadFile(filepath.Join(d, "schedstat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(st))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err == nil {
			total += time.Duration(ns)
		}
	}
	return total, nil
}

// Sink counts frames arriving on a device with a native XDP program and
// drops them (a veth peer that runs XDP also receives native XDP_TX and
// redirects).
type Sink struct{ s *sink }

// AttachSink attaches a sink to ifindex of the calling thread's network
// namespace.
func AttachSink(ifindex int) (*Sink, error) {
	s := &sink{}
	var err error
	if s.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weir_bench_snk", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2}); err != nil {
		return nil, fmt.Errorf("create the sink's counters: %w", err)
	}
	if s.prog, err = sinkProg(s.counters); err != nil {
		return nil, errors.Join(err, s.close())
	}
	if s.link, err = link.AttachXDP(link.XDPOptions{Program: s.prog, Interface: ifindex, Flags: link.XDPDriverMode}); err != nil {
		return nil, errors.Join(fmt.Errorf("attach the sink to interface %d in native mode: %w", ifindex, err), s.close())
	}
	return &Sink{s}, nil
}

// Count returns the frames counted so far, once the count stops moving,
// and among them the tunnel (IPIP, IPv6-in-IP) frames.
func (s *Sink) Count() (all, tunnel uint64, err error) { return s.s.settled() }

// Close detaches the sink.
func (s *Sink) Close() error { return s.s.close() }
