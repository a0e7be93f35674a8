package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/lb"
)

// Maglev tables live in inner array maps of weir_maglev, one per service,
// sized to the table. A table is replaced by filling a new inner map and
// swapping it in with one write to the outer map, so a packet sees the old
// table or the new one. The kernel then waits for an RCU grace period
// (about 10 ms here) before the write returns, so that no program still
// reads the old table; that wait, not the filling, dominates a single
// UpsertMaglev. UpsertMaglevs and DeleteMaglevs pay it once per batch.

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

// UpsertMaglev replaces a service's Maglev table atomically. An empty table
// is an error: a service without backends has its table deleted.
func (d *Datapath) UpsertMaglev(id lb.ServiceID, table []lb.BackendID) error {
	if err := checkTable(id, table); err != nil {
		return err
	}
	inner, err := d.newTable(id, table)
	if err != nil {
		return err
	}
	// The outer map holds its own reference from the swap on.
	defer inner.Close()
	key := uint32(id)
	if err := d.maps.Maglev.Update(unsafe.Pointer(&key), inner, ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("maglev table of service %d", id), "weir_maglev", d.maps.Maglev, err)
	}
	return nil
}

// UpsertMaglevs replaces many tables, each atomically, with one grace
// period per chunk of services (hundreds to thousands, depending on
// RLIMIT_NOFILE) instead of one per service.
// Every table is validated before anything is written.
func (d *Datapath) UpsertMaglevs(tables map[lb.ServiceID][]lb.BackendID) error {
	for id, t := range tables {
		if err := checkTable(id, t); err != nil {
			return err
		}
	}
	ids := slices.Sorted(maps.Keys(tables))
	// Spread small batches over the workers too: each chunk waits for
	// its own grace period, and the waits overlap.
	size := max(1, min(d.chunk, (len(ids)+maglevWorkers-1)/maglevWorkers))
	chunks := slices.Collect(slices.Chunk(ids, size))
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maglevWorkers)
	for i, chunk := range chunks {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = d.swapTables(chunk, tables)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// swapTables fills a new table for each service of ids, then swaps them all
// in with one batch update of the outer map.
func (d *Datapath) swapTables(ids []lb.ServiceID, tables map[lb.ServiceID][]lb.BackendID) error {
	inners := make([]*ebpf.Map, 0, len(ids))
	defer func() {
		for _, m := range inners {
			m.Close()
		}
	}()
	keys := make([]uint32, len(ids))
	fds := make([]uint32, len(ids))
	for i, id := range ids {
		m, err := d.newTable(id, tables[id])
		if err != nil {
			return err
		}
		inners = append(inners, m)
		keys[i], fds[i] = uint32(id), uint32(m.FD())
	}
	n, err := d.maps.Maglev.BatchUpdate(keys, fds, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := d.maps.Maglev.Update(unsafe.Pointer(&keys[i]), unsafe.Pointer(&fds[i]), ebpf.UpdateAny); err != nil {
				return writeError(fmt.Sprintf("maglev table of service %d", keys[i]), "weir_maglev", d.maps.Maglev, err)
			}
		}
		return nil
	}
	if err != nil {
		failed := keys[min(n, len(keys)-1)]
		return writeError(fmt.Sprintf("maglev table of service %d (%d of %d in this batch written)", failed, n, len(keys)), "weir_maglev", d.maps.Maglev, err)
	}
	return nil
}

// DeleteMaglev removes a service's table.
func (d *Datapath) DeleteMaglev(id lb.ServiceID) error {
	key := uint32(id)
	return deleteError(fmt.Sprintf("maglev table of service %d", id), "weir_maglev", d.maps.Maglev.Delete(unsafe.Pointer(&key)))
}

// DeleteMaglevs removes many tables with one grace period. Missing tables
// are skipped: a kernel batch delete stops at the first missing key.
func (d *Datapath) DeleteMaglevs(ids []lb.ServiceID) error {
	keys := make([]uint32, 0, len(ids))
	var inner uint32
	for _, id := range ids {
		key := uint32(id)
		err := d.maps.Maglev.Lookup(unsafe.Pointer(&key), unsafe.Pointer(&inner))
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("maglev table of service %d: look up in map weir_maglev: %w", id, err)
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
				if err := d.DeleteMaglev(lb.ServiceID(key)); err != nil {
					return err
				}
			}
			return nil
		default:
			return deleteError(fmt.Sprintf("maglev table of service %d", keys[min(n, len(keys)-1)]), "weir_maglev", err)
		}
	}
	return nil
}

// checkTable refuses what the datapath can't use: an empty table, or a
// slot holding backend 0, which is never allocated.
func checkTable(id lb.ServiceID, table []lb.BackendID) error {
	if len(table) == 0 {
		return fmt.Errorf("maglev table of service %d is empty (delete the table of a service without backends instead)", id)
	}
	for i, b := range table {
		if b == 0 {
			return fmt.Errorf("maglev table of service %d: slot %d holds backend ID 0, which is never allocated", id, i)
		}
	}
	return nil
}

// newTable creates and fills an inner map for table.
func (d *Datapath) newTable(id lb.ServiceID, table []lb.BackendID) (*ebpf.Map, error) {
	spec := *d.inner
	spec.MaxEntries = uint32(len(table))
	m, err := ebpf.NewMap(&spec)
	if err != nil {
		if errors.Is(err, unix.EMFILE) {
			return nil, fmt.Errorf("maglev table of service %d: create an inner map: %w (raise the agent's open-file limit, e.g. LimitNOFILE= in its systemd unit)", id, err)
		}
		return nil, fmt.Errorf("maglev table of service %d: create an inner map of %d slots: %w", id, len(table), err)
	}
	if err := d.fillTable(m, table); err != nil {
		m.Close()
		return nil, fmt.Errorf("maglev table of service %d: fill %d slots: %w", id, len(table), err)
	}
	return m, nil
}

// fillTable writes every slot: through a memory mapping when the table
// is BPF_F_MMAPABLE (one copy, no syscall per slot), else with one batch
// syscall, else slot by slot.
func (d *Datapath) fillTable(m *ebpf.Map, table []lb.BackendID) error {
	if d.inner.Flags&unix.BPF_F_MMAPABLE != 0 {
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
// unmapped again before the table is swapped in, so nothing in this
// process can write to a table packets are reading.
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
