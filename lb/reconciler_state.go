package lb

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// The applied bookkeeping mirrors what the maps hold for each service. An
// item is either confirmed (ok: the map holds exactly entry) or merely
// owned (!ok: a write was attempted or is pending, so the map may or may
// not hold it). Desired items are written unless confirmed and equal;
// stale items are deleted whenever owned, because a delete of a missing
// key succeeds. IDs are owned from allocation until the delete of their
// entry succeeded, so a failed write never leaks one.

// svcState is the applied state of one service.
//
// A service's frontends and keys are few, so they are slices sorted by
// frontendIdent and compareServiceKey rather than maps (a map per service
// took several times the memory). A pointer into them is good until the
// next add or remove.
type svcState struct {
	name      ServiceName
	views     [2]*viewState // by Scope
	frontends []svcFrontend
	keys      []svcKey
}

type svcFrontend struct {
	ident frontendIdent
	frontendState
}

type svcKey struct {
	k ServiceKey
	keyState
}

func newSvcState(name ServiceName, frontends int) *svcState {
	return &svcState{
		name:      name,
		frontends: make([]svcFrontend, 0, frontends),
		keys:      make([]svcKey, 0, 2*frontends),
	}
}

// frontendAt finds id in the sorted frontends: its index, or where it
// would go.
func (s *svcState) frontendAt(id frontendIdent) (int, bool) {
	return slices.BinarySearchFunc(s.frontends, id, func(f svcFrontend, id frontendIdent) int { return compareIdent(f.ident, id) })
}

// frontend returns the service's frontend id; nil when it has none.
func (s *svcState) frontend(id frontendIdent) *frontendState {
	i, ok := s.frontendAt(id)
	if !ok {
		return nil
	}
	return &s.frontends[i].frontendState
}

// addFrontend adds a frontend the service doesn't have.
func (s *svcState) addFrontend(id frontendIdent, fs frontendState) {
	i, _ := s.frontendAt(id)
	s.frontends = slices.Insert(s.frontends, i, svcFrontend{id, fs})
}

// keyAt finds k in the sorted keys: its index, or where it would go.
func (s *svcState) keyAt(k ServiceKey) (int, bool) {
	return slices.BinarySearchFunc(s.keys, k, func(e svcKey, k ServiceKey) int { return compareServiceKey(e.k, k) })
}

// key returns the state of the service's key k; nil when it has none.
func (s *svcState) key(k ServiceKey) *keyState {
	i, ok := s.keyAt(k)
	if !ok {
		return nil
	}
	return &s.keys[i].keyState
}

// addKey adds k unless the service has it.
func (s *svcState) addKey(k ServiceKey, ks keyState) {
	if i, ok := s.keyAt(k); !ok {
		s.keys = slices.Insert(s.keys, i, svcKey{k, ks})
	}
}

func (s *svcState) empty() bool {
	return s.views[0] == nil && s.views[1] == nil && len(s.frontends) == 0 && len(s.keys) == 0
}

// viewState is one ServiceID: its backends, its two tables and source
// ranges. Keys are written with TableGen active: the generation of the
// table last written (see writeTables).
type viewState struct {
	id ServiceID
	// backends are sorted by address:port, a slice rather than a map:
	// at 10k services of 10 backends a map per view took twice the
	// memory. Pointers into it are good until assignIDs or removeStale
	// change it.
	backends []viewBackend
	tables   [2]tableState // by generation
	active   uint8
	ranges   map[netip.Prefix]bool // value: confirmed; nil until the view has one
}

// viewBackend is a backend of a view and its address:port.
type viewBackend struct {
	ap netip.AddrPort
	backendState
}

func newViewState(id ServiceID, backends int) *viewState {
	return &viewState{id: id, backends: make([]viewBackend, 0, backends)}
}

// backend returns the view's backend at ap; nil when it has none.
func (v *viewState) backend(ap netip.AddrPort) *backendState {
	i, ok := findBackend(v.backends, ap)
	if !ok {
		return nil
	}
	return &v.backends[i].backendState
}

// backendCursor finds the backends of a view for addresses asked in
// address order (a flattened view's backends, or its usable ones) in one
// pass, with equality tests only: binary searches with AddrPort.Compare
// were a tenth of a large round's CPU time.
type backendCursor struct {
	v    *viewState
	next int
}

func (v *viewState) cursor() backendCursor { return backendCursor{v: v} }

// find returns the view's backend at ap; nil when it has none. Asked out
// of order, it still finds it, by a binary search.
func (c *backendCursor) find(ap netip.AddrPort) *backendState {
	bs := c.v.backends
	for i := c.next; i < len(bs); i++ {
		if bs[i].ap == ap {
			c.next = i + 1
			return &bs[i].backendState
		}
	}
	return c.v.backend(ap)
}

func findBackend(bs []viewBackend, ap netip.AddrPort) (int, bool) {
	return slices.BinarySearchFunc(bs, ap, func(b viewBackend, ap netip.AddrPort) int { return b.ap.Compare(ap) })
}

func compareViewBackend(a, b viewBackend) int { return a.ap.Compare(b.ap) }

// addRange records a source range with its confirmation.
func (v *viewState) addRange(p netip.Prefix, ok bool) {
	if v.ranges == nil {
		v.ranges = map[netip.Prefix]bool{}
	}
	v.ranges[p] = ok
}

func (v *viewState) empty() bool {
	return len(v.backends) == 0 && len(v.ranges) == 0 && !v.tables[0].present && !v.tables[1].present
}

// backendState is a backend of a view. Of the entry the map holds it
// keeps only what the view doesn't say already (the address and port are
// its key in the view, the service ID the view's): 100k backends cost
// half the memory of a full BackendEntry each.
type backendState struct {
	id     BackendID
	ok     bool
	weight uint16
	state  BackendState
	tunnel netip.Addr
}

// holds reports whether the map is known to hold e, an entry of the
// backend's view for its address and port.
func (bs *backendState) holds(e BackendEntry) bool {
	return bs.ok && bs.weight == e.Weight && bs.state == e.State && bs.tunnel == e.Tunnel
}

// confirm records that the map holds e.
func (bs *backendState) confirm(e BackendEntry) {
	bs.weight, bs.state, bs.tunnel, bs.ok = e.Weight, e.State, e.Tunnel, true
}

type frontendState struct {
	id    FrontendID
	entry FrontendEntry
	ok    bool
}

// keyState is a service key. Besides the confirmed entry it remembers the
// last entry tried while unconfirmed: the map holds one of the two (or
// neither), so either may name the table packets use (see tableUsers).
type keyState struct {
	entry ServiceEntry
	ok    bool
	tried ServiceEntry
}

// tableState describes one of a view's Maglev tables. A table is compared
// by a hash of the input that built it when known, else (after a restart)
// by a hash of its slots, so an unchanged table is never rewritten and the
// bookkeeping holds neither a copy of every table nor of its input.
type tableState struct {
	present    bool // the map may hold a table for the view
	ok         bool // size and hash describe the table in the map
	inputKnown bool // input describes what built the table
	size       uint32
	hash       uint64
	input      uint64 // hashInputs of the backends that built it
}

// hashTable is FNV-1a over the slots.
func hashTable[T ~uint32](slots []T) uint64 {
	h := uint64(14695981039346656037)
	for _, s := range slots {
		h ^= uint64(s)
		h *= 1099511628211
	}
	return h
}

// hashInputs is FNV-1a over what a Maglev build reads of each backend:
// its ID, weight and address:port (its key). Two inputs that hash alike
// are taken as equal, as restored tables are by hashTable.
func hashInputs(vs *viewState, usable []Backend) uint64 {
	h := uint64(14695981039346656037)
	c := vs.cursor()
	mix := func(v uint64) {
		for range 8 {
			h ^= v & 0xff
			h *= 1099511628211
			v >>= 8
		}
	}
	for _, b := range usable {
		ap := b.AddrPort()
		a := ap.Addr().As16()
		mix(uint64(c.find(ap).id)<<32 | uint64(b.Weight)<<16 | uint64(ap.Port()))
		mix(binary.BigEndian.Uint64(a[:8]))
		mix(binary.BigEndian.Uint64(a[8:]))
	}
	return h
}

// orphanState holds entries found in the maps at start that belong to no
// service (a crash between writes, or a service renamed while the agent
// was down). They are deleted once the first full desired state arrived.
type orphanState struct {
	keys       map[ServiceKey]bool
	frontends  map[FrontendID]bool
	backends   map[BackendID]BackendEntry
	tables     map[TableID]bool
	ranges     map[ServiceID][]netip.Prefix
	serviceIDs map[ServiceID]bool // to release once nothing of theirs is left
}

func newOrphanState() *orphanState {
	return &orphanState{
		keys:       map[ServiceKey]bool{},
		frontends:  map[FrontendID]bool{},
		backends:   map[BackendID]BackendEntry{},
		tables:     map[TableID]bool{},
		ranges:     map[ServiceID][]netip.Prefix{},
		serviceIDs: map[ServiceID]bool{},
	}
}

func (o *orphanState) empty() bool {
	return len(o.keys) == 0 && len(o.frontends) == 0 && len(o.backends) == 0 &&
		len(o.tables) == 0 && len(o.ranges) == 0 && len(o.serviceIDs) == 0
}
