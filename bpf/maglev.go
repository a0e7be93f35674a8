package bpf

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/lb"
)

// Every Maglev table lives in one array of slots, the slab: the only
// element of weir_maglev. A table is a run of consecutive slots, and
// weir_maglev_index says, per lb.TableID, where its run starts and how
// long it is, in one 64-bit word that programs read once.
//
// A table that keeps its size is rewritten in its run, in place: the
// caller does that only to a table no service entry uses (the spare
// generation). A new table, or one whose size changes, is written into a
// free run and then published with one atomic store of its index word, so
// a packet reads the old run or the new one, never a mix. The run it left
// is quarantined: it is reused only after an RCU grace period, when no
// program can still be reading it. The agent makes the kernel wait for one
// (by writing weir_maglev's element again) only when it runs out of free
// slots, and grows the slab, replacing the element with a larger copy,
// when that isn't enough.
//
// Slots and index words are written through memory mappings that are
// unmapped before a call returns, so that a mapped slab never counts in
// the agent's memory. A first sync of 10k tables is a few mappings and a
// copy; it used to be an inner map per table, about 40 µs of syscalls each.

const (
	// slotsPerElem is WEIR_MAGLEV_SLOTS_PER_ELEM: slots per array element
	// of the slab, one cache line.
	slotsPerElem = 16
	slotSize     = 4
	// Slab sizes are whole pages of elements, at least minSlabSlots.
	slabGrain    = 1024
	minSlabSlots = 1 << 16
	// Offsets in the index are 32-bit.
	maxSlabSlots = 1<<32 - slabGrain
	// Tables and index words further apart than this are written through
	// separate mappings, so that a write never maps a large stretch of
	// slab (or index) it doesn't touch.
	mapGap = 1 << 20
)

// tableLoc is where a table is in the slab, as its index word holds it.
type tableLoc struct{ off, size uint32 }

func (l tableLoc) word() uint64 { return uint64(l.size)<<32 | uint64(l.off) }

func locOf(word uint64) tableLoc { return tableLoc{off: uint32(word), size: uint32(word >> 32)} }

// extent is a run of slots [start, end).
type extent struct{ start, end uint64 }

// tableSlab is the agent's view of the slab: which runs hold tables,
// which are free, which wait for a grace period. One per Maps, shared by
// every Datapath on them; built from the index on first use, so that an
// agent restarting over pinned maps carries on with the runs it finds.
type tableSlab struct {
	mu     sync.Mutex
	loaded bool
	slab   *ebpf.Map // nil until the first table is written
	slots  uint64
	locs   []tableLoc // by lb.TableID, as the index; size 0: no table
	free   []extent   // sorted, coalesced
	// quarantine holds runs a table left since the last grace period.
	quarantine []extent
	// swapDone reports the end of the last write that swapped a slab in,
	// which the kernel returns from after a grace period; swapFree are
	// the runs quarantined before it, free from then on.
	swapDone <-chan error
	swapFree []extent
}

// UpsertMaglev writes a Maglev table: in place when the table exists with
// the same size, else into a new run published atomically. An empty table
// is an error: a service without backends has its tables deleted.
func (d *Datapath) UpsertMaglev(id lb.TableID, table []lb.BackendID) error {
	return d.writeTables([]lb.TableID{id}, [][]lb.BackendID{table})
}

// UpsertMaglevs writes many tables, each as UpsertMaglev does, through
// one mapping of the slab where they are close together. Every table is
// validated before anything is written.
func (d *Datapath) UpsertMaglevs(tables map[lb.TableID][]lb.BackendID) error {
	ids := slices.Sorted(maps.Keys(tables))
	ts := make([][]lb.BackendID, len(ids))
	for i, id := range ids {
		ts[i] = tables[id]
	}
	return d.writeTables(ids, ts)
}

// DeleteMaglev removes a table.
func (d *Datapath) DeleteMaglev(id lb.TableID) error {
	return d.DeleteMaglevs([]lb.TableID{id})
}

// DeleteMaglevs removes tables; missing ones are skipped. A packet that
// reads a deleted table's index word finds no table (the service rejects
// new flows) or the old run, intact until a grace period has passed.
func (d *Datapath) DeleteMaglevs(ids []lb.TableID) error {
	s := d.maps.tables
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(d.maps); err != nil {
		return err
	}
	var gone []lb.TableID
	for _, id := range ids {
		if int(id) < len(s.locs) && s.locs[id].size != 0 {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	gone = slices.Compact(gone)
	if err := storeIndex(d.maps.MaglevIndex, gone, make([]uint64, len(gone))); err != nil {
		s.reset(d.maps)
		return fmt.Errorf("delete maglev tables: %w", err)
	}
	for _, id := range gone {
		s.retire(s.locs[id])
		s.locs[id] = tableLoc{}
	}
	return nil
}

// writeTables writes tables[i] as table ids[i]; ids are sorted.
func (d *Datapath) writeTables(ids []lb.TableID, tables [][]lb.BackendID) error {
	for i, id := range ids {
		if err := checkTable(id, tables[i]); err != nil {
			return err
		}
		if limit := d.maps.MaglevIndex.MaxEntries(); uint32(id) >= limit {
			return fmt.Errorf("maglev table %s: %w", id, &MapFullError{Map: "weir_maglev_index", MaxEntries: limit, Flag: sizeFlag("weir_maglev_index")})
		}
	}
	s := d.maps.tables
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(d.maps); err != nil {
		return err
	}
	// Runs for the tables that need one: new, or another size.
	locs := make([]tableLoc, len(ids))
	var moved []int
	var need uint64
	for i, id := range ids {
		if cur := s.locs[id]; int(cur.size) == len(tables[i]) {
			locs[i] = cur
			continue
		}
		moved = append(moved, i)
		need += uint64(len(tables[i]))
	}
	undo := func() {
		for _, i := range moved {
			if locs[i].size != 0 {
				s.free = addExtent(s.free, extentOf(locs[i]))
			}
		}
	}
	for _, i := range moved {
		loc, err := s.alloc(d, uint32(len(tables[i])), need)
		if err != nil {
			undo()
			return fmt.Errorf("maglev table %s: %w", ids[i], err)
		}
		locs[i] = loc
		need -= uint64(loc.size)
	}
	if err := s.fill(locs, tables); err != nil {
		undo()
		return err
	}
	if len(moved) == 0 {
		return nil
	}
	// ids are sorted, and so the moved ones.
	pub := make([]lb.TableID, len(moved))
	words := make([]uint64, len(moved))
	for j, i := range moved {
		pub[j], words[j] = ids[i], locs[i].word()
	}
	if err := storeIndex(d.maps.MaglevIndex, pub, words); err != nil {
		// Some words may be stored: what the index says is the truth.
		s.reset(d.maps)
		return fmt.Errorf("maglev tables: %w", err)
	}
	for _, i := range moved {
		if old := s.locs[ids[i]]; old.size != 0 {
			s.retire(old)
		}
		s.locs[ids[i]] = locs[i]
	}
	return nil
}

// checkTable refuses what the datapath can't use: an empty table, or a
// slot holding backend 0, which is never allocated.
func checkTable(id lb.TableID, table []lb.BackendID) error {
	if len(table) == 0 {
		return fmt.Errorf("maglev table %s is empty (delete the tables of a service without backends instead)", id)
	}
	if len(table) > maxSlabSlots/2 {
		return fmt.Errorf("maglev table %s has %d slots, more than the slab can hold", id, len(table))
	}
	for i, b := range table {
		if b == 0 {
			return fmt.Errorf("maglev table %s: slot %d holds backend ID 0, which is never allocated", id, i)
		}
	}
	return nil
}

// load reads the slab and the index pinned maps already hold, once.
func (s *tableSlab) load(m *Maps) error {
	if s.loaded {
		return nil
	}
	s.locs = make([]tableLoc, m.MaglevIndex.MaxEntries())
	slab, err := currentSlab(m)
	if err != nil {
		return err
	}
	if slab != nil {
		s.slab, s.slots = slab, uint64(slab.MaxEntries())*slotsPerElem
	}
	var used []extent
	err = readIndex(m.MaglevIndex, func(id lb.TableID, loc tableLoc) error {
		e := extentOf(loc)
		if e.end > s.slots {
			return fmt.Errorf("table %s at slots %d-%d, beyond the slab's %d", id, e.start, e.end, s.slots)
		}
		s.locs[id] = loc
		used = append(used, e)
		return nil
	})
	if err != nil {
		s.closeSlab()
		return fmt.Errorf("read map weir_maglev_index: %w (remove the pins under %s to start afresh)", err, m.root)
	}
	slices.SortFunc(used, func(a, b extent) int { return int(a.start) - int(b.start) })
	next := uint64(0)
	for _, e := range used {
		if e.start < next {
			s.closeSlab()
			return fmt.Errorf("map weir_maglev_index: two tables share slot %d (remove the pins under %s to start afresh)", e.start, m.root)
		}
		if e.start > next {
			s.free = append(s.free, extent{next, e.start})
		}
		next = e.end
	}
	if next < s.slots {
		s.free = append(s.free, extent{next, s.slots})
	}
	s.loaded = true
	return nil
}

// reset forgets everything, to be read again from the index by the next
// call, after a grace period: a run this view had quarantined may look
// free in the index.
func (s *tableSlab) reset(m *Maps) {
	if s.slab != nil {
		_ = s.grace(m)
	}
	s.closeSlab()
	s.loaded, s.locs, s.free, s.quarantine, s.swapFree = false, nil, nil, nil, nil
}

func (s *tableSlab) closeSlab() {
	if s.slab != nil {
		s.slab.Close()
		s.slab, s.slots = nil, 0
	}
}

// currentSlab opens weir_maglev's element; nil when there is none yet.
func currentSlab(m *Maps) (*ebpf.Map, error) {
	var zero, id uint32
	err := m.Maglev.Lookup(unsafe.Pointer(&zero), unsafe.Pointer(&id))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up the Maglev slab in map weir_maglev: %w", err)
	}
	slab, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return nil, fmt.Errorf("open the Maglev slab (map %d): %w", id, err)
	}
	return slab, nil
}

// readIndex calls fn for every table the index names.
func readIndex(index *ebpf.Map, fn func(lb.TableID, tableLoc) error) error {
	n := uint64(index.MaxEntries())
	mem, at, err := mapRange(index, 0, n*8, false)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	for i := range n {
		w := atomic.LoadUint64((*uint64)(unsafe.Pointer(&mem[at+int(i)*8])))
		if w == 0 {
			continue
		}
		loc := locOf(w)
		if loc.size == 0 {
			return fmt.Errorf("table %s: empty run at slot %d", lb.TableID(i), loc.off)
		}
		if err := fn(lb.TableID(i), loc); err != nil {
			return err
		}
	}
	return nil
}

// storeIndex stores words[i] in the index word of ids[i] (ids sorted),
// each with one atomic 64-bit store: a program reads a table's offset and
// size together.
func storeIndex(index *ebpf.Map, ids []lb.TableID, words []uint64) error {
	return storeMapped(index, 8, len(ids), func(i int) uint64 { return uint64(ids[i]) }, func(p unsafe.Pointer, i int) {
		atomic.StoreUint64((*uint64)(p), words[i])
	})
}

// storeMapped calls store with a pointer to the value of each of n keys
// (key(i), ascending) of a BPF_F_MMAPABLE array whose values are elem
// bytes apart, mapping the array once per group of keys close together.
func storeMapped(m *ebpf.Map, elem uint64, n int, key func(i int) uint64, store func(p unsafe.Pointer, i int)) error {
	for i := 0; i < n; {
		j := i + 1
		for j < n && (key(j)-key(j-1))*elem <= mapGap {
			j++
		}
		from, to := key(i)*elem, key(j-1)*elem+elem
		mem, at, err := mapRange(m, from, to, true)
		if err != nil {
			return fmt.Errorf("map %s: %w", m.String(), err)
		}
		for k := i; k < j; k++ {
			store(unsafe.Pointer(&mem[at+int(key(k)*elem-from)]), k)
		}
		if err := unix.Munmap(mem); err != nil {
			return fmt.Errorf("unmap %s: %w", m.String(), err)
		}
		i = j
	}
	return nil
}

// alloc takes a free run of size slots. When none is left it waits for a
// grace period to reuse quarantined runs, then grows the slab by at least
// need slots (what the rest of the caller's batch needs).
func (s *tableSlab) alloc(d *Datapath, size uint32, need uint64) (tableLoc, error) {
	for attempt := 0; ; attempt++ {
		for i, e := range s.free {
			if e.end-e.start < uint64(size) {
				continue
			}
			loc := tableLoc{off: uint32(e.start), size: size}
			if s.free[i].start += uint64(size); s.free[i].start == e.end {
				s.free = slices.Delete(s.free, i, i+1)
			}
			return loc, nil
		}
		switch {
		case attempt == 0 && len(s.swapFree) > 0:
			s.settle()
		case attempt == 0 && len(s.quarantine) > 0 && s.slab != nil:
			if err := s.grace(d.maps); err != nil {
				return tableLoc{}, err
			}
		case attempt <= 1:
			if err := s.grow(d, need); err != nil {
				return tableLoc{}, err
			}
		default:
			return tableLoc{}, fmt.Errorf("no run of %d free slots in the Maglev slab", size)
		}
	}
}

// retire quarantines a run a table left.
func (s *tableSlab) retire(loc tableLoc) {
	s.quarantine = append(s.quarantine, extentOf(loc))
}

// grace waits until no program can still read a quarantined run, by
// writing weir_maglev's element again (the kernel waits for an RCU grace
// period after a write to a map of maps), and frees those runs.
func (s *tableSlab) grace(m *Maps) error {
	s.settle()
	var zero uint32
	if err := m.Maglev.Update(unsafe.Pointer(&zero), s.slab, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("wait for readers of the Maglev slab: write map weir_maglev: %w", err)
	}
	s.release()
	return nil
}

func (s *tableSlab) release() {
	for _, e := range s.quarantine {
		s.free = addExtent(s.free, e)
	}
	s.quarantine = nil
}

// grow replaces the slab with a larger one holding a copy of every run,
// and frees the quarantine: the swap waits for a grace period. The new
// slab has room for need more slots and half as much again, and is at
// least twice as large, so that the tables of services added one by one
// after a start don't each pay for a copy.
func (s *tableSlab) grow(d *Datapath, need uint64) error {
	size := max(2*s.slots, (s.slots+need)*3/2, minSlabSlots)
	size = (size + slabGrain - 1) / slabGrain * slabGrain
	if size > maxSlabSlots {
		if s.slots+need > maxSlabSlots {
			return fmt.Errorf("the Maglev tables need %d slots, more than the slab's limit of %d: lower --maglev-table-size or the number of services", s.slots+need, uint64(maxSlabSlots))
		}
		size = maxSlabSlots
	}
	spec := *d.slabSpec
	spec.MaxEntries = uint32(size / slotsPerElem)
	slab, err := ebpf.NewMap(&spec)
	if err != nil {
		return fmt.Errorf("create a Maglev slab of %d slots (%d MiB): %w (the kernel needs BPF_F_MMAPABLE arrays and that much memory; lower --maglev-table-size or the number of services)", size, size*slotSize>>20, err)
	}
	if s.slab != nil {
		if err := copySlab(slab, s.slab, s.slots); err != nil {
			slab.Close()
			return fmt.Errorf("copy the Maglev slab: %w", err)
		}
	}
	s.settle()
	done, err := swapIn(d.maps.Maglev, slab)
	if err != nil {
		slab.Close()
		return writeError("maglev slab", "weir_maglev", d.maps.Maglev, err)
	}
	old := s.slots
	s.closeSlab()
	s.free = addExtent(s.free, extent{old, size})
	s.slab, s.slots = slab, size
	s.swapDone, s.swapFree, s.quarantine = done, s.quarantine, nil
	return nil
}

// swapIn makes slab weir_maglev's element. The kernel makes the write
// wait for an RCU grace period (8-16 ms here) before it returns, but
// programs read the new slab as soon as it is stored: so the write runs
// on a goroutine of its own, and swapIn returns once a lookup sees the
// slab, with a channel that reports the write's end.
func swapIn(outer, slab *ebpf.Map) (<-chan error, error) {
	info, err := slab.Info()
	if err != nil {
		return nil, err
	}
	id, ok := info.ID()
	if !ok {
		return nil, errors.New("the kernel does not report map IDs")
	}
	done := make(chan error, 1)
	go func() {
		var zero uint32
		done <- outer.Update(unsafe.Pointer(&zero), slab, ebpf.UpdateAny)
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, err
			}
			ended := make(chan error, 1)
			ended <- nil
			return ended, nil
		default:
		}
		var zero, cur uint32
		if outer.Lookup(unsafe.Pointer(&zero), unsafe.Pointer(&cur)) == nil && ebpf.MapID(cur) == id {
			return done, nil
		}
		runtime.Gosched()
	}
}

// settle waits for the last swap's grace period and frees the runs that
// waited for it.
func (s *tableSlab) settle() {
	if s.swapDone == nil {
		return
	}
	// An error here would be the kernel's after it stored the slab: the
	// wait is what matters, and it is over either way.
	<-s.swapDone
	s.swapDone = nil
	for _, e := range s.swapFree {
		s.free = addExtent(s.free, e)
	}
	s.swapFree = nil
}

func copySlab(dst, src *ebpf.Map, slots uint64) error {
	from, _, err := mapRange(src, 0, slots*slotSize, false)
	if err != nil {
		return err
	}
	defer unix.Munmap(from)
	to, _, err := mapRange(dst, 0, slots*slotSize, true)
	if err != nil {
		return err
	}
	copy(to, from)
	return unix.Munmap(to)
}

// fill writes every table into its run, mapping the slab once per group
// of runs that lie close together.
func (s *tableSlab) fill(locs []tableLoc, tables [][]lb.BackendID) error {
	order := make([]int, len(locs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(locs[a].off) - int(locs[b].off) })
	for len(order) > 0 {
		n, end := 1, uint64(extentOf(locs[order[0]]).end)
		for n < len(order) && uint64(locs[order[n]].off)*slotSize <= end*slotSize+mapGap {
			end = max(end, extentOf(locs[order[n]]).end)
			n++
		}
		from := uint64(locs[order[0]].off) * slotSize
		mem, at, err := mapRange(s.slab, from, end*slotSize, true)
		if err != nil {
			return fmt.Errorf("map the Maglev slab: %w", err)
		}
		for _, i := range order[:n] {
			p := at + int(uint64(locs[i].off)*slotSize-from)
			copy(slotsAt(mem, p, len(tables[i])), tables[i])
		}
		if err := unix.Munmap(mem); err != nil {
			return fmt.Errorf("unmap the Maglev slab: %w", err)
		}
		order = order[n:]
	}
	return nil
}

// slotsAt views n slots of a mapping from byte p as backend IDs: slots
// are native-endian 32-bit words, 4-byte aligned (the mapping starts on a
// page), so a table is written or read with one copy.
func slotsAt(mem []byte, p, n int) []lb.BackendID {
	mem = mem[p : p+n*slotSize]
	return unsafe.Slice((*lb.BackendID)(unsafe.Pointer(unsafe.SliceData(mem))), n)
}

func extentOf(l tableLoc) extent {
	return extent{uint64(l.off), uint64(l.off) + uint64(l.size)}
}

// addExtent inserts e into a sorted, coalesced list.
func addExtent(list []extent, e extent) []extent {
	i, _ := slices.BinarySearchFunc(list, e.start, func(x extent, start uint64) int {
		switch {
		case x.start < start:
			return -1
		case x.start > start:
			return 1
		}
		return 0
	})
	list = slices.Insert(list, i, e)
	// Merge with the neighbours it touches.
	if i+1 < len(list) && list[i].end == list[i+1].start {
		list[i].end = list[i+1].end
		list = slices.Delete(list, i+1, i+2)
	}
	if i > 0 && list[i-1].end == list[i].start {
		list[i-1].end = list[i].end
		list = slices.Delete(list, i, i+1)
	}
	return list
}

// mapRange maps bytes [from, to) of a BPF_F_MMAPABLE array's values,
// widened to whole pages, and returns the mapping and where from is in
// it. The caller unmaps it.
func mapRange(m *ebpf.Map, from, to uint64, write bool) ([]byte, int, error) {
	page := uint64(unix.Getpagesize())
	start := from / page * page
	end := (to + page - 1) / page * page
	prot := unix.PROT_READ
	if write {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(m.FD(), int64(start), int(end-start), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, 0, fmt.Errorf("mmap %d bytes at %d: %w", end-start, start, err)
	}
	return mem, int(from - start), nil
}

// readTables reads the tables the index names from the slab. A slab
// grown between reading the index and opening the slab (an agent writing
// while this reads) is read again.
func readTables(m *Maps) (map[lb.TableID][]lb.BackendID, error) {
	const attempts = 3
	var err error
	for range attempts {
		var out map[lb.TableID][]lb.BackendID
		if out, err = readTablesOnce(m); !errors.Is(err, errSlabGrew) {
			return out, err
		}
	}
	return nil, err
}

var errSlabGrew = errors.New("the index names slots beyond the slab")

func readTablesOnce(m *Maps) (map[lb.TableID][]lb.BackendID, error) {
	out := map[lb.TableID][]lb.BackendID{}
	var locs []tableLoc
	var ids []lb.TableID
	if err := readIndex(m.MaglevIndex, func(id lb.TableID, loc tableLoc) error {
		ids, locs = append(ids, id), append(locs, loc)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read map weir_maglev_index: %w", err)
	}
	if len(ids) == 0 {
		return out, nil
	}
	slab, err := currentSlab(m)
	if err != nil {
		return nil, err
	}
	if slab == nil {
		return nil, fmt.Errorf("map weir_maglev_index names %d tables but weir_maglev holds no slab", len(ids))
	}
	defer slab.Close()
	var end uint64
	for _, l := range locs {
		end = max(end, extentOf(l).end)
	}
	if limit := uint64(slab.MaxEntries()) * slotsPerElem; end > limit {
		return nil, fmt.Errorf("map weir_maglev_index names slots up to %d, beyond the slab's %d: %w", end, limit, errSlabGrew)
	}
	mem, at, err := mapRange(slab, 0, end*slotSize, false)
	if err != nil {
		return nil, fmt.Errorf("map the Maglev slab: %w", err)
	}
	defer unix.Munmap(mem)
	for i, id := range ids {
		t := make([]lb.BackendID, locs[i].size)
		copy(t, slotsAt(mem, at+int(locs[i].off)*slotSize, len(t)))
		out[id] = t
	}
	return out, nil
}

// MaglevUsage is how much of the Maglev slab the tables take.
type MaglevUsage struct {
	Tables    int    // tables the index names
	UsedSlots uint64 // their slots
	Slots     uint64 // the slab's capacity; 0 before the first table
}

// MaglevUsage reads the index and the slab's size.
func (m *Maps) MaglevUsage() (MaglevUsage, error) {
	var u MaglevUsage
	err := readIndex(m.MaglevIndex, func(_ lb.TableID, loc tableLoc) error {
		u.Tables++
		u.UsedSlots += uint64(loc.size)
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("read map weir_maglev_index: %w", err)
	}
	slab, err := currentSlab(m)
	if err != nil || slab == nil {
		return u, err
	}
	defer slab.Close()
	u.Slots = uint64(slab.MaxEntries()) * slotsPerElem
	return u, nil
}
