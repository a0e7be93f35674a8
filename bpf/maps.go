package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MapSizes are the capacities of the sized maps. Zero fields take the
// default from bpf/include/consts.h.
type MapSizes struct {
	Services     uint32 // service keys, service IDs and their Maglev tables
	Frontends    uint32
	Backends     uint32
	SourceRanges uint32
	CT           uint32
	Affinity     uint32
	SNAT         uint32
	SockRevNat   uint32
}

// Maps are the pinned maps every Weir program shares.
type Maps struct {
	Services *ebpf.Map
	Backends *ebpf.Map
	// BackendWords holds, by backend ID, a word naming what the datapath
	// uses of the backend (see backendWord).
	BackendWords *ebpf.Map
	// Maglev holds the slab of Maglev tables (its only element) and
	// MaglevIndex where each table is in it (see maglev.go).
	Maglev       *ebpf.Map
	MaglevIndex  *ebpf.Map
	Frontends    *ebpf.Map
	SourceRanges *ebpf.Map
	CT           *ebpf.Map
	Affinity     *ebpf.Map
	SNAT         *ebpf.Map
	SockRevNat   *ebpf.Map
	ServiceStats *ebpf.Map
	BackendStats *ebpf.Map
	Drops        *ebpf.Map
	Events       *ebpf.Map
	// SockSkipCgroups holds the cgroup v2 IDs the socket load balancer
	// leaves alone (sockmap.Config.SkipCgroups).
	SockSkipCgroups *ebpf.Map
	// NodeAddrs holds this node's addresses: the DSR decap targets of
	// the XDP program (xdp.Program.SetNodeAddrs fills it).
	NodeAddrs *ebpf.Map
	// EventsLost counts, per CPU, events the datapath could not write to
	// Events (rate bound or ring buffer full).
	EventsLost *ebpf.Map
	// SockPeer is socket local storage: the reverse NAT of sockets the
	// socket load balancer connected (read by its getpeername and
	// recvmsg hooks; it can't be listed from user space).
	SockPeer *ebpf.Map

	// MaglevSlab is the spec of the Maglev slab; MaxEntries is set when
	// it is created or grown.
	MaglevSlab *ebpf.MapSpec
	tables     *tableSlab
	root       string
}

// MapsSpec returns the specs of the shared maps with sizes applied.
func MapsSpec(sizes MapSizes) (*ebpf.CollectionSpec, error) {
	spec, err := loadWeirMaps()
	if err != nil {
		return nil, fmt.Errorf("load map specs: %w", err)
	}
	set := func(name string, n uint32) {
		if n != 0 {
			spec.Maps[name].MaxEntries = n
		}
	}
	set("weir_services", sizes.Services)
	if sizes.Services != 0 {
		// Two tables (generations) per service ID, IDs from 1.
		spec.Maps["weir_maglev_index"].MaxEntries = 2*sizes.Services + 2
	}
	set("weir_service_stats", sizes.Services)
	set("weir_frontends", sizes.Frontends)
	set("weir_backends", sizes.Backends)
	if sizes.Backends != 0 {
		spec.Maps["weir_backend_words"].MaxEntries = sizes.Backends + 1 // IDs from 1
	}
	set("weir_backend_stats", sizes.Backends)
	set("weir_source_ranges", sizes.SourceRanges)
	set("weir_ct", sizes.CT)
	set("weir_affinity", sizes.Affinity)
	set("weir_snat", sizes.SNAT)
	set("weir_sock_revnat", sizes.SockRevNat)
	return spec, nil
}

// OpenMaps creates the shared maps pinned under root, or opens them when
// they are already pinned there (an agent restart). A pinned map whose
// layout or size differs from the requested one is an error naming the
// map: resizing would drop the state that keeps traffic flowing, so the
// operator must remove the pin (or restore the old size) deliberately.
func OpenMaps(root string, sizes MapSizes) (*Maps, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", root, err)
	}
	spec, err := MapsSpec(sizes)
	if err != nil {
		return nil, err
	}
	var objs weirMapsMaps
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: root}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("pinned maps under %s do not match this agent's map sizes or layout (%w); restart with the sizes they were created with, or remove the pins with `rm -r %s` (this drops connection-tracking state)", root, err, root)
	}
	if err != nil {
		return nil, fmt.Errorf("create maps under %s: %w", root, err)
	}
	return &Maps{
		Services:        objs.WeirServices,
		Backends:        objs.WeirBackends,
		BackendWords:    objs.WeirBackendWords,
		Maglev:          objs.WeirMaglev,
		MaglevIndex:     objs.WeirMaglevIndex,
		Frontends:       objs.WeirFrontends,
		SourceRanges:    objs.WeirSourceRanges,
		CT:              objs.WeirCt,
		Affinity:        objs.WeirAffinity,
		SNAT:            objs.WeirSnat,
		SockRevNat:      objs.WeirSockRevnat,
		ServiceStats:    objs.WeirServiceStats,
		BackendStats:    objs.WeirBackendStats,
		Drops:           objs.WeirDrops,
		Events:          objs.WeirEvents,
		SockSkipCgroups: objs.WeirSockSkipCgroups,
		NodeAddrs:       objs.WeirNodeAddrs,
		EventsLost:      objs.WeirEventsLost,
		SockPeer:        objs.WeirSockPeer,
		MaglevSlab:      spec.Maps["weir_maglev"].InnerMap.Copy(),
		tables:          &tableSlab{},
		root:            root,
	}, nil
}

// Root is the bpffs directory the maps are pinned in.
func (m *Maps) Root() string { return m.root }

// All returns the maps by their C names.
func (m *Maps) All() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"weir_services":          m.Services,
		"weir_backends":          m.Backends,
		"weir_backend_words":     m.BackendWords,
		"weir_maglev":            m.Maglev,
		"weir_maglev_index":      m.MaglevIndex,
		"weir_frontends":         m.Frontends,
		"weir_source_ranges":     m.SourceRanges,
		"weir_ct":                m.CT,
		"weir_affinity":          m.Affinity,
		"weir_snat":              m.SNAT,
		"weir_sock_revnat":       m.SockRevNat,
		"weir_service_stats":     m.ServiceStats,
		"weir_backend_stats":     m.BackendStats,
		"weir_drops":             m.Drops,
		"weir_events":            m.Events,
		"weir_sock_skip_cgroups": m.SockSkipCgroups,
		"weir_node_addrs":        m.NodeAddrs,
		"weir_events_lost":       m.EventsLost,
		"weir_sock_peer":         m.SockPeer,
	}
}

// LoadAndAssign loads a program object that includes maps.h, using these
// maps in place of the object's own copies so that every program shares
// them. opts may be nil.
func (m *Maps) LoadAndAssign(spec *ebpf.CollectionSpec, to any, opts *ebpf.CollectionOptions) error {
	var o ebpf.CollectionOptions
	if opts != nil {
		o = *opts
	}
	repl := map[string]*ebpf.Map{}
	for name, mp := range o.MapReplacements {
		repl[name] = mp
	}
	for name, mp := range m.All() {
		ms, ok := spec.Maps[name]
		if !ok {
			continue
		}
		info, err := mp.Info()
		if err != nil {
			return fmt.Errorf("map %s: %w", name, err)
		}
		// The object was compiled with default sizes; take the live ones.
		ms.MaxEntries = info.MaxEntries
		ms.Flags = info.Flags
		ms.Pinning = ebpf.PinNone
		repl[name] = mp
	}
	o.MapReplacements = repl
	return spec.LoadAndAssign(to, &o)
}

// Close releases the maps' file descriptors; the pins stay.
func (m *Maps) Close() error {
	var errs []error
	if m.tables != nil {
		m.tables.mu.Lock()
		m.tables.settle()
		m.tables.closeSlab()
		m.tables.loaded = false
		m.tables.mu.Unlock()
	}
	for _, mp := range m.All() {
		if mp != nil {
			errs = append(errs, mp.Close())
		}
	}
	return errors.Join(errs...)
}

// Unpin removes the maps' pins (the maps live on while something holds them).
func (m *Maps) Unpin() error {
	var errs []error
	for _, mp := range m.All() {
		if mp != nil {
			errs = append(errs, mp.Unpin())
		}
	}
	return errors.Join(errs...)
}

// EnsureBPFFS mounts a bpffs at dir unless dir is already on one. The
// agent calls it for its --bpf-root so a machine that boots without
// /sys/fs/bpf mounted still works.
func EnsureBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	// Mount at the nearest existing parent that is the standard location,
	// otherwise at dir itself.
	target := dir
	if parent := filepath.Dir(dir); parent == "/sys/fs/bpf" {
		target = parent
	}
	if err := unix.Mount("bpf", target, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w (mount one yourself: mount -t bpf bpf %s)", target, err, target)
	}
	return os.MkdirAll(dir, 0o755)
}
