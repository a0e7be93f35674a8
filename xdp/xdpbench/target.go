package xdpbench

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/xdp"
)

// target is the program under test in one environment: Weir's weir_xdp,
// or a program from another object. It owns its maps (fresh ones for
// every environment, pinned under the run's directory).
type target struct {
	name string
	prog *ebpf.Program
	// weir is Weir's Program (stages, attach); nil for another object.
	weir *xdp.Program
	// maps are Weir's shared maps when the program uses them.
	maps *bpf.Maps
	dp   *bpf.Datapath
	root string
	// attachType and flags of prog, for the harness (tail calls need
	// alike programs).
	attachType ebpf.AttachType
	flags      uint32
	closer
}

// mapSizes sizes the service maps for n services of backends each; the
// flow maps keep their defaults (conntrack 512k entries, as an agent
// has), the maps no scenario uses are small.
func mapSizes(n, backends int) bpf.MapSizes {
	// Stats arrays are indexed by ID, and IDs start at 1.
	svc := uint32(max(n+1, 64))
	return bpf.MapSizes{
		Services:     svc,
		Frontends:    svc,
		Backends:     uint32(max(n*backends+1, 64)),
		SourceRanges: uint32(max(2*n, 64)),
		SNAT:         1024,
		SockRevNat:   1024,
	}
}

// openMaps creates fresh shared maps pinned under root.
func openMaps(root string, n, backends int) (*bpf.Maps, error) {
	m, err := bpf.OpenMaps(root, mapSizes(n, backends))
	if err != nil {
		return nil, fmt.Errorf("create the benchmark's maps: %w", err)
	}
	return m, nil
}

// newWeirTarget loads weir_xdp against fresh maps under root.
func newWeirTarget(root string, n, backends int) (_ *target, err error) {
	t := &target{name: "weir_xdp", root: root, attachType: ebpf.AttachXDP}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.close())
		}
	}()
	if t.maps, err = openMaps(root, n, backends); err != nil {
		return nil, err
	}
	t.add(t.maps.Close)
	t.dp = bpf.NewDatapath(t.maps)
	if t.weir, err = xdp.Load(xdp.Config{Maps: t.maps, SNATv4: nodeAddr4.Addr(), SNATv6: nodeAddr6.Addr()}); err != nil {
		return nil, err
	}
	t.add(t.weir.Close)
	t.prog = t.weir.Entry()
	if err := t.weir.SetNodeAddrs([]netip.Addr{nodeAddr4.Addr(), nodeAddr6.Addr()}); err != nil {
		return nil, err
	}
	return t, nil
}

// objectSpec reads another object and checks that it holds the XDP
// program name.
func objectSpec(file, name string) (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpec(file)
	if err != nil {
		return nil, fmt.Errorf("read object %s: %w", file, err)
	}
	ps, ok := spec.Programs[name]
	if !ok {
		var names []string
		for n, p := range spec.Programs {
			if p.Type == ebpf.XDP {
				names = append(names, n)
			}
		}
		return nil, fmt.Errorf("object %s has no program %q (its XDP programs: %v)", file, name, names)
	}
	if ps.Type != ebpf.XDP {
		return nil, fmt.Errorf("program %s in %s is a %s program, not XDP", name, file, ps.Type)
	}
	return spec, nil
}

// usesWeirMaps reports whether an object declares Weir's service map, so
// Weir's service scenarios can run against it (a modified Weir, or
// another program built on bpf/include/maps.h).
func usesWeirMaps(spec *ebpf.CollectionSpec) bool {
	_, ok := spec.Maps["weir_services"]
	return ok
}

// newObjectTarget loads program name of file. When the object declares
// Weir's shared maps, fresh ones under root take their place; its other
// maps are its own, and none is pinned (nothing of the benchmark outlives
// it).
func newObjectTarget(root, file, name string, n, backends int) (_ *target, err error) {
	spec, err := objectSpec(file, name)
	if err != nil {
		return nil, err
	}
	t := &target{name: filepath.Base(file) + ":" + name, root: root,
		attachType: spec.Programs[name].AttachType, flags: spec.Programs[name].Flags}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.close())
		}
	}()
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	repl := map[string]*ebpf.Map{}
	if usesWeirMaps(spec) {
		if t.maps, err = openMaps(root, n, backends); err != nil {
			return nil, err
		}
		t.add(t.maps.Close)
		t.dp = bpf.NewDatapath(t.maps)
		for mname, m := range t.maps.All() {
			ms, ok := spec.Maps[mname]
			if !ok {
				continue
			}
			info, err := m.Info()
			if err != nil {
				return nil, fmt.Errorf("map %s: %w", mname, err)
			}
			// The object was compiled with default sizes: take the
			// live ones, as bpf.Maps.LoadAndAssign does.
			ms.MaxEntries, ms.Flags = info.MaxEntries, info.Flags
			repl[mname] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load %s: the verifier rejected it: %+v", t.name, verr)
		}
		return nil, fmt.Errorf("load %s: %w", t.name, err)
	}
	t.add(func() error { coll.Close(); return nil })
	t.prog = coll.Programs[name]
	return t, nil
}
