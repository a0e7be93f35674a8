package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// ControlPlaneResult is one point of `weir bench control-plane`. The
// JSON names are a contract (docs/BENCHMARKS.md).
type ControlPlaneResult struct {
	Services int `json:"services"`
	Backends int `json:"backends"`
	// FullProgramSeconds is Replace + Sync of every service into empty
	// maps (every service serves from then on); FullWrites the map
	// writes it made, both Maglev table generations of every service
	// included. SparesSeconds is the follow-up Syncs the reconciler asks
	// for (SyncResult.Again), if any: the spare generations used to be
	// left to one, and are now written by the full program.
	FullProgramSeconds float64 `json:"full_program_seconds"`
	FullWrites         int     `json:"full_writes"`
	SparesSeconds      float64 `json:"spares_seconds"`
	// FullProgramCPUSeconds and SparesCPUSeconds are the CPU time (user
	// and system, all threads) the process spent in the same spans: on a
	// machine shared with other work they vary far less than the wall
	// times.
	FullProgramCPUSeconds float64 `json:"full_program_cpu_seconds"`
	SparesCPUSeconds      float64 `json:"spares_cpu_seconds"`
	// Changes single changes were applied (one backend of one service
	// flips between active and terminating: its entry, its service's
	// Maglev table and service entry change), each Upsert + Sync timed.
	Changes          int     `json:"changes"`
	ChangeP50Seconds float64 `json:"change_p50_seconds"`
	ChangeP99Seconds float64 `json:"change_p99_seconds"`
	ChangeMaxSeconds float64 `json:"change_max_seconds"`
	ChangeWrites     float64 `json:"change_writes"` // per change
	// RSSBytes is this process's resident memory (VmRSS) once the
	// services are programmed and the benchmark's own copy of them is
	// dropped: the reconciler's state, the Go runtime and the binary.
	// RSSPeakBytes is the high-water mark (VmHWM) of the whole process.
	RSSBytes     uint64 `json:"rss_bytes"`
	RSSPeakBytes uint64 `json:"rss_peak_bytes"`
	GoHeapBytes  uint64 `json:"go_heap_bytes"`
}

func runBenchControlPlane(ctx context.Context, args []string) error {
	return benchControlPlane(ctx, args, os.Stdout, os.Stderr)
}

func benchControlPlane(ctx context.Context, args []string, out, log io.Writer) error {
	fs := pflag.NewFlagSet("bench control-plane", pflag.ContinueOnError)
	fs.SetOutput(log)
	var format outputFormat
	services := fs.IntSlice("services", []int{1000, 10000, 100000}, "service counts to program (ClusterIP services, one frontend each)")
	backends := fs.Int("backends", 10, "backends per service")
	changes := fs.Int("changes", 200, "single changes applied and timed after the full program")
	quiet := fs.BoolP("quiet", "q", false, "no progress lines on stderr")
	heapProfile := fs.String("memprofile", "", "write a heap profile, taken where rss_bytes is read, of the last service count to this file")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the full programs and their spare-table syncs to this file")
	format.flags(fs)
	fs.Usage = func() {
		fmt.Fprintln(log, "usage: weir bench control-plane [--services N,...] [--backends M] [--changes K] [--json|--csv]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := format.check(); err != nil {
		return err
	}
	if *backends < 1 || *changes < 1 {
		return fmt.Errorf("--backends and --changes must be positive")
	}
	for _, n := range *services {
		if n < 1 || n*(*backends) > 1<<23 {
			return fmt.Errorf("--services %d x --backends %d out of range (1 to 8M backends in all)", n, *backends)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("the control-plane benchmark programs real BPF maps: run it as root")
	}
	prof, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer prof.Close()
	var results []ControlPlaneResult
	for _, n := range *services {
		if !*quiet {
			fmt.Fprintf(log, "control plane: %d services x %d backends\n", n, *backends)
		}
		r, err := controlPlaneRun(ctx, n, *backends, *changes, prof, *heapProfile)
		if err != nil {
			return err
		}
		if !*quiet {
			fmt.Fprintf(log, "  full program %.3fs (%d writes), change p50 %.2fms p99 %.2fms, rss %d MiB\n",
				r.FullProgramSeconds, r.FullWrites, r.ChangeP50Seconds*1e3, r.ChangeP99Seconds*1e3, r.RSSBytes>>20)
		}
		results = append(results, r)
	}
	switch {
	case format.json:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	case format.csv:
		return writeControlPlaneCSV(out, results)
	}
	return writeControlPlaneTable(out, results)
}

// benchServiceName names service i of the benchmark.
func benchServiceName(i int) lb.ServiceName {
	return lb.ServiceName{Namespace: "bench", Name: "svc-" + strconv.Itoa(i), Port: "http"}
}

// benchService is service i: a ClusterIP (10.96.0.0/12 + i) with m
// backends, the common case of a cluster.
func benchService(i, m int) *lb.Service {
	s := &lb.Service{
		Name: benchServiceName(i),
		Frontends: []lb.Frontend{{Addr: addrAdd(netip.MustParseAddr("10.96.0.0"), uint32(i)), Port: 80, Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindClusterIP}},
	}
	for j := range m {
		s.Backends = append(s.Backends, lb.Backend{Addr: addrAdd(netip.MustParseAddr("10.128.0.0"), uint32(i*m+j)), Port: 8080, Weight: 1})
	}
	return s
}

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// controlPlaneRun programs n services of m backends into fresh maps under
// a temporary bpffs directory (removed before it returns), then applies
// changes single changes.
func controlPlaneRun(ctx context.Context, n, m, changes int, prof *cpuProfile, heapProfile string) (res ControlPlaneResult, err error) {
	res = ControlPlaneResult{Services: n, Backends: m, Changes: changes}
	const base = "/sys/fs/bpf"
	if err := bpf.EnsureBPFFS(base); err != nil {
		return res, err
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	dir := filepath.Join(base, "weir-bench-cp-"+hex.EncodeToString(rnd[:]))
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	headroom := func(v int) uint32 { return uint32(v + v/8 + 64) }
	maps, err := bpf.OpenMaps(dir, bpf.MapSizes{
		Services: headroom(n), Frontends: headroom(n), Backends: headroom(n * m),
		// Flow state the reconciler never touches: small.
		CT: 1024, Affinity: 1024, SNAT: 1024, SockRevNat: 1024,
	})
	if err != nil {
		return res, fmt.Errorf("create the benchmark's maps under %s: %w", dir, err)
	}
	defer func() { err = errors.Join(err, maps.Close()) }()
	r, err := lb.NewReconciler(bpf.NewDatapath(maps), lb.ReconcilerOptions{})
	if err != nil {
		return res, err
	}
	all := make([]*lb.Service, n)
	for i := range all {
		all[i] = benchService(i, m)
	}
	prof.resume()
	cpu := processCPU()
	start := time.Now()
	r.Replace(all)
	sr, err := r.Sync()
	res.FullProgramSeconds = time.Since(start).Seconds()
	res.FullProgramCPUSeconds = processCPU() - cpu
	if err != nil {
		return res, fmt.Errorf("program %d services: %w", n, err)
	}
	if len(sr.Updated) != n {
		return res, fmt.Errorf("programmed %d services, want %d", len(sr.Updated), n)
	}
	res.FullWrites = sr.Writes
	// As the agent's runner does: sync again while the reconciler asks.
	cpu = processCPU()
	start = time.Now()
	for i := 0; sr.Again; i++ {
		if i == 100 {
			return res, errors.New("the reconciler still asks for another sync after 100")
		}
		if sr, err = r.Sync(); err != nil {
			return res, fmt.Errorf("follow-up sync: %w", err)
		}
	}
	res.SparesSeconds = time.Since(start).Seconds()
	res.SparesCPUSeconds = processCPU() - cpu
	prof.pause()
	// The desired state now lives in the reconciler, as in an agent.
	all = nil
	var lat []float64
	writes := 0
	for k := range changes {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		// Spread the changes over the services; every other one flips a
		// backend back.
		i := (k / 2 * 7919) % n
		s := benchService(i, m)
		if k%2 == 0 {
			s.Backends[0].State = lb.BackendTerminating
		}
		start := time.Now()
		r.Upsert(s)
		sr, err := r.Sync()
		lat = append(lat, time.Since(start).Seconds())
		if err != nil {
			return res, fmt.Errorf("change %d: %w", k, err)
		}
		if sr.Again {
			return res, fmt.Errorf("change %d left work for another sync", k)
		}
		if len(sr.Updated) != 1 {
			return res, fmt.Errorf("change %d updated %v, want one service", k, sr.Updated)
		}
		writes += sr.Writes
	}
	slices.Sort(lat)
	res.ChangeP50Seconds = percentile(lat, 0.50)
	res.ChangeP99Seconds = percentile(lat, 0.99)
	res.ChangeMaxSeconds = lat[len(lat)-1]
	res.ChangeWrites = float64(writes) / float64(changes)
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.GoHeapBytes = ms.HeapAlloc
	res.RSSBytes, res.RSSPeakBytes, err = procMemory()
	if err == nil && heapProfile != "" {
		err = writeHeapProfile(heapProfile)
	}
	runtime.KeepAlive(r)
	return res, err
}

// cpuProfile collects a CPU profile over the timed full programs only:
// pprof can't pause, so each full program is its own profile, and the
// file keeps the last one. A nil *cpuProfile does nothing.
type cpuProfile struct {
	path string
	f    *os.File
}

func startCPUProfile(path string) (*cpuProfile, error) {
	if path == "" {
		return nil, nil
	}
	return &cpuProfile{path: path}, nil
}

func (p *cpuProfile) resume() {
	if p == nil {
		return
	}
	f, err := os.Create(p.path)
	if err != nil {
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return
	}
	p.f = f
}

func (p *cpuProfile) pause() {
	if p == nil || p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	p.f.Close()
	p.f = nil
}

func (p *cpuProfile) Close() { p.pause() }

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
}

// processCPU is the user and system CPU time of the process so far, in
// seconds; 0 when the kernel won't say.
func processCPU() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// procMemory reads VmRSS and VmHWM from /proc/self/status.
func procMemory() (rss, hwm uint64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, fmt.Errorf("read memory use: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = v << 10
		case "VmHWM:":
			hwm = v << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc/self/status")
	}
	return rss, hwm, nil
}

func writeControlPlaneTable(w io.Writer, rs []ControlPlaneResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SERVICES\tBACKENDS\tFULL(s)\tWRITES\tSPARES(s)\tCHANGES\tP50(ms)\tP99(ms)\tMAX(ms)\tWRITES/CHANGE\tRSS(MiB)\tPEAK(MiB)\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%d\t%.3f\t%d\t%.3f\t%d\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.1f\t\n", r.Services, r.Backends, r.FullProgramSeconds, r.FullWrites, r.SparesSeconds,
			r.Changes, r.ChangeP50Seconds*1e3, r.ChangeP99Seconds*1e3, r.ChangeMaxSeconds*1e3, r.ChangeWrites,
			float64(r.RSSBytes)/(1<<20), float64(r.RSSPeakBytes)/(1<<20))
	}
	return tw.Flush()
}

func writeControlPlaneCSV(w io.Writer, rs []ControlPlaneResult) error {
	fmt.Fprintln(w, "services,backends,full_program_seconds,full_writes,spares_seconds,changes,change_p50_seconds,change_p99_seconds,change_max_seconds,change_writes,rss_bytes,rss_peak_bytes,go_heap_bytes,full_program_cpu_seconds,spares_cpu_seconds")
	for _, r := range rs {
		fmt.Fprintf(w, "%d,%d,%g,%d,%g,%d,%g,%g,%g,%g,%d,%d,%d,%g,%g\n", r.Services, r.Backends, r.FullProgramSeconds, r.FullWrites, r.SparesSeconds, r.Changes,
			r.ChangeP50Seconds, r.ChangeP99Seconds, r.ChangeMaxSeconds, r.ChangeWrites, r.RSSBytes, r.RSSPeakBytes, r.GoHeapBytes,
			r.FullProgramCPUSeconds, r.SparesCPUSeconds)
	}
	return nil
}
