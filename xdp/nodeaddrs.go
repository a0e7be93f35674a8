package xdp

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
)

// SetNodeAddrs makes addrs the node's addresses: tunnel packets to them
// are decapsulated. It replaces the whole set (new ones first, then the
// stale ones go), so an address in both the old and the new set never
// stops working.
func (p *Program) SetNodeAddrs(addrs []netip.Addr) error {
	m := p.maps.NodeAddrs
	if m == nil {
		return fmt.Errorf("xdp: the shared maps have no weir_node_addrs (open them with this version's bpf.OpenMaps)")
	}
	want := map[bpf.Addr]bool{}
	one := uint8(1)
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("xdp: invalid node address in %v", addrs)
		}
		k := bpf.AddrFrom(a.Unmap())
		want[k] = true
		if err := m.Update(k, one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("xdp: add node address %s to weir_node_addrs (at most %d): %w", a, m.MaxEntries(), err)
		}
	}
	var (
		k     bpf.Addr
		v     uint8
		stale []bpf.Addr
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("xdp: read weir_node_addrs: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !isNotExist(err) {
			return fmt.Errorf("xdp: remove node address %s: %w", k, err)
		}
	}
	return nil
}

func isNotExist(err error) bool { return errors.Is(err, ebpf.ErrKeyNotExist) }
