package lb

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/weir-lb/weir/maglev"
)

// Every view has two Maglev tables, generations 0 and 1 (TableID), and its
// keys name the one packets use (TableGen, in the same entry as
// TableSize). A new table is written into the generation no key uses, then
// the keys switch to it. Each key write switches its table and size at
// once, so a packet reads the old table with the old size or the new
// table with the new size: growing and shrinking are as safe as any
// change, and keys need no shrinking beforehand.
//
// Because no key uses the generation written, the datapath may rewrite it
// in place when its size is unchanged. For the BPF datapath that avoids
// moving the table to a new run of its slab (and, when the slab is full,
// an RCU grace period of ~10 ms); the switch is a plain hash-map update. A
// view's first table is written to both generations in the same batch, so
// that its first change is already in place.
//
// What the switch doesn't wait for: a program that read a key just before
// it may still read the old table for the microseconds it runs. That
// table is rewritten in place only by a later Sync (the runner keeps them
// apart), but the backends only it names are deleted later in the same
// Sync; such a program would find its backend gone and reject that one
// new flow. A grace period per swap would rule this out; the window is a
// program's run time (XDP runs with preemption off; a socket hook might be
// preempted), normally far shorter than the writes in between.
//
// A failure halfway through a switch can leave keys on both generations.
// Before a table is written into a generation some key may still use,
// those keys move back to the live table (moveKeys), so that the write
// still goes into a table no key uses.

// maxBatchSlots bounds the slots of the tables held for one batch swap
// (16 MiB of backend IDs), so a full sync of many large tables doesn't
// hold all of them in memory at once.
const maxBatchSlots = 1 << 22

// tableWrite is a view whose table may need writing.
type tableWrite struct {
	j      *job
	vs     *viewState
	size   uint32
	usable []Backend // the backends that fill the table
	input  uint64    // their hashInputs
	slots  []uint32  // built table
	owned  bool      // slots are the write's own (not the scratch table)
	hash   uint64
	err    error
	gens   []uint8 // generations to write
	flip   bool    // the keys switch to the first generation written
}

// writeTables writes the tables of the round's jobs that changed, after
// all their backends are written: tables whose input didn't change are
// skipped, the others built (concurrently for large rounds), and those
// that differ from the map's written, batched when the datapath can.
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
			input := hashInputs(vs, fv.usable)
			t := &vs.tables[vs.active]
			if t.ok && t.inputKnown && t.input == input && t.size == fv.tableSize && vs.tables[1-vs.active].ok {
				continue
			}
			tw := &tableWrite{j: j, vs: vs, size: fv.tableSize, usable: fv.usable, input: input}
			pending = append(pending, tw)
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
	if len(pending) == 1 && pending[0].slots == nil {
		// The common single change: reuse one scratch table.
		tw := pending[0]
		tw.build(r.scratchSlots(tw.size))
		return
	}
	forEach(len(pending), func(i int) {
		if tw := pending[i]; tw.slots == nil {
			tw.build(make([]uint32, tw.size))
			tw.owned = true
		}
	})
}

// build fills slots with the view's table and hashes it. The Maglev keys
// (address:port) are formatted here, not kept per backend.
func (tw *tableWrite) build(slots []uint32) {
	inputs := make([]maglev.Backend, len(tw.usable))
	c := tw.vs.cursor()
	for i, b := range tw.usable {
		ap := b.AddrPort()
		inputs[i] = maglev.Backend{ID: uint32(c.find(ap).id), Key: ap.String(), Weight: uint32(b.Weight)}
	}
	tw.slots = slots
	tw.err = maglev.BuildInto(slots, inputs)
	tw.hash = hashTable(slots)
}

// asBackendIDs views a built table's slots, which hold backend IDs, as
// such without copying them: a large round holds up to maxBatchSlots of
// them at once.
func asBackendIDs(slots []uint32) []BackendID {
	return unsafe.Slice((*BackendID)(unsafe.SliceData(slots)), len(slots))
}

func (r *Reconciler) scratchSlots(n uint32) []uint32 {
	if uint32(cap(r.slots)) < n {
		r.slots = make([]uint32, n)
	}
	return r.slots[:n]
}

// flushTables writes the built tables: a table that differs from the live
// one goes into a generation no key uses, and a spare generation that is
// missing or unknown is filled with the same table, when no key uses it.
// Until a write is confirmed its table is unknown, so a failure leaves it
// to be rewritten; the keys switch only to a table written.
func (r *Reconciler) flushTables(pending []*tableWrite) {
	tables := make(map[TableID][]BackendID, 2*len(pending))
	var written []*tableWrite
	for _, tw := range pending {
		if !tw.j.alive() {
			continue
		}
		vs := tw.vs
		if tw.err != nil {
			tw.j.fail(fmt.Errorf("build the Maglev table of service ID %d: %w", vs.id, tw.err))
			continue
		}
		w := &tw.j.w
		if t := &vs.tables[vs.active]; t.ok && t.size == tw.size && t.hash == tw.hash {
			t.input, t.inputKnown = tw.input, true // the same table (restored, or rebuilt): learn its input
		} else {
			g, err := w.freeGen(vs)
			if err != nil {
				tw.j.fail(err)
				continue
			}
			tw.gens, tw.flip = []uint8{g}, true
		}
		used := w.tableUsers(vs)
		for _, g := range []uint8{1 - vs.active, vs.active} {
			t := vs.tables[g]
			if !t.ok && !(used[g] && t.present) && !slices.Contains(tw.gens, g) {
				tw.gens = append(tw.gens, g)
			}
		}
		if len(tw.gens) == 0 {
			continue
		}
		ids := asBackendIDs(tw.slots)
		for _, g := range tw.gens {
			vs.tables[g].present, vs.tables[g].ok = true, false
			tables[vs.id.Table(g)] = ids
		}
		written = append(written, tw)
	}
	errs := r.upsertMaglevs(tables)
	for _, tw := range written {
		vs := tw.vs
		switched := !tw.flip
		for _, g := range tw.gens {
			id := vs.id.Table(g)
			if err := errs[id]; err != nil {
				tw.j.fail(fmt.Errorf("write Maglev table %s of service ID %d (%d slots): %w", id, vs.id, tw.size, err))
				continue
			}
			vs.tables[g] = tableState{present: true, ok: true, inputKnown: true, size: tw.size, hash: tw.hash, input: tw.input}
			if !switched {
				// Both generations of a new view hold the same table:
				// the keys may use whichever was written.
				vs.active, switched = g, true
			}
			tw.j.w.wrote()
		}
	}
}

// freeGen returns the generation a view's new table goes into: the spare,
// unless some key may still use it (a switch that failed halfway) and the
// live generation is the one no key uses. When keys use both, those on the
// spare move to the live table first. A generation that has no table is
// free whoever names it: writing it can only make a key's table appear.
func (w *writer) freeGen(vs *viewState) (uint8, error) {
	a := vs.active
	order := [2]uint8{1 - a, a}
	if !vs.tables[a].present {
		// No live table (a new view, or one that had no usable
		// backend): start with the active generation, 0 for a new view.
		order = [2]uint8{a, 1 - a}
	}
	used := w.tableUsers(vs)
	for _, g := range order {
		if !used[g] || !vs.tables[g].present {
			return g, nil
		}
	}
	return 1 - a, w.moveKeys(vs, 1-a, a)
}

// tableUsers reports which of a view's tables packets may be reading: those
// named by a key's confirmed entry or, while the key is unconfirmed, by
// the entry last tried too (the map holds one of the two, or neither). A
// key with no backends reads no table.
func (w *writer) tableUsers(vs *viewState) (used [2]bool) {
	for i := range w.st.keys {
		ks := &w.st.keys[i].keyState
		for _, e := range ks.candidates() {
			if e.ServiceID == vs.id && e.Backends > 0 {
				used[e.TableGen&1] = true
			}
		}
	}
	return used
}

// candidates are the entries the map may hold for a key.
func (ks *keyState) candidates() []ServiceEntry {
	if ks.ok {
		return []ServiceEntry{ks.entry}
	}
	return []ServiceEntry{ks.entry, ks.tried}
}

// moveKeys switches the view's keys that may use table generation from to
// generation to, whose table must be known (its size goes with it). The
// entry written is the one naming from, with only the table changed: what
// it refers to still exists, because frontends, source ranges and
// backends go only after every key of the service was written.
func (w *writer) moveKeys(vs *viewState, from, to uint8) error {
	t := vs.tables[to]
	if !t.present || !t.ok {
		return fmt.Errorf("keys of service ID %d use both its Maglev tables and table %s is unknown (an inconsistent restore? restart the agent)", vs.id, vs.id.Table(to))
	}
	onFrom := func(ks *keyState) (ServiceEntry, bool) {
		for _, e := range ks.candidates() {
			if e.ServiceID == vs.id && e.Backends > 0 && e.TableGen&1 == from {
				return e, true
			}
		}
		return ServiceEntry{}, false
	}
	for i := range w.st.keys {
		k, ks := w.st.keys[i].k, &w.st.keys[i].keyState
		e, move := onFrom(ks)
		if !move {
			continue
		}
		e.TableGen, e.TableSize = to, t.size
		if err := w.writeKey(k, ks, e); err != nil {
			return fmt.Errorf("move service key %s (%s) to Maglev table %s: %w", frontendIdent{k.Addr, k.Port, k.Protocol}, k.Scope, vs.id.Table(to), err)
		}
	}
	return nil
}

// deleteTables deletes both tables of views that lost their usable
// backends or went away, once the round's keys no longer point at them,
// then releases the IDs of the views that are gone.
func (r *Reconciler) deleteTables(jobs []*job) {
	type del struct {
		j   *job
		vs  *viewState
		gen uint8
	}
	var dels []del
	var ids []TableID
	for _, j := range jobs {
		if !j.alive() {
			continue
		}
		for scope, vs := range j.w.st.views {
			if vs == nil {
				continue
			}
			if fv := j.p.view(Scope(scope)); fv != nil && len(fv.usable) > 0 {
				continue
			}
			for g := range uint8(2) {
				if vs.tables[g].present {
					dels = append(dels, del{j, vs, g})
					ids = append(ids, vs.id.Table(g))
				}
			}
		}
	}
	errs := r.deleteMaglevs(ids)
	for _, d := range dels {
		if err := errs[d.vs.id.Table(d.gen)]; err != nil {
			d.j.fail(fmt.Errorf("delete Maglev table %s of service ID %d: %w", d.vs.id.Table(d.gen), d.vs.id, err))
			continue
		}
		d.vs.tables[d.gen] = tableState{}
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
				r.releaseServiceID(vs.id)
			}
		}
	}
}

// upsertMaglevs writes tables, in one batch when the datapath is a
// MaglevBatcher and there are several; when a batch fails, it retries one
// by one so that each failure is pinned on its table. It returns the
// failures by table.
func (r *Reconciler) upsertMaglevs(tables map[TableID][]BackendID) map[TableID]error {
	if b, ok := r.dp.(MaglevBatcher); ok && len(tables) > 1 {
		err := b.UpsertMaglevs(tables)
		if err == nil {
			return nil
		}
		r.log.Warn("batch write of Maglev tables failed, retrying one by one", "tables", len(tables), "err", err)
	}
	var errs map[TableID]error
	for _, id := range sortedIDs(tables) {
		if err := r.dp.UpsertMaglev(id, tables[id]); err != nil {
			if errs == nil {
				errs = map[TableID]error{}
			}
			errs[id] = err
		}
	}
	return errs
}

// deleteMaglevs is upsertMaglevs for deletes.
func (r *Reconciler) deleteMaglevs(ids []TableID) map[TableID]error {
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
	var errs map[TableID]error
	for _, id := range ids {
		if err := r.dp.DeleteMaglev(id); err != nil {
			if errs == nil {
				errs = map[TableID]error{}
			}
			errs[id] = err
		}
	}
	return errs
}

func sortedIDs[K ~uint32, V any](m map[K]V) []K {
	ids := make([]K, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
