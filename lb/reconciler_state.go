package lb

import (
	"net/netip"

	"github.com/weir-lb/weir/maglev"
)

// The applied bookkeeping mirrors what the maps hold for each service. An
// item is either confirmed (ok: the map holds exactly entry) or merely
// owned (!ok: a write was attempted or is pending, so the map may or may
// not hold it). Desired items are written unless confirmed and equal;
// stale items are deleted whenever owned, because a delete of a missing
// key succeeds. IDs are owned from allocation until the delete of their
// entry succeeded, so a failed write never leaks one.

// svcState is the applied state of one service.
type svcState struct {
	name      ServiceName
	views     [2]*viewState // by Scope
	frontends map[frontendIdent]*frontendState
	keys      map[ServiceKey]*keyState
}

func newSvcState(name ServiceName, frontends int) *svcState {
	return &svcState{
		name:      name,
		frontends: make(map[frontendIdent]*frontendState, frontends),
		keys:      make(map[ServiceKey]*keyState, 2*frontends),
	}
}

func (s *svcState) empty() bool {
	return s.views[0] == nil && s.views[1] == nil && len(s.frontends) == 0 && len(s.keys) == 0
}

// viewState is one ServiceID: its backends, its two tables and source
// ranges. Keys are written with TableGen active: the generation of the
// table last written (see writeTables).
type viewState struct {
	id       ServiceID
	backends map[netip.AddrPort]*backendState
	tables   [2]tableState // by generation
	active   uint8
	ranges   map[netip.Prefix]bool // value: confirmed
}

func newViewState(id ServiceID, backends int) *viewState {
	return &viewState{id: id, backends: make(map[netip.AddrPort]*backendState, backends), ranges: map[netip.Prefix]bool{}}
}

func (v *viewState) empty() bool {
	return len(v.backends) == 0 && len(v.ranges) == 0 && !v.tables[0].present && !v.tables[1].present
}

type backendState struct {
	id    BackendID
	key   string // address:port, the backend's Maglev key
	entry BackendEntry
	ok    bool
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
// by the input that built it when known, else (after a restart) by a hash
// of its slots, so an unchanged table is never rewritten and the
// bookkeeping doesn't hold a copy of every table.
type tableState struct {
	present bool // the map may hold a table for the view
	ok      bool // size and hash describe the table in the map
	size    uint32
	hash    uint64
	inputs  []maglev.Backend // nil when unknown
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
