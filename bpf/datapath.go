package bpf

import (
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
	// inner is the template of a Maglev table. Its BTF is dropped: with
	// it, every table would load its own copy of the types into the kernel.
	inner *ebpf.MapSpec
	// chunk is how many tables UpsertMaglevs swaps in at once.
	chunk int

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
	// slots is 0, 1, 2, ...: the keys of a Maglev table fill. It is only
	// ever replaced by a longer copy, never written in place, so callers
	// may keep using a slice of it after unlocking.
	slots []uint32
}

var (
	_ lb.Datapath      = (*Datapath)(nil)
	_ lb.MaglevBatcher = (*Datapath)(nil)
)

// NewDatapath returns the Datapath writing to m. It doesn't own m: the
// caller closes m after its last use of the Datapath.
func NewDatapath(m *Maps) *Datapath {
	inner := m.MaglevInner.Copy()
	inner.Key, inner.Value = nil, nil
	inner.Pinning = ebpf.PinNone
	inner.Name = "weir_maglev_tbl"
	if flags, ok := liveTableFlags(m.Maglev); ok {
		inner.Flags = flags
	}
	return &Datapath{maps: m, inner: inner, chunk: maglevChunkSize(), one: 1}
}

// liveTableFlags returns the flags of a table already in the outer map. The
// kernel accepts only inner maps whose flags equal those of the template
// the outer map was created with, which userspace can't read; pins made by
// an older agent may have another template than this object, so new
// tables copy a live one.
func liveTableFlags(outer *ebpf.Map) (uint32, bool) {
	var key, id uint32
	if !outer.Iterate().Next(unsafe.Pointer(&key), unsafe.Pointer(&id)) {
		return 0, false
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return 0, false
	}
	defer inner.Close()
	info, err := inner.Info()
	if err != nil {
		return 0, false
	}
	return info.Flags, true
}

// UpsertBackend writes a backend.
func (d *Datapath) UpsertBackend(id lb.BackendID, e lb.BackendEntry) error {
	v, err := BackendValueFrom(id, e)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id, d.backend = uint32(id), v
	if err := d.maps.Backends.Update(unsafe.Pointer(&d.id), unsafe.Pointer(&d.backend), ebpf.UpdateAny); err != nil {
		return writeError(fmt.Sprintf("backend %d", id), "weir_backends", d.maps.Backends, err)
	}
	return nil
}

// DeleteBackend removes a backend.
func (d *Datapath) DeleteBackend(id lb.BackendID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id = uint32(id)
	return deleteError(fmt.Sprintf("backend %d", id), "weir_backends", d.maps.Backends.Delete(unsafe.Pointer(&d.id)))
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
	return deleteError(fmt.Sprintf("frontend %d", id), "weir_frontends", d.maps.Frontends.Delete(unsafe.Pointer(&d.id)))
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
	return deleteError(fmt.Sprintf("source range %v of service %d", p, id), "weir_source_ranges", d.maps.SourceRanges.Delete(unsafe.Pointer(&d.srKey)))
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
	return deleteError(fmt.Sprintf("service key %v", k), "weir_services", d.maps.Services.Delete(unsafe.Pointer(&d.svcKey)))
}
