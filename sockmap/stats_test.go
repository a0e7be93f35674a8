package sockmap

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
)

const noBackendReason = uint32(bpf.ReasonNoBackend)

// sumStats adds up the packets of one slot of a per-CPU stats map.
func sumStats(tb testing.TB, m *ebpf.Map, key uint32) uint64 {
	tb.Helper()
	var per []bpf.TrafficStats
	if err := m.Lookup(key, &per); err != nil {
		tb.Fatalf("read %s[%d]: %v", m, key, err)
	}
	var n uint64
	for _, s := range per {
		n += s.Packets
	}
	return n
}
