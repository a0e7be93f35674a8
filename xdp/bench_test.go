package xdp

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netns"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// How the benchmarks measure (BPF_PROG_TEST_RUN, Repeat = b.N in one
// syscall, so ns/op is the kernel's per-packet time):
//
// With Repeat the kernel runs the program on the same buffer again and
// again, and does not undo what the program did: after a DSR
// encapsulation the next run would see an IPIP packet, 20 bytes further
// out. Every case is therefore run behind a small harness program (built
// below with the asm package) that first puts the frame back exactly as
// the template was, then tail calls the program under test:
//   - it moves the packet start back with bpf_xdp_adjust_head when the
//     previous run grew the packet (the DSR encapsulation only adds
//     headers; the inner packet stays untouched);
//   - it rewrites the 14-byte Ethernet header from the template (the
//     outer header overwrote it);
//   - for new-flow, it also writes a fresh client port and low 16 bits of
//     the client address from a per-CPU counter, so every packet is a
//     5-tuple conntrack has never seen: a real miss, Maglev pick,
//     conntrack insert (with LRU eviction once the map is full) and
//     encapsulation, every time.
// noop is the same harness tail calling a program that returns XDP_TX, so
// the ratios compare like with like; each case measures it again right
// after itself, as many packets, for its x-noop ratio. raw-ns/pkt (a bare
// XDP_TX program, reported by noop) shows what the harness itself costs.
// After each run the benchmark checks the work really happened (service
// counters, conntrack entries).

const (
	benchCounterOff = 34 // TCP source port of an untagged IPv4 frame
	benchAddrOff    = 28 // low half of the IPv4 source address
)

// benchHarness builds the harness for a template frame of tmplLen bytes.
func benchHarness(tb testing.TB, tmpl []byte, target *ebpf.Map, counter *ebpf.Map) *ebpf.Program {
	tb.Helper()
	n := int32(len(tmpl))
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Sub.Reg(asm.R3, asm.R2),
		asm.JLE.Imm(asm.R3, n, "head_ok"),
		asm.Sub.Imm(asm.R3, n),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R3),
		asm.FnXdpAdjustHead.Call(),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word).WithSymbol("head_ok"),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 40),
		asm.JGT.Reg(asm.R4, asm.R3, "tail"),
	}
	for i := 0; i < 12; i += 4 {
		insns = append(insns, asm.StoreImm(asm.R2, int16(i), int64(int32(binary.NativeEndian.Uint32(tmpl[i:]))), asm.Word))
	}
	insns = append(insns, asm.StoreImm(asm.R2, 12, int64(binary.NativeEndian.Uint16(tmpl[12:])), asm.Half))
	if counter != nil {
		insns = append(insns,
			asm.Mov.Reg(asm.R7, asm.R2),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "tail"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.StoreMem(asm.R7, benchCounterOff, asm.R1, asm.Half),
			asm.RSh.Imm(asm.R1, 16),
			asm.StoreMem(asm.R7, benchAddrOff, asm.R1, asm.Half),
		)
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("tail"),
		asm.LoadMapPtr(asm.R2, target.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, xdpAborted),
		asm.Return(),
	)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// benchTarget is a one-slot program array holding prog.
func benchTarget(tb testing.TB, prog *ebpf.Program) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	must(tb, err)
	tb.Cleanup(func() { m.Close() })
	must(tb, m.Update(uint32(0), prog, ebpf.UpdateAny))
	return m
}

func txProg(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpTX), asm.Return()}})
	must(tb, err)
	tb.Cleanup(func() { p.Close() })
	return p
}

// runRepeat runs prog repeat times on in (arriving on lb0) and returns
// the wall time per run and the last verdict.
func (e *testEnv) runRepeat(tb testing.TB, prog *ebpf.Program, in []byte, repeat int) (time.Duration, uint32) {
	tb.Helper()
	var (
		v uint32
		d time.Duration
	)
	e.node.MustDo(tb, func() error {
		var err error
		d, v, err = runTimed(prog, in, e.ifindex, repeat)
		return err
	})
	return d, v
}

func runTimed(prog *ebpf.Program, in []byte, ifindex, repeat int) (time.Duration, uint32, error) {
	ns, v, err := runNs(prog, in, ifindex, repeat)
	return time.Duration(ns), v, err
}

// runNs is runTimed in fractional nanoseconds per run.
func runNs(prog *ebpf.Program, in []byte, ifindex, repeat int) (float64, uint32, error) {
	opts := &ebpf.RunOptions{Data: in, Repeat: uint32(repeat),
		Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(ifindex)}}
	start := time.Now()
	v, err := prog.Run(opts)
	return float64(time.Since(start).Nanoseconds()) / float64(repeat), v, err
}

// enterNetns moves the calling goroutine's thread into ns until leave is
// called, so the timed loop pays no namespace switches (Netns.Do spawns
// a goroutine and switches twice per call). A thread that can't switch
// back stays locked and dies with its goroutine.
func enterNetns(tb testing.TB, ns *testutil.Netns) (leave func()) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	if err := netns.Set(ns.Handle); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	return func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}
}

func BenchmarkXDP(b *testing.B) {
	e := newEnv(b, Config{})
	f := families[0]
	s := dsrService(f, protoTCP)
	e.addService(b, s)
	established := packet(clientFlow(f, protoTCP, 40000), pktOpts{TCPFlags: tcpACK, Payload: make([]byte, 64)})
	other := packet(flow{Src: netip.AddrPortFrom(f.cli, 40000), Dst: netip.MustParseAddrPort("203.0.113.99:80"), Proto: protoTCP}, pktOpts{TCPFlags: tcpACK, Payload: make([]byte, 64)})

	noopTarget := benchTarget(b, txProg(b))
	lbTarget := benchTarget(b, e.prog.Entry())
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	must(b, err)
	b.Cleanup(func() { counter.Close() })

	noop := benchHarness(b, established, noopTarget, nil)
	raw := txProg(b)

	cases := []struct {
		name    string
		prog    *ebpf.Program
		in      []byte
		verdict uint32
		check   func(b *testing.B, n int)
	}{
		{name: "noop", prog: noop, in: established, verdict: xdpTX},
		{name: "pass-non-service", prog: benchHarness(b, other, lbTarget, nil), in: other, verdict: xdpPass},
		{name: "established", prog: benchHarness(b, established, lbTarget, nil), in: established, verdict: xdpTX,
			check: func(b *testing.B, n int) { wantServicePackets(b, e, s.ID, n) }},
		{name: "new-flow", prog: benchHarness(b, established, lbTarget, counter), in: established, verdict: xdpTX,
			check: func(b *testing.B, n int) {
				wantServicePackets(b, e, s.ID, n)
				var c []uint64
				must(b, counter.Lookup(uint32(0), &c))
				// The last packet's flow is in conntrack: it was new. The
				// harness wrote its CPU's counter in host byte order; the
				// runs may have moved between CPUs, so try each.
				found := false
				for _, v := range c {
					key := ctKeyOf(clientFlow(f, protoTCP, 40000))
					binary.NativeEndian.PutUint16(key.Saddr[12+benchAddrOff-26:], uint16(v>>16))
					binary.NativeEndian.PutUint16(key.Sport[:], uint16(v))
					var ct bpf.CTValue
					if v != 0 && e.maps.CT.Lookup(&key, &ct) == nil {
						found = true
					}
				}
				if !found {
					b.Errorf("the last new flow is not in conntrack (counters %v)", c)
				}
			}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			// Warm up (the established flow enters conntrack and caches
			// its next hop), then count from zero.
			e.runRepeat(b, c.prog, c.in, 2)
			must(b, e.maps.ServiceStats.Update(uint32(s.ID), make([]bpf.TrafficStats, ebpf.MustPossibleCPU()), ebpf.UpdateAny))
			leave := enterNetns(b, e.node)
			b.ResetTimer()
			_, v, err := runNs(c.prog, c.in, e.ifindex, b.N)
			b.StopTimer()
			// The ratio's baseline right after, as many packets: the
			// machine's load drifts between sub-benchmarks.
			noopNs, _, nerr := runNs(noop, established, e.ifindex, b.N)
			rawNs, _, rerr := runNs(raw, established, e.ifindex, b.N)
			leave()
			must(b, errors.Join(err, nerr, rerr))
			if v != c.verdict {
				b.Fatalf("verdict %s, want %s", verdictName(v), verdictName(c.verdict))
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(ns, "ns/pkt")
			b.ReportMetric(ns/noopNs, "x-noop")
			if c.name == "noop" {
				b.ReportMetric(rawNs, "raw-ns/pkt")
			}
			if c.check != nil {
				c.check(b, b.N)
			}
		})
	}
}

func wantServicePackets(b *testing.B, e *testEnv, id lb.ServiceID, n int) {
	b.Helper()
	if got := sumStats(b, e.maps.ServiceStats, uint32(id)); got.Packets < uint64(n) {
		b.Errorf("service counted %d packets of %d: the benchmark didn't load-balance every packet", got.Packets, n)
	}
}
