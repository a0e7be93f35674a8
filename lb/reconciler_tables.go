package lb

import (
	"fmt"
	"slices"

	"github.com/weir-lb/weir/maglev"
)

// maxBatchSlots bounds the slots of the tables held for one batch swap
// (16 MiB of backend IDs), so a full sync of many large tables doesn't
// hold all of them in memory at once.
const maxBatchSlots = 1 << 22

// tableWrite is a view whose table may need writing.
type tableWrite struct {
	j      *job
	vs     *viewState
	size   uint32
	inputs []maglev.Backend
	slots  []uint32 // built table
	hash   uint64
	err    error
}

// writeTables writes the tables of the round's jobs that changed, after
// all their backends are written: tables whose input didn't change are
// skipped, the others built (concurrently for large rounds), and those
// that differ from the map's swapped in, batched when the datapath can.
func (r *Reconciler) writeTables(jobs []*job) {
	var pending []*tableWrite
	slots := 0
	flush := func() {
		r.buildTables(pending)
		r.flushTables(pending)
		pending, slots = nil, 0
	}
	for _, j := range jobs {
		if !j.alive() || j.p == nil {
			continue
		}
		for scope, fv := range j.p.flat.views {
			if fv == nil || len(fv.usable) == 0 {
				continue
			}
			vs := j.w.st.views[scope]
			inputs := make([]maglev.Backend, 0, len(fv.usable))
			for _, b := range fv.usable {
				bs := vs.backends[b.AddrPort()]
				inputs = append(inputs, maglev.Backend{ID: uint32(bs.id), Key: bs.key, Weight: uint32(b.Weight)})
			}
			t := &vs.table
			if t.ok && t.inputs != nil && t.size == fv.tableSize && slices.Equal(t.inputs, inputs) {
				continue
			}
			pending = append(pending, &tableWrite{j: j, vs: vs, size: fv.tableSize, inputs: inputs})
			// Bound the memory of the tables built and not yet written.
			if slots += int(fv.tableSize); slots >= maxBatchSlots {
				flush()
			}
		}
	}
	flush()
}

// buildTables builds and hashes the pending tables; Maglev builds are
// pure, so large rounds spread them over the CPUs.
func (r *Reconciler) buildTables(pending []*tableWrite) {
	if len(pending) == 1 {
		// The common single change: reuse one scratch table.
		tw := pending[0]
		tw.slots = r.scratchSlots(tw.size)
		tw.err = maglev.BuildInto(tw.slots, tw.inputs)
		tw.hash = hashTable(tw.slots)
		return
	}
	forEach(len(pending), func(i int) {
		tw := pending[i]
		tw.slots = make([]uint32, tw.size)
		tw.err = maglev.BuildInto(tw.slots, tw.inputs)
		tw.hash = hashTable(tw.slots)
	})
}

func (r *Reconciler) scratchSlots(n uint32) []uint32 {
	if uint32(cap(r.slots)) < n {
		r.slots = make([]uint32, n)
	}
	return r.slots[:n]
}

// flushTables swaps in the built tables that differ from the map's. Until
// a write is confirmed the view's table is unknown, so a failure leaves it
// to be rewritten.
func (r *Reconciler) flushTables(pending []*tableWrite) {
	tables := make(map[ServiceID][]BackendID, len(pending))
	var written []*tableWrite
	for _, tw := range pending {
		if !tw.j.alive() {
			continue
		}
		if tw.err != nil {
			tw.j.fail(fmt.Errorf("build the Maglev table of service ID %d: %w", tw.vs.id, tw.err))
			continue
		}
		t := &tw.vs.table
		if t.ok && t.size == tw.size && t.hash == tw.hash {
			t.inputs = tw.inputs // the same table (restored, or rebuilt): learn its input
			continue
		}
		if err := tw.j.w.shrinkKeys(tw.vs, tw.size); err != nil {
			tw.j.fail(err)
			continue
		}
		ids := make([]BackendID, len(tw.slots))
		for i, s := range tw.slots {
			ids[i] = BackendID(s)
		}
		t.present, t.ok = true, false
		tables[tw.vs.id] = ids
		written = append(written, tw)
	}
	errs := r.upsertMaglevs(tables)
	for _, tw := range written {
		if err := errs[tw.vs.id]; err != nil {
			tw.j.fail(fmt.Errorf("write the Maglev table of service ID %d (%d slots): %w", tw.vs.id, tw.size, err))
			continue
		}
		tw.vs.table = tableState{present: true, ok: true, size: tw.size, hash: tw.hash, inputs: tw.inputs}
		tw.j.w.wrote()
	}
}

// shrinkKeys prepares a view's keys for a table of size slots. The
// datapath picks slot hash%TableSize of the key, and a slot past the end
// of the table finds no backend; so before a smaller table replaces a
// larger one, the keys get the smaller size (the larger table still covers
// it). A growing table needs nothing: the old size fits in it. A key whose
// last write failed may hold its confirmed entry or the one tried, so
// either can call for the shrink; the entry written is that one with the
// smaller size (what it refers to still exists: frontends and views go
// only after their keys).
func (w *writer) shrinkKeys(vs *viewState, size uint32) error {
	base := func(ks *keyState) (ServiceEntry, bool) {
		for _, e := range []ServiceEntry{ks.entry, ks.tried} {
			if e.ServiceID == vs.id && e.TableSize > size {
				return e, true
			}
			if ks.ok {
				break
			}
		}
		return ServiceEntry{}, false
	}
	keep := func(k ServiceKey) bool {
		_, shrink := base(w.st.keys[k])
		return !shrink
	}
	for _, k := range stale(w.st.keys, compareServiceKey, keep) {
		ks := w.st.keys[k]
		e, _ := base(ks)
		e.TableSize = size
		if err := w.writeKey(k, ks, e); err != nil {
			return fmt.Errorf("shrink service key %s (%s) to a table of %d slots: %w", frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, size, err)
		}
	}
	return nil
}

// deleteTables deletes the tables of views that lost their usable
// backends or went away, once the round's keys no longer point at them,
// then releases the IDs of the views that are gone.
func (r *Reconciler) deleteTables(jobs []*job) {
	type del struct {
		j  *job
		vs *viewState
	}
	var dels []del
	var ids []ServiceID
	for _, j := range jobs {
		if !j.alive() {
			continue
		}
		for scope, vs := range j.w.st.views {
			if vs == nil || !vs.table.present {
				continue
			}
			if fv := j.p.view(Scope(scope)); fv == nil || len(fv.usable) == 0 {
				dels = append(dels, del{j, vs})
				ids = append(ids, vs.id)
			}
		}
	}
	errs := r.deleteMaglevs(ids)
	for _, d := range dels {
		if err := errs[d.vs.id]; err != nil {
			d.j.fail(fmt.Errorf("delete the Maglev table of service ID %d: %w", d.vs.id, err))
			continue
		}
		d.vs.table = tableState{}
		d.j.w.wrote()
	}
	for _, j := range jobs {
		if !j.alive() {
			continue
		}
		st := j.w.st
		for scope, vs := range st.views {
			if vs != nil && j.p.view(Scope(scope)) == nil && vs.empty() {
				st.views[scope] = nil
				r.svcIDs.release(uint32(vs.id))
			}
		}
	}
}

// upsertMaglevs writes tables, in one batch when the datapath is a
// MaglevBatcher and there are several; when a batch fails, it retries one
// by one so that each failure is pinned on its service. It returns the
// failures by service ID.
func (r *Reconciler) upsertMaglevs(tables map[ServiceID][]BackendID) map[ServiceID]error {
	if b, ok := r.dp.(MaglevBatcher); ok && len(tables) > 1 {
		err := b.UpsertMaglevs(tables)
		if err == nil {
			return nil
		}
		r.log.Warn("batch write of Maglev tables failed, retrying one by one", "tables", len(tables), "err", err)
	}
	var errs map[ServiceID]error
	for _, id := range sortedIDs(tables) {
		if err := r.dp.UpsertMaglev(id, tables[id]); err != nil {
			if errs == nil {
				errs = map[ServiceID]error{}
			}
			errs[id] = err
		}
	}
	return errs
}

// deleteMaglevs is upsertMaglevs for deletes.
func (r *Reconciler) deleteMaglevs(ids []ServiceID) map[ServiceID]error {
	if len(ids) == 0 {
		return nil
	}
	if b, ok := r.dp.(MaglevBatcher); ok && len(ids) > 1 {
		err := b.DeleteMaglevs(ids)
		if err == nil {
			return nil
		}
		r.log.Warn("batch delete of Maglev tables failed, retrying one by one", "tables", len(ids), "err", err)
	}
	var errs map[ServiceID]error
	for _, id := range ids {
		if err := r.dp.DeleteMaglev(id); err != nil {
			if errs == nil {
				errs = map[ServiceID]error{}
			}
			errs[id] = err
		}
	}
	return errs
}

func sortedIDs[V any](m map[ServiceID]V) []ServiceID {
	ids := make([]ServiceID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
