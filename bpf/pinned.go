package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// LoadPinnedMaps opens the maps an agent pinned under root, without
// creating anything: inspection works while the agent is down, and fails
// clearly when no agent ever ran there.
func LoadPinnedMaps(root string) (*Maps, error) {
	spec, err := MapsSpec(MapSizes{})
	if err != nil {
		return nil, err
	}
	m := &Maps{root: root, MaglevSlab: spec.Maps["weir_maglev"].InnerMap.Copy(), tables: &tableSlab{}}
	for name, dst := range m.fields() {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(root, name), &ebpf.LoadPinOptions{ReadOnly: false})
		if errors.Is(err, os.ErrNotExist) {
			// Maps added by a newer version may be missing; the core ones not.
			if name == "weir_maglev_index" {
				m.Close()
				return nil, fmt.Errorf("the maps under %s were made by an older Weir, which kept Maglev tables in inner maps: start this agent with the pins removed (rm -r %s; this drops connection-tracking state)", root, root)
			}
			if name == "weir_services" || name == "weir_backends" || name == "weir_frontends" {
				m.Close()
				return nil, fmt.Errorf("no Weir maps pinned under %s (is the agent's --bpf-root elsewhere?)", root)
			}
			continue
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", filepath.Join(root, name), err)
		}
		*dst = mp
	}
	return m, nil
}

// fields maps C names to the struct fields holding them.
func (m *Maps) fields() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		"weir_services":          &m.Services,
		"weir_backends":          &m.Backends,
		"weir_backend_words":     &m.BackendWords,
		"weir_maglev":            &m.Maglev,
		"weir_maglev_index":      &m.MaglevIndex,
		"weir_frontends":         &m.Frontends,
		"weir_source_ranges":     &m.SourceRanges,
		"weir_ct":                &m.CT,
		"weir_affinity":          &m.Affinity,
		"weir_snat":              &m.SNAT,
		"weir_sock_revnat":       &m.SockRevNat,
		"weir_service_stats":     &m.ServiceStats,
		"weir_backend_stats":     &m.BackendStats,
		"weir_drops":             &m.Drops,
		"weir_events":            &m.Events,
		"weir_sock_skip_cgroups": &m.SockSkipCgroups,
		"weir_node_addrs":        &m.NodeAddrs,
		"weir_events_lost":       &m.EventsLost,
		"weir_sock_peer":         &m.SockPeer,
	}
}
