package lb

import (
	"fmt"
	"net/netip"
)

// A round writes its backends, frontends and service keys kind by kind
// across its services (make-before-break holds per service: every one of
// its backends before its tables, its frontends before its keys). When the
// datapath is an EntryBatcher and a kind has many entries, they go in few
// calls: a start with 10k services would otherwise make 100k backend
// writes of a syscall each.

// batchMin is the number of entries of a kind from which a round hands
// them to an EntryBatcher; a change of a few services stays on the single
// writes, whose errors name their object directly.
const batchMin = 256

// batchMax bounds the entries held for one batch call, so a large round
// doesn't keep a second copy of every entry.
const batchMax = 4096

// entryBatch collects one kind of entry of a round: the datapath's keys
// and values, and per entry the job it belongs to and a reference to its
// bookkeeping.
type entryBatch[K, V, R any] struct {
	r    *Reconciler
	jobs []*job
	keys []K
	vals []V
	refs []R
	// batch is the EntryBatcher method of the kind.
	batch func(EntryBatcher, []K, []V) (int, error)
	// one writes entry i alone and returns the error naming its object.
	one func(k K, v V, ref R) error
	// done confirms entry i's bookkeeping once it is written.
	done func(j *job, v V, ref R)
	// flushed is set once a part of this kind went out.
	flushed bool
}

// add queues an entry; a full batch is written at once. A job that failed
// in an earlier part of the batch writes nothing more.
func (b *entryBatch[K, V, R]) add(j *job, k K, v V, ref R) {
	if !j.alive() {
		return
	}
	b.jobs = append(b.jobs, j)
	b.keys = append(b.keys, k)
	b.vals = append(b.vals, v)
	b.refs = append(b.refs, ref)
	if len(b.keys) >= batchMax {
		b.flush()
	}
}

// flush writes the queued entries: in one EntryBatcher call when there
// are enough, else one by one; after a failed batch, the entries it may
// not have written go one by one too, so that each failure is pinned on
// its object and fails only its service. A service's entries after its
// first failure are skipped, as its later steps are.
func (b *entryBatch[K, V, R]) flush() {
	start := 0
	eb, ok := b.r.dp.(EntryBatcher)
	if ok && (len(b.keys) >= batchMin || (b.flushed && len(b.keys) > 1)) {
		n, err := b.batch(eb, b.keys, b.vals)
		for i := range n {
			b.done(b.jobs[i], b.vals[i], b.refs[i])
		}
		if err != nil {
			b.r.log.Warn("batch write failed, writing its rest one by one", "entries", len(b.keys), "written", n, "err", err)
		}
		start = n
		if err == nil {
			start = len(b.keys)
		}
	}
	for i := start; i < len(b.keys); i++ {
		j := b.jobs[i]
		if !j.alive() {
			continue
		}
		if err := b.one(b.keys[i], b.vals[i], b.refs[i]); err != nil {
			j.fail(err)
			continue
		}
		b.done(j, b.vals[i], b.refs[i])
	}
	b.flushed = true
	b.jobs, b.keys, b.vals, b.refs = b.jobs[:0], b.keys[:0], b.vals[:0], b.refs[:0]
}

// backendRef locates a backend write's bookkeeping and names it in errors.
type backendRef struct {
	bs *backendState
	vs *viewState
	ap netip.AddrPort
}

// writeBackends writes the backends of the round's jobs that differ from
// what the maps hold.
func (r *Reconciler) writeBackends(jobs []*job) {
	b := &entryBatch[BackendID, BackendEntry, backendRef]{
		r:     r,
		batch: EntryBatcher.UpsertBackends,
		one: func(id BackendID, e BackendEntry, ref backendRef) error {
			if err := r.dp.UpsertBackend(id, e); err != nil {
				return fmt.Errorf("write backend %s (ID %d) of service ID %d: %w", ref.ap, id, ref.vs.id, err)
			}
			return nil
		},
		done: func(j *job, e BackendEntry, ref backendRef) {
			ref.bs.confirm(e)
			j.w.wrote()
		},
	}
	for _, j := range jobs {
		if !j.alive() || j.p == nil {
			continue
		}
		for scope, fv := range j.p.flat.views {
			if fv == nil {
				continue
			}
			vs := j.w.st.views[scope]
			c := vs.cursor()
			for _, be := range fv.backends {
				ap := be.AddrPort()
				bs := c.find(ap)
				want := BackendEntry{ServiceID: vs.id, Addr: be.Addr, Port: be.Port, Tunnel: be.Tunnel, Weight: be.Weight, State: be.State}
				if bs.holds(want) {
					continue
				}
				bs.ok = false
				b.add(j, bs.id, want, backendRef{bs: bs, vs: vs, ap: ap})
			}
		}
	}
	b.flush()
}

// frontendRef locates a frontend write's bookkeeping.
type frontendRef struct {
	fs    *frontendState
	ident frontendIdent
}

// writeFrontends writes the reverse-NAT entries of the round's jobs that
// differ from what the maps hold.
func (r *Reconciler) writeFrontends(jobs []*job) {
	b := &entryBatch[FrontendID, FrontendEntry, frontendRef]{
		r:     r,
		batch: EntryBatcher.UpsertFrontends,
		one: func(id FrontendID, e FrontendEntry, ref frontendRef) error {
			if err := r.dp.UpsertFrontend(id, e); err != nil {
				return fmt.Errorf("write frontend %s (ID %d): %w", ref.ident, id, err)
			}
			return nil
		},
		done: func(j *job, e FrontendEntry, ref frontendRef) {
			ref.fs.entry, ref.fs.ok = e, true
			j.w.wrote()
		},
	}
	for _, j := range jobs {
		if !j.alive() || j.p == nil {
			continue
		}
		st := j.w.st
		svc, port := entryName(st.name)
		for _, f := range j.p.flat.frontends {
			fs := st.frontend(f.ident())
			want := FrontendEntry{
				ServiceID: st.views[f.Scope].id,
				Addr:      f.Addr,
				Port:      f.Port,
				Protocol:  f.Protocol,
				Scope:     f.Scope,
				Kind:      f.Kind,
				Service:   svc,
				PortName:  port,
			}
			if fs.ok && fs.entry == want {
				continue
			}
			fs.ok = false
			b.add(j, fs.id, want, frontendRef{fs: fs, ident: f.ident()})
		}
	}
	b.flush()
}

// keyRef locates a service key write's bookkeeping.
type keyRef struct {
	ks    *keyState
	scope Scope
}

// writeKeys writes the service entries of the round's jobs that differ
// from what the maps hold: each names its view's live table.
func (r *Reconciler) writeKeys(jobs []*job) {
	b := &entryBatch[ServiceKey, ServiceEntry, keyRef]{
		r:     r,
		batch: EntryBatcher.UpsertServices,
		one: func(k ServiceKey, e ServiceEntry, ref keyRef) error {
			if err := r.dp.UpsertService(k, e); err != nil {
				return fmt.Errorf("write service key %s (%s): %w", frontendIdent{k.Addr, k.Port, k.Protocol}, ref.scope, err)
			}
			return nil
		},
		done: func(j *job, e ServiceEntry, ref keyRef) {
			ref.ks.confirm(e)
			j.w.wrote()
		},
	}
	for _, j := range jobs {
		if !j.alive() || j.p == nil {
			continue
		}
		st := j.w.st
		for _, f := range j.p.flat.frontends {
			fs := st.frontend(f.ident())
			for _, scope := range f.keyScopes() {
				k := f.key(scope)
				fv, vs := j.p.flat.views[scope], st.views[scope]
				want := ServiceEntry{
					ServiceID:       vs.id,
					FrontendID:      fs.id,
					Backends:        uint32(len(fv.usable)),
					TableSize:       fv.tableSize,
					TableGen:        vs.active,
					Mode:            fv.mode,
					Flags:           f.entryFlags(fv.flags),
					AffinityTimeout: fv.affinityTimeout,
				}
				ks := st.key(k)
				if ks.ok && ks.entry == want {
					continue
				}
				ks.try(want)
				b.add(j, k, want, keyRef{ks: ks, scope: scope})
			}
		}
	}
	b.flush()
}

// try records that e is about to be written: until confirmed, the map
// holds the old entry, e, or neither.
func (ks *keyState) try(e ServiceEntry) { ks.ok, ks.tried = false, e }

// confirm records that the map holds e.
func (ks *keyState) confirm(e ServiceEntry) { ks.entry, ks.ok, ks.tried = e, true, ServiceEntry{} }
