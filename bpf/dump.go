package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/lb"
)

// Dump reads every map the Datapath writes. It serves restoring state
// after a restart and inspection; it does not lock out writers, so a dump
// taken during writes may mix before and after (each entry is whole).
// Source ranges are sorted per service.
func (d *Datapath) Dump() (*lb.DatapathState, error) {
	s := lb.NewDatapathState()
	m := d.maps
	{
		var k ServiceKey
		var v ServiceValue
		it := m.Services.Iterate()
		for it.Next(unsafe.Pointer(&k), unsafe.Pointer(&v)) {
			s.Services[k.LB()] = v.LB()
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump map weir_services: %w", err)
		}
	}
	{
		var k uint32
		var v BackendValue
		it := m.Backends.Iterate()
		for it.Next(unsafe.Pointer(&k), unsafe.Pointer(&v)) {
			s.Backends[lb.BackendID(k)] = v.LB()
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump map weir_backends: %w", err)
		}
	}
	{
		var k uint32
		var v FrontendValue
		it := m.Frontends.Iterate()
		for it.Next(unsafe.Pointer(&k), unsafe.Pointer(&v)) {
			s.Frontends[lb.FrontendID(k)] = v.LB()
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump map weir_frontends: %w", err)
		}
	}
	{
		var k SourceRangeKey
		var v uint8
		it := m.SourceRanges.Iterate()
		for it.Next(unsafe.Pointer(&k), unsafe.Pointer(&v)) {
			id, p, err := k.Prefix()
			if err != nil {
				return nil, fmt.Errorf("dump map weir_source_ranges: %w", err)
			}
			s.SourceRanges[id] = append(s.SourceRanges[id], p)
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump map weir_source_ranges: %w", err)
		}
		for _, ps := range s.SourceRanges {
			slices.SortFunc(ps, comparePrefix)
		}
	}
	if err := d.dumpMaglev(s); err != nil {
		return nil, err
	}
	return s, nil
}

// dumpMaglev reads every table. Reading the outer map gives an inner map
// ID; a table swapped out before it is opened is gone, so the key is read
// again.
func (d *Datapath) dumpMaglev(s *lb.DatapathState) error {
	var ids []uint32
	{
		var k, inner uint32
		it := d.maps.Maglev.Iterate()
		for it.Next(unsafe.Pointer(&k), unsafe.Pointer(&inner)) {
			ids = append(ids, k)
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("dump map weir_maglev: %w", err)
		}
	}
	for _, id := range ids {
		table, err := d.readMaglev(id)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue // deleted since the iteration
		}
		if err != nil {
			return fmt.Errorf("dump map weir_maglev: table %s: %w", lb.TableID(id), err)
		}
		s.Maglev[lb.TableID(id)] = table
	}
	return nil
}

func (d *Datapath) readMaglev(id uint32) ([]lb.BackendID, error) {
	const attempts = 3 // swaps racing a dump are rare; give up eventually
	var err error
	for range attempts {
		var innerID uint32
		if err = d.maps.Maglev.Lookup(unsafe.Pointer(&id), unsafe.Pointer(&innerID)); err != nil {
			return nil, err
		}
		var inner *ebpf.Map
		inner, err = ebpf.NewMapFromID(ebpf.MapID(innerID))
		if errors.Is(err, os.ErrNotExist) {
			continue // swapped out and freed
		}
		if err != nil {
			return nil, fmt.Errorf("open inner map %d: %w", innerID, err)
		}
		table, err := readTable(inner)
		inner.Close()
		return table, err
	}
	return nil, err
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
