package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/lb"
)

// Maglev tables live in inner array maps of weir_maglev, two per service
// (lb.TableID: the service's ID and a generation), sized to the table.
// Service entries name the generation packets use, so the reconciler
// writes a new table into the other one and then switches the entries.
//
// A table that exists with the same size is rewritten in place, through a
// memory mapping of the inner map: no write to the outer map. A new table,
// or one whose size changes, is filled in a new inner map and swapped in
// with one write to the outer map, so a packet sees the old table or the
// new one. The kernel then waits for an RCU grace period (about 10 ms
// here) before the write returns, so that no program still reads the old
// table; that wait, not the filling, dominates such a write, and
// UpsertMaglevs and DeleteMaglevs pay it once per batch. An in-place
// rewrite waits for nothing, which is what makes a backend change cost
// microseconds rather than 10 ms; it is atomic for packets only because
// the caller rewrites a table no entry uses.

const (
	// maglevWorkers chunks of tables are in flight at once, so that one
	// chunk's grace period overlaps the creating and filling of the next.
	maglevWorkers = 4
	// Each new table holds a file descriptor until its chunk is swapped
	// in: a chunk takes a share of what RLIMIT_NOFILE leaves after
	// maglevReservedFDs for the rest of the agent, within these bounds.
	maglevReservedFDs = 1024
	maglevMinChunk    = 16
	maglevMaxChunk    = 2048
)

// maglevChunkSize is how many tables one batch swap carries, from the
// process's file descriptor limit.
func maglevChunkSize() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return maglevMinChunk
	}
	free := min(lim.Cur, 1<<20) // RLIM_INFINITY is the largest uint64
	if free <= maglevReservedFDs {
		return maglevMinChunk
	}
	return max(maglevMinChunk, min(maglevMaxChunk, int(free-maglevReservedFDs)/maglevWorkers))
}

// UpsertMaglev writes a Maglev table: in place when the table exists with
// the same size, else swapped in whole. An empty table is an error: a
// service without backends has its tables deleted.
func (d *Datapath) UpsertMaglev(id lb.TableID, table []lb.BackendID) error {
	if err := checkTable(id, table); err != nil {
		return err
	}
	if done, err := d.rewriteTable(id, table, 0, false); done || err != nil {
		return err
	}
	inner, err := d.newTable(id, table, nil)
	if err != nil {
		return err
	}
	// The outer map holds its own reference from the swap on.
	defer inner.Close()
	key := uint32(id)
	if err := d.maps.Maglev.Update(unsafe.Pointer(&key), inner, ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("maglev table %s", id), "weir_maglev", d.maps.Maglev, err)
	}
	return nil
}

// UpsertMaglevs writes many tables, each as UpsertMaglev does, with one
// grace period per chunk of swapped tables (hundreds to thousands,
// depending on RLIMIT_NOFILE) instead of one per table. Every table is
// validated before anything is written.
func (d *Datapath) UpsertMaglevs(tables map[lb.TableID][]lb.BackendID) error {
	for id, t := range tables {
		if err := checkTable(id, t); err != nil {
			return err
		}
	}
	ids := slices.Sorted(maps.Keys(tables))
	var live map[uint32]uint32
	if len(ids) >= liveSnapshotMin {
		live = d.liveTables()
	}
	// Spread small batches over the workers too: each chunk waits for
	// its own grace period, and the waits overlap. Large ones go in a
	// multiple of maglevWorkers chunks of equal size, so that no chunk
	// is left to run alone at the end.
	n := (len(ids) + d.chunk - 1) / d.chunk
	n = (n + maglevWorkers - 1) / maglevWorkers * maglevWorkers
	size := max(1, (len(ids)+n-1)/n)
	chunks := slices.Collect(slices.Chunk(ids, size))
	if len(ids) >= liveSnapshotMin {
		growFDTable(d.maps.Maglev.FD(), min(len(chunks), maglevWorkers)*size)
	}
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maglevWorkers)
	for i, chunk := range chunks {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = d.writeTables(chunk, tables, live)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// growFDTable makes room in the process's file descriptor table for n
// more descriptors at once, by duplicating fd at a high number. The
// kernel otherwise doubles the table as descriptors are opened, and each
// doubling in a multithreaded process waits for an RCU grace period while
// no thread may open one: a handful of such waits as a start creates
// thousands of tables. Failing to grow it only costs that time.
func growFDTable(fd, n int) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur <= maglevReservedFDs {
		return
	}
	high := min(uint64(n)+maglevReservedFDs, lim.Cur-1, 1<<20)
	if dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, int(high)); err == nil {
		_ = unix.Close(dup)
	}
}

// liveSnapshotMin is the batch size from which UpsertMaglevs and
// DeleteMaglevs read which tables exist in a few batch lookups up front,
// instead of one lookup per table (for the new tables of a start, a
// lookup that finds nothing).
const liveSnapshotMin = 256

// liveTables returns the inner map ID of every table in weir_maglev; nil
// when the kernel can't say in batches, and then each table is looked up.
func (d *Datapath) liveTables() map[uint32]uint32 {
	const chunk = 4096
	keys := make([]uint32, chunk)
	inner := make([]uint32, chunk)
	live := map[uint32]uint32{}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.maps.Maglev.BatchLookup(&cursor, keys, inner, nil)
		for i := range n {
			live[keys[i]] = inner[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return live
		}
		if err != nil {
			return nil
		}
	}
}

// writeTables rewrites in place the tables of ids that keep their size,
// fills a new inner map for each of the others, and swaps those in with
// one batch update of the outer map. live, when not nil, says which
// tables exist (by their inner map IDs).
func (d *Datapath) writeTables(ids []lb.TableID, tables map[lb.TableID][]lb.BackendID, live map[uint32]uint32) error {
	inners := make([]*ebpf.Map, 0, len(ids))
	defer func() {
		for _, m := range inners {
			m.Close()
		}
	}()
	keys := make([]uint32, 0, len(ids))
	fds := make([]uint32, 0, len(ids))
	var mapper *tableMapper
	defer func() { _ = mapper.release() }() // on an early return
	for i, id := range ids {
		var done bool
		var err error
		if innerID, ok := live[uint32(id)]; ok || live == nil {
			done, err = d.rewriteTable(id, tables[id], innerID, ok)
		}
		if err != nil {
			return err
		}
		if done {
			continue
		}
		if mapper == nil && len(ids)-i > 1 {
			mapper = reserveTables(ids[i:], tables)
		}
		m, err := d.newTable(id, tables[id], mapper)
		if err != nil {
			return err
		}
		inners = append(inners, m)
		keys, fds = append(keys, uint32(id)), append(fds, uint32(m.FD()))
	}
	// Nothing of this process may write to a table once it is swapped in.
	if err := mapper.release(); err != nil {
		return fmt.Errorf("unmap the new Maglev tables: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	n, err := d.maps.Maglev.BatchUpdate(keys, fds, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := d.maps.Maglev.Update(unsafe.Pointer(&keys[i]), unsafe.Pointer(&fds[i]), ebpf.UpdateAny); err != nil {
				return writeError(fmt.Sprintf("maglev table %s", lb.TableID(keys[i])), "weir_maglev", d.maps.Maglev, err)
			}
		}
		return nil
	}
	if err != nil {
		failed := lb.TableID(keys[min(n, len(keys)-1)])
		return writeError(fmt.Sprintf("maglev table %s (%d of %d in this batch written)", failed, n, len(keys)), "weir_maglev", d.maps.Maglev, err)
	}
	return nil
}

// rewriteTable writes table into the inner map id holds when that has as
// many slots, and reports whether it did. False without an error means
// there is no such map: none, another size, or swapped out meanwhile.
// known says innerID is the inner map's ID as already read; else it is
// looked up.
func (d *Datapath) rewriteTable(id lb.TableID, table []lb.BackendID, innerID uint32, known bool) (bool, error) {
	if !known {
		key := uint32(id)
		err := d.maps.Maglev.Lookup(unsafe.Pointer(&key), unsafe.Pointer(&innerID))
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("maglev table %s: look up in map weir_maglev: %w", id, err)
		}
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("maglev table %s: open inner map %d: %w", id, innerID, err)
	}
	defer inner.Close()
	if inner.MaxEntries() != uint32(len(table)) {
		return false, nil
	}
	if err := d.fillTable(inner, table); err != nil {
		return false, fmt.Errorf("maglev table %s: rewrite %d slots in place: %w", id, len(table), err)
	}
	return true, nil
}

// DeleteMaglev removes a table.
func (d *Datapath) DeleteMaglev(id lb.TableID) error {
	key := uint32(id)
	if err := deleteError("weir_maglev", d.maps.Maglev.Delete(unsafe.Pointer(&key))); err != nil {
		return fmt.Errorf("maglev table %s: %w", id, err)
	}
	return nil
}

// DeleteMaglevs removes many tables with one grace period. Missing tables
// are skipped: a kernel batch delete stops at the first missing key.
func (d *Datapath) DeleteMaglevs(ids []lb.TableID) error {
	keys := make([]uint32, 0, len(ids))
	var live map[uint32]uint32
	if len(ids) >= liveSnapshotMin {
		live = d.liveTables()
	}
	var inner uint32
	for _, id := range ids {
		key := uint32(id)
		if live != nil {
			if _, ok := live[key]; ok {
				keys = append(keys, key)
			}
			continue
		}
		err := d.maps.Maglev.Lookup(unsafe.Pointer(&key), unsafe.Pointer(&inner))
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("maglev table %s: look up in map weir_maglev: %w", id, err)
		}
		keys = append(keys, key)
	}
	for len(keys) > 0 {
		n, err := d.maps.Maglev.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist) && n < len(keys):
			// Deleted since the lookup; carry on after it.
			keys = keys[n+1:]
		case errors.Is(err, ebpf.ErrNotSupported):
			for _, key := range keys {
				if err := d.DeleteMaglev(lb.TableID(key)); err != nil {
					return err
				}
			}
			return nil
		default:
			if err := deleteError("weir_maglev", err); err != nil {
				return fmt.Errorf("maglev table %s: %w", lb.TableID(keys[min(n, len(keys)-1)]), err)
			}
			return nil
		}
	}
	return nil
}

// checkTable refuses what the datapath can't use: an empty table, or a
// slot holding backend 0, which is never allocated.
func checkTable(id lb.TableID, table []lb.BackendID) error {
	if len(table) == 0 {
		return fmt.Errorf("maglev table %s is empty (delete the tables of a service without backends instead)", id)
	}
	for i, b := range table {
		if b == 0 {
			return fmt.Errorf("maglev table %s: slot %d holds backend ID 0, which is never allocated", id, i)
		}
	}
	return nil
}

// newTable creates and fills an inner map for table, through mapper when
// it isn't nil and the map is mappable.
func (d *Datapath) newTable(id lb.TableID, table []lb.BackendID, mapper *tableMapper) (*ebpf.Map, error) {
	spec := *d.inner
	spec.MaxEntries = uint32(len(table))
	m, err := ebpf.NewMap(&spec)
	if err != nil {
		if errors.Is(err, unix.EMFILE) {
			return nil, fmt.Errorf("maglev table %s: create an inner map: %w (raise the agent's open-file limit, e.g. LimitNOFILE= in its systemd unit)", id, err)
		}
		return nil, fmt.Errorf("maglev table %s: create an inner map of %d slots: %w", id, len(table), err)
	}
	fill := d.fillTable
	if mapper != nil && m.Flags()&unix.BPF_F_MMAPABLE != 0 {
		fill = mapper.fill
	}
	if err := fill(m, table); err != nil {
		m.Close()
		return nil, fmt.Errorf("maglev table %s: fill %d slots: %w", id, len(table), err)
	}
	return m, nil
}

// tableMapper maps the new tables of a batch side by side into one
// stretch of address space reserved for them, so that one munmap unmaps
// them all. A munmap per table made the kernel flush the TLB of every CPU
// the agent runs on once per table (an interprocessor interrupt each,
// slow on a busy VM): as much as creating the maps.
type tableMapper struct {
	base       unsafe.Pointer
	size, used uintptr
}

// reserveTables reserves room to map every table of ids; nil when the
// kernel refuses (each table is then mapped on its own).
func reserveTables(ids []lb.TableID, tables map[lb.TableID][]lb.BackendID) *tableMapper {
	var size uintptr
	for _, id := range ids {
		size += uintptr(mappedSize(len(tables[id])))
	}
	base, err := unix.MmapPtr(-1, 0, nil, size, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	return &tableMapper{base: base, size: size}
}

// fill maps table's array over the next part of the reservation (only
// ever this process's own) and writes the slots, as fillMapped does.
func (t *tableMapper) fill(m *ebpf.Map, table []lb.BackendID) error {
	size := uintptr(mappedSize(len(table)))
	if t.used+size > t.size {
		return fillMapped(m, table)
	}
	p, err := unix.MmapPtr(m.FD(), 0, unsafe.Add(t.base, t.used), size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	t.used += size
	mem := unsafe.Slice((*byte)(p), size)
	for i, b := range table {
		binary.NativeEndian.PutUint32(mem[i*arrayStride:], uint32(b))
	}
	return nil
}

// release unmaps the tables and the rest of the reservation; a nil or
// released mapper does nothing.
func (t *tableMapper) release() error {
	if t == nil || t.base == nil {
		return nil
	}
	err := unix.MunmapPtr(t.base, t.size)
	t.base = nil
	return err
}

// fillTable writes every slot: through a memory mapping when the table
// is BPF_F_MMAPABLE (one copy, no syscall per slot), else with one batch
// syscall, else slot by slot. The flags are the map's own: a table made
// by an older agent may not be mappable.
func (d *Datapath) fillTable(m *ebpf.Map, table []lb.BackendID) error {
	if m.Flags()&unix.BPF_F_MMAPABLE != 0 {
		return fillMapped(m, table)
	}
	keys := d.slotKeys(len(table))
	_, err := m.BatchUpdate(keys, table, nil)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for i := range table {
		if err := m.Update(unsafe.Pointer(&keys[i]), unsafe.Pointer(&table[i]), ebpf.UpdateAny); err != nil {
			return err
		}
	}
	return nil
}

// arrayStride is the distance between the elements of an array map in
// memory: the kernel rounds the value size up to 8 bytes.
const arrayStride = 8

// fillMapped writes the table through a shared mapping of the array,
// unmapped again before the table is swapped in or used, so nothing in
// this process can write to a table packets are reading. Each slot is
// one aligned 32-bit store.
func fillMapped(m *ebpf.Map, table []lb.BackendID) error {
	size := mappedSize(len(table))
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	for i, b := range table {
		binary.NativeEndian.PutUint32(mem[i*arrayStride:], uint32(b))
	}
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("munmap: %w", err)
	}
	return nil
}

// slotKeys returns 0..n-1.
func (d *Datapath) slotKeys(n int) []uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.slots) < n {
		s := make([]uint32, n)
		for i := range s {
			s[i] = uint32(i)
		}
		d.slots = s
	}
	return d.slots[:n]
}

// readTable reads a Maglev table from its inner map.
func readTable(inner *ebpf.Map) ([]lb.BackendID, error) {
	if inner.Flags()&unix.BPF_F_MMAPABLE != 0 {
		return readMapped(inner)
	}
	n := int(inner.MaxEntries())
	keys := make([]uint32, n)
	vals := make([]lb.BackendID, n)
	var cursor ebpf.MapBatchCursor
	got := 0
	for got < n {
		c, err := inner.BatchLookup(&cursor, keys[got:], vals[got:], nil)
		got += c
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return readTableSlowly(inner)
		}
		if err != nil {
			return nil, err
		}
	}
	if got != n {
		return nil, fmt.Errorf("read %d of %d slots", got, n)
	}
	// An array's batch lookup returns keys in order; place by key anyway.
	table := make([]lb.BackendID, n)
	for i, k := range keys {
		if int(k) >= n {
			return nil, fmt.Errorf("slot key %d outside a table of %d", k, n)
		}
		table[k] = vals[i]
	}
	return table, nil
}

// readMapped reads a table through a read-only mapping: a 16381-slot
// table costs one copy instead of milliseconds of batch lookups, which
// matters when a restarting agent dumps thousands of tables.
func readMapped(inner *ebpf.Map) ([]lb.BackendID, error) {
	table := make([]lb.BackendID, inner.MaxEntries())
	mem, err := unix.Mmap(inner.FD(), 0, mappedSize(len(table)), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	for i := range table {
		table[i] = lb.BackendID(binary.NativeEndian.Uint32(mem[i*arrayStride:]))
	}
	if err := unix.Munmap(mem); err != nil {
		return nil, fmt.Errorf("munmap: %w", err)
	}
	return table, nil
}

// mappedSize is the length of the mapping of an n-element table.
func mappedSize(n int) int {
	page := unix.Getpagesize()
	return (n*arrayStride + page - 1) / page * page
}

func readTableSlowly(inner *ebpf.Map) ([]lb.BackendID, error) {
	table := make([]lb.BackendID, inner.MaxEntries())
	for i := range table {
		k := uint32(i)
		if err := inner.Lookup(unsafe.Pointer(&k), unsafe.Pointer(&table[i])); err != nil {
			return nil, fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return table, nil
}
