package xdp

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Stage is a plug-in stage of the XDP program (bpf/include/stages.h).
type Stage uint32

const (
	// StagePolicy runs before load balancing; its program ends with a
	// tail call to slot StageLB of StageMap (or returns a verdict).
	StagePolicy Stage = 0
	// StageOverlay gets packets ready to leave (rewritten, MACs set) and
	// returns the verdict.
	StageOverlay Stage = 2
	// StageSourceRanges enforces services' source ranges; on by default.
	// It has no program: the check is part of the load balancer.
	StageSourceRanges Stage = 3
)

// LBSlot is the slot of StageMap holding the load balancer itself
// (StageLB): a pre-LB stage tail calls it to hand a packet on.
const LBSlot uint32 = 1

var stageNames = map[Stage]string{
	StagePolicy:       "policy",
	StageOverlay:      "overlay",
	StageSourceRanges: "source-ranges",
}

func (s Stage) String() string {
	if n, ok := stageNames[s]; ok {
		return n
	}
	return fmt.Sprintf("stage(%d)", uint32(s))
}

// hasSlot reports whether the stage runs a program of its own.
func (s Stage) hasSlot() bool { return s == StagePolicy || s == StageOverlay }

// SetStageProgram installs prog as the stage's program, or removes it
// when prog is nil. It does not switch the stage on. prog must be an XDP
// program loaded with attach type XDP (ebpf.AttachXDP, what SEC("xdp")
// gives): the kernel only allows tail calls between alike programs.
func (p *Program) SetStageProgram(s Stage, prog *ebpf.Program) error {
	if !s.hasSlot() {
		return fmt.Errorf("xdp: stage %s has no program slot", s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := uint32(s)
	if prog == nil {
		if err := p.objs.Stages.Delete(key); err != nil && !isNotExist(err) {
			return fmt.Errorf("xdp: remove the %s stage program: %w", s, err)
		}
		delete(p.stageProgs, s)
		return nil
	}
	if err := p.objs.Stages.Update(key, prog, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("xdp: install the %s stage program (it must be an XDP program): %w", s, err)
	}
	p.stageProgs[s] = prog
	return nil
}

// SetStage switches a stage on or off at once, on every device the
// program is attached to, without reloading anything. A stage with a
// program slot can only be switched on once its program is installed.
func (p *Program) SetStage(s Stage, on bool) error {
	if _, ok := stageNames[s]; !ok {
		return fmt.Errorf("xdp: unknown stage %d", uint32(s))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if on && s.hasSlot() && p.stageProgs[s] == nil {
		return fmt.Errorf("xdp: stage %s has no program installed (call SetStageProgram first)", s)
	}
	var mask uint32
	if err := p.objs.StagesEnabled.Get(&mask); err != nil {
		return fmt.Errorf("xdp: read weir_stages_enabled: %w", err)
	}
	if on {
		mask |= 1 << s
	} else {
		mask &^= 1 << s
	}
	if err := p.objs.StagesEnabled.Set(mask); err != nil {
		return fmt.Errorf("xdp: write weir_stages_enabled: %w", err)
	}
	return nil
}

// Stages reports which stages are on.
func (p *Program) Stages() map[Stage]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	var mask uint32
	_ = p.objs.StagesEnabled.Get(&mask)
	return stagesFromMask(mask)
}
