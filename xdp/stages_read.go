package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ReadStages reports which stages are on in the program running in the
// XDP link pinned at linkPin (LinkPin), without a Program: inspection
// works while the agent is down. The stage bits are a global in the
// object's .data map, found among the program's maps by its name and
// size and read at the variable's offset.
func ReadStages(linkPin string) (map[Stage]bool, error) {
	mask, err := readStagesMask(linkPin)
	if err != nil {
		return nil, err
	}
	return stagesFromMask(mask), nil
}

func readStagesMask(linkPin string) (uint32, error) {
	spec, err := loadWeirXDP()
	if err != nil {
		return 0, fmt.Errorf("xdp: read the embedded object: %w", err)
	}
	vs, ok := spec.Variables["weir_stages_enabled"]
	if !ok || vs.Size() != 4 {
		return 0, errors.New("xdp: the embedded object has no 4-byte weir_stages_enabled (rebuild with go generate ./xdp)")
	}
	data, ok := spec.Maps[vs.SectionName]
	if !ok {
		return 0, fmt.Errorf("xdp: the embedded object has no %s map", vs.SectionName)
	}

	l, err := link.LoadPinnedLink(linkPin, nil)
	if err != nil {
		return 0, fmt.Errorf("xdp: open pinned link %s: %w (is the agent's --bpf-root right?)", linkPin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("xdp: link %s: %w", linkPin, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return 0, fmt.Errorf("xdp: program %d of link %s: %w", info.Program, linkPin, err)
	}
	defer prog.Close()
	pinfo, err := prog.Info()
	if err != nil {
		return 0, fmt.Errorf("xdp: program %d of link %s: %w", info.Program, linkPin, err)
	}
	ids, ok := pinfo.MapIDs()
	if !ok {
		return 0, fmt.Errorf("xdp: the kernel does not list the maps of program %d (needs Linux 4.15)", info.Program)
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue // freed since the listing: not the program's .data
		}
		mask, found, err := stagesFromDataMap(m, data, vs.Offset)
		m.Close()
		if err != nil {
			return 0, fmt.Errorf("xdp: program %d of link %s: %w", info.Program, linkPin, err)
		}
		if found {
			return mask, nil
		}
	}
	return 0, fmt.Errorf("xdp: program %d of link %s has no %s map with weir_stages_enabled: not a weir_xdp program (or one from another Weir version)", info.Program, linkPin, vs.SectionName)
}

// stagesFromDataMap reads the stage bits from m when it is the object's
// data map (same name as its MapSpec, same value size).
func stagesFromDataMap(m *ebpf.Map, data *ebpf.MapSpec, offset uint32) (uint32, bool, error) {
	mi, err := m.Info()
	if err != nil {
		return 0, false, err
	}
	if mi.Type != ebpf.Array || mi.ValueSize != data.ValueSize || !sameMapName(mi.Name, data.Name) {
		return 0, false, nil
	}
	if offset+4 > mi.ValueSize {
		return 0, false, fmt.Errorf("map %s: weir_stages_enabled at offset %d is outside its %d bytes", mi.Name, offset, mi.ValueSize)
	}
	val := make([]byte, mi.ValueSize)
	if err := m.Lookup(uint32(0), val); err != nil {
		return 0, false, fmt.Errorf("read map %s: %w", mi.Name, err)
	}
	return binary.NativeEndian.Uint32(val[offset:]), true, nil
}

// sameMapName compares a kernel map name (at most 15 bytes) with a spec's.
func sameMapName(kernel, spec string) bool {
	const maxLen = 15 // BPF_OBJ_NAME_LEN - 1
	if len(spec) > maxLen {
		spec = spec[:maxLen]
	}
	return kernel == spec
}

// stagesFromMask turns the weir_stages_enabled bits into every known
// stage's state.
func stagesFromMask(mask uint32) map[Stage]bool {
	out := make(map[Stage]bool, len(stageNames))
	for s := range stageNames {
		out[s] = mask&(1<<s) != 0
	}
	return out
}
