package xdpbench

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Why a harness: BPF_PROG_TEST_RUN with Repeat runs the program again and
// again on one buffer and does not undo what it did (and live-frames mode
// recycles pages without rewriting their data). A program that
// encapsulates would see its own IPIP output on the next run, 20 bytes
// further out, until it ran out of headroom. So every measured program is
// reached through a small harness, built below with the asm package, that
// first puts the frame back exactly as the template was and then tail
// calls the program under test:
//
//   - it moves the packet start back with bpf_xdp_adjust_head when the
//     previous run grew (or shrank) the packet at the front;
//   - it rewrites Ethernet, IP and L4 headers from the template (a DSR
//     encapsulation only adds headers in front; SNAT rewrites addresses
//     and ports; the payload is never touched);
//   - it writes the packet's flow from a counter: the client port and the
//     low 16 bits of the client address, and the service's VIP (flow f
//     goes to service f mod N), so a run spreads over the flows and
//     services it was asked for, and with flows = 0 every packet is a
//     5-tuple conntrack has never seen.
//
// The no-op baseline is the same harness (same rewrites) tail calling a
// program that returns XDP_TX, so the ratios compare like with like.

// harnessSpec describes one harness.
type harnessSpec struct {
	tmpl []byte
	lay  layout
	// counter is a one-slot array of a u64, the packet counter. A plain
	// (not per-CPU) array: runs may move between CPUs, and a new flow
	// must never repeat one from another CPU's count.
	counter *ebpf.Map
	// flows > 0 cycles flow numbers flowBase + counter mod flows; 0
	// makes every packet a new flow.
	flows    uint32
	flowBase uint32
	// keepSrc leaves the client address alone (only the port varies):
	// a generator whose frames must come from one real host.
	keepSrc bool
	// services > 1 spreads flows over VIPs dstBase + flow mod services.
	services uint32
	dstBase  uint32 // host-order low 32 bits of the VIP of service 0
	// target is a one-slot program array holding the program under test.
	target *ebpf.Map
	// attachType and flags must equal the target's: the kernel allows
	// tail calls only between alike programs.
	attachType ebpf.AttachType
	flags      uint32
}

// Verdicts of XDP programs.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

// VerdictName names an XDP return code.
func VerdictName(v uint32) string {
	if v < 5 {
		return [...]string{"aborted", "drop", "pass", "tx", "redirect"}[v]
	}
	return fmt.Sprintf("verdict-%d", v)
}

func (h harnessSpec) instructions() (asm.Instructions, error) {
	n := int32(len(h.tmpl))
	hdr := h.lay.headers
	if hdr > len(h.tmpl) {
		return nil, fmt.Errorf("harness: template of %d bytes is shorter than its %d bytes of headers", len(h.tmpl), hdr)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Sub.Reg(asm.R3, asm.R2),
		asm.JEq.Imm(asm.R3, n, "head_ok"),
		// Grown or shrunk at the front: move the start back by the
		// difference.
		asm.Sub.Imm(asm.R3, n),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R3),
		asm.FnXdpAdjustHead.Call(),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word).WithSymbol("head_ok"),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, int32(hdr)),
		asm.JGT.Reg(asm.R4, asm.R3, "tail"),
	}
	i := 0
	for ; i+4 <= hdr; i += 4 {
		insns = append(insns, asm.StoreImm(asm.R2, int16(i), int64(int32(binary.NativeEndian.Uint32(h.tmpl[i:]))), asm.Word))
	}
	for ; i+2 <= hdr; i += 2 {
		insns = append(insns, asm.StoreImm(asm.R2, int16(i), int64(binary.NativeEndian.Uint16(h.tmpl[i:])), asm.Half))
	}
	if i < hdr {
		insns = append(insns, asm.StoreImm(asm.R2, int16(i), int64(h.tmpl[i]), asm.Byte))
	}
	if h.counter != nil {
		insns = append(insns,
			asm.Mov.Reg(asm.R7, asm.R2),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, h.counter.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "tail"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		)
		if h.flows > 0 {
			insns = append(insns, asm.Mod.Imm(asm.R1, int32(h.flows)))
			if h.flowBase != 0 {
				insns = append(insns, asm.Add.Imm(asm.R1, int32(h.flowBase)))
			}
		}
		insns = append(insns, asm.StoreMem(asm.R7, int16(h.lay.srcPort), asm.R1, asm.Half))
		if !h.keepSrc {
			insns = append(insns,
				asm.Mov.Reg(asm.R3, asm.R1),
				asm.RSh.Imm(asm.R3, 16),
				asm.StoreMem(asm.R7, int16(h.lay.srcLow), asm.R3, asm.Half),
			)
		}
		if h.services > 1 {
			insns = append(insns,
				asm.Mov.Reg(asm.R4, asm.R1),
				asm.Mod.Imm(asm.R4, int32(h.services)),
				// Sign extension of the immediate doesn't matter: only
				// the low 32 bits are stored.
				asm.Add.Imm(asm.R4, int32(h.dstBase)),
				asm.HostTo(asm.BE, asm.R4, asm.Word),
				asm.StoreMem(asm.R7, int16(h.lay.dstLow), asm.R4, asm.Word),
			)
		}
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("tail"),
		asm.LoadMapPtr(asm.R2, h.target.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		// Only reached when the tail call fails: count it as aborted so
		// a broken setup can't pass for a fast one.
		asm.Mov.Imm(asm.R0, xdpAborted),
		asm.Return(),
	)
	return insns, nil
}

// newHarness loads the harness.
func newHarness(h harnessSpec) (*ebpf.Program, error) {
	insns, err := h.instructions()
	if err != nil {
		return nil, err
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "weir_bench_hns", Type: ebpf.XDP, AttachType: h.attachType, Flags: h.flags,
		License: "GPL", Instructions: insns,
	})
	if err != nil {
		return nil, fmt.Errorf("load the benchmark harness: %w", err)
	}
	return p, nil
}

// newTarget returns a one-slot program array holding prog.
func newTarget(prog *ebpf.Program) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "weir_bench_tgt", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the harness's program array: %w", err)
	}
	if err := m.Update(uint32(0), prog, ebpf.UpdateAny); err != nil {
		m.Close()
		return nil, fmt.Errorf("put the program under test into the harness's program array (is it an XDP program?): %w", err)
	}
	return m, nil
}

// newCounter is the harness's packet counter.
func newCounter() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "weir_bench_ctr", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the harness's counter: %w", err)
	}
	return m, nil
}

// constProg is an XDP program that returns verdict.
func constProg(name string, verdict int32, attachType ebpf.AttachType, flags uint32) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.XDP, AttachType: attachType, Flags: flags, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, verdict), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	return p, nil
}

// tailCallProg is an XDP program that tail calls slot of progs: a
// pass-through pre-LB stage.
func tailCallProg(name string, progs *ebpf.Map, slot uint32) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMapPtr(asm.R2, progs.FD()),
			asm.Mov.Imm(asm.R3, int32(slot)),
			asm.FnTailCall.Call(),
			asm.Mov.Imm(asm.R0, xdpAborted),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	return p, nil
}

// Sink counter slots (per CPU): every frame, and the frames that are a
// tunnel packet (outer protocol IPIP or IPv6-in-IP): a load-balanced
// frame that left DSR-encapsulated.
const (
	sinkAll    = 0
	sinkTunnel = 1
)

// sinkProg counts IP frames into counters (a per-CPU array of two u64)
// and drops them. Other frames (ARP) pass: a sink on a device the
// kernel also talks over must not starve its neighbour resolution.
func sinkProg(counters *ebpf.Map) (*ebpf.Program, error) {
	count := func(slot int32, label string) asm.Instructions {
		return asm.Instructions{
			asm.StoreImm(asm.R10, -4, int64(slot), asm.Word).WithSymbol(label),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, counters.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, label+"_done"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(label + "_done"),
		}
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R7, asm.R2, 12, asm.Half),
		asm.JEq.Imm(asm.R7, 0x0008, "ip"), // 0x0800 read little-endian
		asm.JEq.Imm(asm.R7, 0xdd86, "ip"),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
	insns = append(insns, count(sinkAll, "ip")...)
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.JEq.Imm(asm.R7, 0x0008, "v4"),
		asm.LoadMem(asm.R5, asm.R2, 14+6, asm.Byte),
		asm.Ja.Label("proto"),
		asm.LoadMem(asm.R5, asm.R2, 14+9, asm.Byte).WithSymbol("v4"),
		asm.JEq.Imm(asm.R5, 4, "tunnel").WithSymbol("proto"),
		asm.JEq.Imm(asm.R5, 41, "tunnel"),
		asm.Ja.Label("out"),
	)
	insns = append(insns, count(sinkTunnel, "tunnel")...)
	insns = append(insns,
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("out"),
		asm.Return(),
	)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "weir_bench_sink", Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load the sink program: %w", err)
	}
	return p, nil
}

// closer collects what a run created, to close it in reverse order.
type closer struct{ fns []func() error }

func (c *closer) add(f func() error) { c.fns = append(c.fns, f) }

func (c *closer) close() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		errs = append(errs, c.fns[i]())
	}
	c.fns = nil
	return errors.Join(errs...)
}
