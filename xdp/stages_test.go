package xdp

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/weir-lb/weir/bpf"
)

// stageProg builds a tiny stage: it counts its packets in counter and
// then tail calls slot next of stages, or returns verdict when next < 0.
func stageProg(tb testing.TB, counter, stages *ebpf.Map, next int, verdict int32) *ebpf.Program {
	tb.Helper()
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("out"),
	}
	if next >= 0 {
		insns = append(insns,
			asm.LoadMapPtr(asm.R2, stages.FD()),
			asm.Mov.Imm(asm.R3, int32(next)),
			asm.FnTailCall.Call(),
		)
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, verdict), asm.Return())
	// The attach type must match weir_xdp's for the tail calls to be allowed.
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, Instructions: insns, License: "GPL"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func newCounter(tb testing.TB) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func count(tb testing.TB, m *ebpf.Map) uint64 {
	tb.Helper()
	var n uint64
	must(tb, m.Lookup(uint32(0), &n))
	return n
}

// TestStages: a pre-LB policy stage runs only while switched on, and
// hands packets back to the load balancer; the overlay stage gets the
// packets ready to leave. Nothing is reloaded.
func TestStages(t *testing.T) {
	e := newEnv(t, Config{})
	f := families[0]
	e.addService(t, dsrService(f, protoTCP))
	in := packet(clientFlow(f, protoTCP, 1), pktOpts{})

	if err := e.prog.SetStage(StagePolicy, true); err == nil {
		t.Fatal("policy stage switched on without a program")
	}
	counter := newCounter(t)
	policy := stageProg(t, counter, e.prog.StageMap(), int(LBSlot), xdpAborted)
	must(t, e.prog.SetStageProgram(StagePolicy, policy))
	v, _ := e.run(t, in)
	wantVerdict(t, v, xdpTX)
	if n := count(t, counter); n != 0 {
		t.Fatalf("policy stage ran %d times while off", n)
	}
	must(t, e.prog.SetStage(StagePolicy, true))
	if !e.prog.Stages()[StagePolicy] {
		t.Errorf("Stages() doesn't report policy on")
	}
	v, out := e.run(t, in)
	wantVerdict(t, v, xdpTX)
	wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
	if n := count(t, counter); n != 1 {
		t.Fatalf("policy stage ran %d times, want 1", n)
	}

	// A policy that decides itself.
	deny := stageProg(t, newCounter(t), e.prog.StageMap(), -1, xdpDrop)
	must(t, e.prog.SetStageProgram(StagePolicy, deny))
	v, _ = e.run(t, in)
	wantVerdict(t, v, xdpDrop)
	must(t, e.prog.SetStage(StagePolicy, false))
	v, _ = e.run(t, in)
	wantVerdict(t, v, xdpTX)

	// Overlay: gets the forwarded packet and returns the verdict.
	ocount := newCounter(t)
	overlay := stageProg(t, ocount, nil, -1, xdpPass)
	must(t, e.prog.SetStageProgram(StageOverlay, overlay))
	must(t, e.prog.SetStage(StageOverlay, true))
	v, out = e.run(t, in)
	wantVerdict(t, v, xdpPass)
	wantDSR(t, out, in, o2tunnel(t, out), f.prefix, macLB, macNH)
	if n := count(t, ocount); n != 1 {
		t.Errorf("overlay ran %d times, want 1", n)
	}
	must(t, e.prog.SetStage(StageOverlay, false))
	must(t, e.prog.SetStageProgram(StageOverlay, nil))
	v, _ = e.run(t, in)
	wantVerdict(t, v, xdpTX)
	if err := e.prog.SetStageProgram(StageSourceRanges, overlay); err == nil {
		t.Errorf("installed a program for the source-range stage")
	}
}

// TestEvents: drops are reported on the ring buffer within the rate
// bound, the rest counted as lost; new flows are sampled.
func TestEvents(t *testing.T) {
	e := newEnv(t, Config{EventsPerMillisecond: 1, NewFlowSample: 1})
	rd, err := ringbuf.NewReader(e.maps.Events)
	must(t, err)
	t.Cleanup(func() { rd.Close() })
	f := families[0]
	s := dsrService(f, protoTCP)
	e.addService(t, s)
	fl := clientFlow(f, protoTCP, 1234)
	v, out := e.run(t, packet(fl, pktOpts{}))
	wantVerdict(t, v, xdpTX)
	ev := readEvent(t, rd)
	want := bpf.Event{Type: bpf.EventNewFlow, ServiceID: uint32(s.ID), Proto: protoTCP,
		Saddr: bpf.AddrFrom(f.cli), Daddr: bpf.AddrFrom(f.vip), Sport: bpf.PortFrom(1234), Dport: bpf.PortFrom(80),
		Ifindex: uint32(e.ifindex)}
	if o2tunnel(t, out) == f.tunA {
		want.BackendID = 1
	} else {
		want.BackendID = 2
	}
	ev.Timestamp = 0
	if ev != want {
		t.Errorf("new-flow event\n got %+v\nwant %+v", ev, want)
	}

	// A burst of drops in one test run: one event per millisecond.
	const burst = 200
	in := packet(fl, pktOpts{})[:30] // truncated IPv4 header
	opts := &ebpf.RunOptions{Data: in, Repeat: burst, Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(e.ifindex)}}
	var start time.Time
	e.node.MustDo(t, func() error {
		start = time.Now()
		v, err := e.prog.Entry().Run(opts)
		if v != xdpDrop {
			t.Errorf("verdict %s", verdictName(v))
		}
		return err
	})
	elapsed := time.Since(start)
	got := 0
	rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		if _, err := rd.Read(); err != nil {
			break
		}
		got++
	}
	var lost []uint64
	must(t, e.maps.EventsLost.Lookup(uint32(0), &lost))
	var nlost uint64
	for _, l := range lost {
		nlost += l
	}
	if uint64(got)+nlost != burst {
		t.Errorf("%d events + %d lost, want %d", got, nlost, burst)
	}
	if maxEv := int(elapsed/time.Millisecond) + 2; got > maxEv {
		t.Errorf("%d events in %v at 1 per ms", got, elapsed)
	}
	if d := e.drops(t, bpf.ReasonMalformed); d.Packets != burst {
		t.Errorf("malformed drops %d, want %d", d.Packets, burst)
	}
}

// readEvent reads one event, failing after a second.
func readEvent(tb testing.TB, rd *ringbuf.Reader) bpf.Event {
	tb.Helper()
	rd.SetDeadline(time.Now().Add(time.Second))
	rec, err := rd.Read()
	if err != nil {
		tb.Fatalf("read event: %v", err)
	}
	ev, err := bpf.UnmarshalEvent(rec.RawSample)
	must(tb, err)
	return ev
}
