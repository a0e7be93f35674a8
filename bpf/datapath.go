package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/lb"
)

// Datapath is lb.Datapath over the pinned maps. Writes are idempotent
// (update-or-insert); deleting a missing key succeeds. It is safe for
// concurrent use.
type Datapath struct {
	maps *Maps
	// slabSpec is the template of the Maglev slab. Its BTF is dropped: with
	// it, every slab would load its own copy of the types into the kernel.
	slabSpec *ebpf.MapSpec

	// mu guards the scratch keys and values below. Handing the kernel
	// pointers into them (as unsafe.Pointer, which cilium/ebpf passes
	// through untouched) skips reflection and allocation on every write.
	mu       sync.Mutex
	id       uint32
	svcKey   ServiceKey
	svcVal   ServiceValue
	backend  BackendValue
	frontend FrontendValue
	srKey    SourceRangeKey
	one      uint8
}

var (
	_ lb.Datapath      = (*Datapath)(nil)
	_ lb.MaglevBatcher = (*Datapath)(nil)
	_ lb.EntryBatcher  = (*Datapath)(nil)
)

// NewDatapath returns the Datapath writing to m. It doesn't own m: the
// caller closes m after its last use of the Datapath.
func NewDatapath(m *Maps) *Datapath {
	slab := m.MaglevSlab.Copy()
	slab.Key, slab.Value = nil, nil
	slab.Pinning = ebpf.PinNone
	slab.Name = "weir_maglev_slab"
	return &Datapath{maps: m, slabSpec: slab, one: 1}
}

// UpsertBackend writes a backend.
func (d *Datapath) UpsertBackend(id lb.BackendID, e lb.BackendEntry) error {
	v, err := BackendValueFrom(id, e)
	if err != nil {
		return err
	}
	if err := d.checkBackendID(id); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id, d.backend = uint32(id), v
	if err := d.maps.Backends.Update(unsafe.Pointer(&d.id), unsafe.Pointer(&d.backend), ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("backend %d", id), "weir_backends", d.maps.Backends, err)
	}
	return d.storeBackendWords([]lb.BackendID{id}, []uint32{backendWord(&v)})
}

// DeleteBackend removes a backend.
func (d *Datapath) DeleteBackend(id lb.BackendID) error {
	// The word first: a packet that still finds the entry then looks
	// it up, and finds it gone or still there, never a stale copy.
	if d.checkBackendID(id) == nil { // else it never had an entry
		if err := d.storeBackendWords([]lb.BackendID{id}, []uint32{0}); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id = uint32(id)
	if err := deleteError("weir_backends", d.maps.Backends.Delete(unsafe.Pointer(&d.id))); err != nil {
		return fmt.Errorf("backend %d: %w", id, err)
	}
	return nil
}

// UpsertFrontend writes a frontend's reverse-NAT entry. Names longer than
// the C arrays are an error naming the field.
func (d *Datapath) UpsertFrontend(id lb.FrontendID, e lb.FrontendEntry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := fillFrontendValue(&d.frontend, id, e); err != nil {
		return err
	}
	d.id = uint32(id)
	if err := d.maps.Frontends.Update(unsafe.Pointer(&d.id), unsafe.Pointer(&d.frontend), ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("frontend %d", id), "weir_frontends", d.maps.Frontends, err)
	}
	return nil
}

// DeleteFrontend removes a frontend's reverse-NAT entry.
func (d *Datapath) DeleteFrontend(id lb.FrontendID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id = uint32(id)
	if err := deleteError("weir_frontends", d.maps.Frontends.Delete(unsafe.Pointer(&d.id))); err != nil {
		return fmt.Errorf("frontend %d: %w", id, err)
	}
	return nil
}

// UpsertSourceRange allows a client prefix for a service.
func (d *Datapath) UpsertSourceRange(id lb.ServiceID, p netip.Prefix) error {
	k, err := SourceRangeKeyFor(id, p)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srKey = k
	if err := d.maps.SourceRanges.Update(unsafe.Pointer(&d.srKey), unsafe.Pointer(&d.one), ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("source range %v of service %d", p, id), "weir_source_ranges", d.maps.SourceRanges, err)
	}
	return nil
}

// DeleteSourceRange removes a client prefix of a service.
func (d *Datapath) DeleteSourceRange(id lb.ServiceID, p netip.Prefix) error {
	k, err := SourceRangeKeyFor(id, p)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srKey = k
	if err := deleteError("weir_source_ranges", d.maps.SourceRanges.Delete(unsafe.Pointer(&d.srKey))); err != nil {
		return fmt.Errorf("source range %v of service %d: %w", p, id, err)
	}
	return nil
}

// UpsertService writes a frontend's service entry.
func (d *Datapath) UpsertService(k lb.ServiceKey, e lb.ServiceEntry) error {
	key, err := ServiceKeyFrom(k)
	if err != nil {
		return err
	}
	val, err := ServiceValueFrom(e)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.svcKey, d.svcVal = key, val
	if err := d.maps.Services.Update(unsafe.Pointer(&d.svcKey), unsafe.Pointer(&d.svcVal), ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("service key %v", k), "weir_services", d.maps.Services, err)
	}
	return nil
}

// DeleteService removes a frontend's service entry.
func (d *Datapath) DeleteService(k lb.ServiceKey) error {
	key, err := ServiceKeyFrom(k)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.svcKey = key
	if err := deleteError("weir_services", d.maps.Services.Delete(unsafe.Pointer(&d.svcKey))); err != nil {
		return fmt.Errorf("service key %v: %w", k, err)
	}
	return nil
}

// batchChunk is how many entries one BPF_MAP_UPDATE_BATCH carries: enough
// that the syscall's fixed cost vanishes, few enough that the converted
// keys and values stay within a few hundred KiB.
const batchChunk = 2048

// UpsertBackends writes backends in batches (lb.EntryBatcher), then the
// words of those written.
func (d *Datapath) UpsertBackends(ids []lb.BackendID, es []lb.BackendEntry) (int, error) {
	// Only the entries before the first ID without a word are written.
	fits := len(ids)
	for i, id := range ids {
		if d.checkBackendID(id) != nil {
			fits = i
			break
		}
	}
	words := make([]uint32, fits)
	n, err := writeBatch(d.maps.Backends, "weir_backends", fits,
		func(i int, k *uint32, v *BackendValue) (err error) {
			*k = uint32(ids[i])
			*v, err = BackendValueFrom(ids[i], es[i])
			words[i] = backendWord(v)
			return err
		},
		func(i int) string { return fmt.Sprintf("backend %d", ids[i]) })
	if werr := d.storeBackendWords(ids[:n], words[:n]); werr != nil {
		// Their entries are written, their words not: report none of
		// them, so that the caller writes each again.
		return 0, werr
	}
	if err == nil && fits < len(ids) {
		err = d.checkBackendID(ids[fits])
	}
	return n, err
}

// UpsertFrontends writes frontends in batches (lb.EntryBatcher).
func (d *Datapath) UpsertFrontends(ids []lb.FrontendID, es []lb.FrontendEntry) (int, error) {
	return writeBatch(d.maps.Frontends, "weir_frontends", len(ids),
		func(i int, k *uint32, v *FrontendValue) error {
			*k = uint32(ids[i])
			return fillFrontendValue(v, ids[i], es[i])
		},
		func(i int) string { return fmt.Sprintf("frontend %d", ids[i]) })
}

// UpsertServices writes service entries in batches (lb.EntryBatcher).
func (d *Datapath) UpsertServices(keys []lb.ServiceKey, es []lb.ServiceEntry) (int, error) {
	return writeBatch(d.maps.Services, "weir_services", len(keys),
		func(i int, k *ServiceKey, v *ServiceValue) (err error) {
			if *k, err = ServiceKeyFrom(keys[i]); err != nil {
				return err
			}
			*v, err = ServiceValueFrom(es[i])
			return err
		},
		func(i int) string { return fmt.Sprintf("service key %v", keys[i]) })
}

// writeBatch converts n entries chunk by chunk (fill sets entry i) and
// writes each chunk with one batch update, and returns how many leading
// entries were written. A chunk stops at its first failure, so the count
// names the entry that failed (name formats it, only then). Kernels
// without batch updates get the chunk entry by entry.
func writeBatch[K, V any](m *ebpf.Map, mapName string, n int, fill func(i int, k *K, v *V) error, name func(i int) string) (int, error) {
	keys := make([]K, min(n, batchChunk))
	vals := make([]V, len(keys))
	for off := 0; off < n; off += batchChunk {
		c := min(batchChunk, n-off)
		for i := range c {
			if err := fill(off+i, &keys[i], &vals[i]); err != nil {
				return off, err
			}
		}
		done, err := m.BatchUpdate(keys[:c], vals[:c], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			done, err = updateEach(m, keys[:c], vals[:c])
		}
		if err != nil {
			at := off + min(done, c-1)
			return off + done, writeError(name(at), mapName, m, err)
		}
	}
	return n, nil
}

// updateEach writes entries one by one; it returns how many it wrote.
func updateEach[K, V any](m *ebpf.Map, keys []K, vals []V) (int, error) {
	for i := range keys {
		if err := m.Update(unsafe.Pointer(&keys[i]), unsafe.Pointer(&vals[i]), ebpf.UpdateAny); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}
