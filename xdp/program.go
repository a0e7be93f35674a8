package xdp

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/weir-lb/weir/bpf"
)

// Program is the loaded XDP datapath. Its methods are safe for concurrent
// use.
type Program struct {
	objs objects
	maps *bpf.Maps
	log  *slog.Logger

	mu    sync.Mutex
	links map[string]link.Link // by interface name
	// stageProgs are the installed stage programs (SetStageProgram).
	stageProgs map[Stage]*ebpf.Program
}

// objects are the parts of the object the Program keeps: the shared maps
// are the caller's (bpf.Maps), the rest closes with the Program.
type objects struct {
	Entry         *ebpf.Program  `ebpf:"weir_xdp"`
	StageLB       *ebpf.Program  `ebpf:"weir_stage_lb"`
	Stages        *ebpf.Map      `ebpf:"weir_stages"`
	StagesEnabled *ebpf.Variable `ebpf:"weir_stages_enabled"`
}

// Load loads the XDP program configured by cfg, bound to cfg.Maps.
func Load(cfg Config) (*Program, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spec, err := loadWeirXDP()
	if err != nil {
		return nil, fmt.Errorf("xdp: read the embedded object: %w", err)
	}
	if err := cfg.setVariables(spec); err != nil {
		return nil, err
	}
	var objs objects
	if err := cfg.Maps.LoadAndAssign(spec, &objs, nil); err != nil {
		if ferr := missingFeature(); ferr != nil {
			return nil, fmt.Errorf("xdp: load weir_xdp: %w (kernel lacks %v)", err, ferr)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("xdp: the kernel's verifier rejected weir_xdp: %+v", verr)
		}
		return nil, fmt.Errorf("xdp: load weir_xdp: %w", err)
	}
	return &Program{
		objs:       objs,
		maps:       cfg.Maps,
		log:        cfg.Logger,
		links:      map[string]link.Link{},
		stageProgs: map[Stage]*ebpf.Program{},
	}, nil
}

// missingFeature names the first kernel feature weir_xdp needs that the
// running kernel lacks, or returns nil.
func missingFeature() error {
	if err := features.HaveProgramType(ebpf.XDP); err != nil {
		return fmt.Errorf("XDP programs: %w", err)
	}
	for _, mt := range []ebpf.MapType{ebpf.LRUHash, ebpf.LPMTrie, ebpf.HashOfMaps, ebpf.RingBuf, ebpf.ProgramArray, ebpf.PerCPUArray} {
		if err := features.HaveMapType(mt); err != nil {
			return fmt.Errorf("map type %s: %w", mt, err)
		}
	}
	for _, h := range []asm.BuiltinFunc{asm.FnFibLookup, asm.FnXdpAdjustHead, asm.FnXdpAdjustTail, asm.FnXdpLoadBytes, asm.FnRedirect, asm.FnRingbufReserve, asm.FnRingbufSubmit, asm.FnKtimeGetCoarseNs, asm.FnTailCall} {
		if err := features.HaveProgramHelper(ebpf.XDP, h); err != nil {
			return fmt.Errorf("helper %s: %w", h, err)
		}
	}
	if err := features.HaveBoundedLoops(); err != nil {
		return fmt.Errorf("bounded loops: %w", err)
	}
	return nil
}

// Entry is the program to attach (and to run with BPF_PROG_TEST_RUN).
func (p *Program) Entry() *ebpf.Program { return p.objs.Entry }

// StageLB is the load balancer as a stage program, the one in slot LBSlot
// of StageMap.
func (p *Program) StageLB() *ebpf.Program { return p.objs.StageLB }

// StageMap is the program array of the stages, for stage programs that
// tail call onwards: a pre-LB stage ends with a tail call to LBSlot
// (compiled from C, it gets this map as a MapReplacement for its own
// weir_stages).
func (p *Program) StageMap() *ebpf.Map { return p.objs.Stages }

// Close releases the Program's file descriptors. Attached links stay
// pinned and keep the program running.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for name, l := range p.links {
		errs = append(errs, l.Close())
		delete(p.links, name)
	}
	errs = append(errs, p.objs.Entry.Close(), p.objs.StageLB.Close(), p.objs.Stages.Close())
	return errors.Join(errs...)
}
