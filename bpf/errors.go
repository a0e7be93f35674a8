package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MapFullError reports a write refused because the map is at capacity.
// Entries already in the map are untouched; raising the size needs the
// pins removed (see OpenMaps), so the error names the agent flag.
type MapFullError struct {
	Map        string // C name, e.g. weir_backends
	MaxEntries uint32
	Flag       string // agent flag that sizes the map
}

func (e *MapFullError) Error() string {
	return fmt.Sprintf("map %s is full (%d entries): raise %s", e.Map, e.MaxEntries, e.Flag)
}

// sizeFlag is the weir agent flag that sizes a map (cmd/weir/agent.go).
func sizeFlag(mapName string) string {
	switch mapName {
	case "weir_services", "weir_maglev_index", "weir_service_stats":
		return "--bpf-map-services"
	case "weir_frontends":
		return "--bpf-map-frontends"
	case "weir_backends", "weir_backend_stats", "weir_backend_words":
		return "--bpf-map-backends"
	case "weir_source_ranges":
		return "--bpf-map-source-ranges"
	case "weir_ct":
		return "--bpf-map-ct"
	case "weir_affinity":
		return "--bpf-map-affinity"
	case "weir_snat":
		return "--bpf-map-snat"
	case "weir_sock_revnat":
		return "--bpf-map-sock-revnat"
	}
	return "the map's size"
}

// writeError names the object and the map of a failed write. A full map
// is reported as *MapFullError: hash maps say E2BIG when a new key does not
// fit, the LPM trie says ENOSPC.
func writeError(what, mapName string, m *ebpf.Map, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%s: %w", what, &MapFullError{Map: mapName, MaxEntries: m.MaxEntries(), Flag: sizeFlag(mapName)})
	}
	return fmt.Errorf("%s: write map %s: %w", what, mapName, err)
}

// deleteError is nil for a missing key: deletes are idempotent. Callers
// name the object only when it isn't nil, so that a delete that succeeded
// formats nothing.
func deleteError(mapName string, err error) error {
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return fmt.Errorf("delete from map %s: %w", mapName, err)
}
