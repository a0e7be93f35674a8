package bpf

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

func slabTable(size int, salt uint32) []lb.BackendID {
	t := make([]lb.BackendID, size)
	for i := range t {
		t[i] = lb.BackendID(1 + (uint32(i)+salt)%7)
	}
	return t
}

func mustDumpTables(t *testing.T, d *Datapath, want map[lb.TableID][]lb.BackendID) {
	t.Helper()
	if got := mustDump(t, d).Maglev; !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("dumped %d tables, want the %d written (or they differ)", len(got), len(want))
	}
}

// A large batch writes existing tables of the same size in place, moves
// resized ones to new runs, and reads back as written; no two tables share
// a slot.
func TestDatapathMaglevLargeBatch(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	const n = 300
	first := map[lb.TableID][]lb.BackendID{}
	for i := range n {
		first[lb.ServiceID(i+1).Table(0)] = slabTable(251, uint32(i))
	}
	if err := d.UpsertMaglevs(first); err != nil {
		t.Fatal(err)
	}
	before := map[lb.TableID]tableLoc{}
	for id := range first {
		before[id] = tableAt(t, d, id)
	}
	second := map[lb.TableID][]lb.BackendID{}
	for id := range first {
		size := 251
		if id.Service()%10 == 0 {
			size = 509
		}
		second[id] = slabTable(size, uint32(id)+1)
	}
	for i := range 20 {
		second[lb.ServiceID(n+i+1).Table(1)] = slabTable(251, 3)
	}
	if err := d.UpsertMaglevs(second); err != nil {
		t.Fatal(err)
	}
	var runs []extent
	for id, tb := range second {
		at := tableAt(t, d, id)
		old, existed := before[id]
		if inPlace := existed && len(tb) == 251; (at == old) != inPlace {
			t.Errorf("table %s: at %+v, was %+v; want rewritten in place: %v", id, at, old, inPlace)
		}
		runs = append(runs, extentOf(at))
	}
	slices.SortFunc(runs, func(a, b extent) int { return int(a.start) - int(b.start) })
	for i := 1; i < len(runs); i++ {
		if runs[i].start < runs[i-1].end {
			t.Fatalf("runs %+v and %+v overlap", runs[i-1], runs[i])
		}
	}
	mustDumpTables(t, d, second)
}

// When the slab has no room, runs that tables left come back after a grace
// period before the slab grows; when that isn't enough it grows, and the
// tables already in it keep their content and place.
func TestDatapathMaglevSlabReuseAndGrowth(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	s := d.maps.tables
	id := lb.ServiceID(1).Table(0)
	want := map[lb.TableID][]lb.BackendID{}
	for i, size := range []int{30000, 29999, 29998} {
		want[id] = slabTable(size, uint32(i))
		if err := d.UpsertMaglev(id, want[id]); err != nil {
			t.Fatal(err)
		}
	}
	if s.slots != minSlabSlots {
		t.Errorf("slab has %d slots after resizes that fit once freed runs are reused, want %d", s.slots, minSlabSlots)
	}
	if at := tableAt(t, d, id); at.off != 0 {
		t.Errorf("third table at slot %d, want 0 (the first run, freed by a grace period)", at.off)
	}
	mustDumpTables(t, d, want)

	other := lb.ServiceID(2).Table(1)
	want[other] = slabTable(60000, 9)
	if err := d.UpsertMaglev(other, want[other]); err != nil {
		t.Fatal(err)
	}
	if s.slots <= minSlabSlots {
		t.Errorf("slab has %d slots, want it grown", s.slots)
	}
	if at := tableAt(t, d, id); at.off != 0 {
		t.Errorf("growing moved a table to slot %d", at.off)
	}
	mustDumpTables(t, d, want)

	// What a program reads: one slab in weir_maglev, of the new size.
	slab, err := currentSlab(d.maps)
	if err != nil {
		t.Fatal(err)
	}
	defer slab.Close()
	if got := uint64(slab.MaxEntries()) * slotsPerElem; got != s.slots {
		t.Errorf("weir_maglev holds a slab of %d slots, want %d", got, s.slots)
	}
}

// A restarted agent reads where the tables are from the pinned index and
// writes new ones beside them.
func TestDatapathMaglevRestart(t *testing.T) {
	d, root := mustDatapath(t, smallSizes)
	want := map[lb.TableID][]lb.BackendID{}
	for i := range 50 {
		want[lb.ServiceID(i+1).Table(0)] = slabTable(251, uint32(i))
	}
	if err := d.UpsertMaglevs(want); err != nil {
		t.Fatal(err)
	}
	if err := d.maps.Close(); err != nil {
		t.Fatal(err)
	}
	d = mustReopen(t, root, smallSizes)
	for i := range 50 {
		want[lb.ServiceID(i+100).Table(1)] = slabTable(509, uint32(i))
	}
	want[lb.ServiceID(1).Table(0)] = slabTable(251, 77) // in place
	if err := d.UpsertMaglevs(want); err != nil {
		t.Fatal(err)
	}
	mustDumpTables(t, d, want)
	if err := d.DeleteMaglevs([]lb.TableID{lb.ServiceID(2).Table(0)}); err != nil {
		t.Fatal(err)
	}
	delete(want, lb.ServiceID(2).Table(0))
	mustDumpTables(t, mustReopen(t, root, smallSizes), want)
}

// Maps pinned by an agent that kept a Maglev table per inner map are
// refused with the way out, not misread.
func TestOpenMapsRefusesInnerMapTables(t *testing.T) {
	root := testutil.BPFRoot(t)
	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Flags: 1 << 12 /* BPF_F_INNER_MAP */}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "weir_maglev", Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 8, InnerMap: inner})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(root + "/weir_maglev"); err != nil {
		t.Fatal(err)
	}
	_, err = OpenMaps(root, smallSizes)
	if err == nil || !strings.Contains(err.Error(), "rm -r "+root) {
		t.Fatalf("OpenMaps over an old weir_maglev: %v, want an error saying to remove the pins", err)
	}
}
