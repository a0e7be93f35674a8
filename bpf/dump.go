package bpf

import (
	"fmt"
	"net/netip"
	"slices"
	"unsafe"

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

// dumpMaglev reads every table the index names.
func (d *Datapath) dumpMaglev(s *lb.DatapathState) error {
	tables, err := readTables(d.maps)
	if err != nil {
		return fmt.Errorf("dump the Maglev tables: %w", err)
	}
	s.Maglev = tables
	return nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
