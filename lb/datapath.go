package lb

import (
	"fmt"
	"net/netip"
	"time"
)

// ServiceID names one backend view of a service: the external frontends of a
// service port share one, its internal frontends another. It owns a Maglev
// table and its backends' IDs. Zero is never allocated.
type ServiceID uint32

// TableID names one of a ServiceID's two Maglev tables ("generations" 0
// and 1): the service ID shifted left by one, the generation in bit 0, as
// the datapath keys its map of tables. A service entry's TableGen says
// which of the two its packets use; the other is the spare the next table
// is written into, so that a change needs no swap of the live table.
type TableID uint32

// Table returns the ID of the service's table of generation gen (0 or 1;
// higher bits are ignored).
func (id ServiceID) Table(gen uint8) TableID { return TableID(id)<<1 | TableID(gen&1) }

// Service returns the service the table belongs to.
func (t TableID) Service() ServiceID { return ServiceID(t >> 1) }

// Gen returns the table's generation, 0 or 1.
func (t TableID) Gen() uint8 { return uint8(t & 1) }

// String is "service/gen", e.g. "12/1".
func (t TableID) String() string { return fmt.Sprintf("%d/%d", t.Service(), t.Gen()) }

// FrontendID names one frontend address; it is the reverse-NAT index that
// connection tracking and the socket hooks store to restore the address a
// client used. Zero is never allocated.
type FrontendID uint32

// BackendID names one backend of one ServiceID. Zero is never allocated; a
// Maglev slot never holds zero.
type BackendID uint32

// ServiceKey is the datapath's lookup key for a frontend. The same address
// has a ScopeExternal key (looked up by XDP) and a ScopeInternal key (looked
// up by the socket hooks).
type ServiceKey struct {
	Addr     netip.Addr
	Port     uint16
	Protocol Protocol
	Scope    Scope
}

// ServiceFlags are per-entry switches the datapath acts on.
type ServiceFlags uint16

const (
	// FlagSourceRanges: check the client against the source-range trie.
	FlagSourceRanges ServiceFlags = 1 << iota
	// FlagAffinity: reuse the client's previous backend within the timeout.
	FlagAffinity
	// FlagLocalOnly: the backends are those on this node (a Local traffic
	// policy); informative for inspection.
	FlagLocalOnly
)

// ServiceEntry is the value of a ServiceKey.
type ServiceEntry struct {
	ServiceID  ServiceID
	FrontendID FrontendID
	// Backends is how many backends may take new flows. Zero makes the
	// datapath reject new flows (TCP RST, ICMP unreachable, ECONNREFUSED).
	Backends uint32
	// TableSize and TableGen name the table the datapath picks from: the
	// ServiceID's table of generation TableGen, TableSize slots. Both are
	// in the one entry, so a write of the entry switches both at once.
	TableSize       uint32
	TableGen        uint8
	Mode            Mode
	Flags           ServiceFlags
	AffinityTimeout time.Duration
}

// BackendEntry is the value stored for a BackendID.
type BackendEntry struct {
	ServiceID ServiceID
	Addr      netip.Addr
	Port      uint16
	Tunnel    netip.Addr
	Weight    uint16
	State     BackendState
}

// FrontendEntry is the reverse-NAT value stored for a FrontendID, with the
// names that inspection and events print.
type FrontendEntry struct {
	ServiceID ServiceID
	Addr      netip.Addr
	Port      uint16
	Protocol  Protocol
	Scope     Scope
	Kind      FrontendKind
	Service   string // "namespace/name" or the edge service's name
	PortName  string
}

// Datapath is everything the reconciler needs from the maps. Upserts and
// deletes are idempotent; deleting a missing key succeeds.
type Datapath interface {
	UpsertBackend(BackendID, BackendEntry) error
	DeleteBackend(BackendID) error
	// UpsertMaglev writes a table. A table that doesn't exist yet, or
	// whose size changes, is swapped in whole: a packet sees the old table
	// or the new one, never a mix. A table that keeps its size may be
	// rewritten in place, slot by slot: callers write a table in place
	// only when no service entry uses it (the spare generation), and then
	// switch entries to it.
	UpsertMaglev(TableID, []BackendID) error
	DeleteMaglev(TableID) error
	UpsertFrontend(FrontendID, FrontendEntry) error
	DeleteFrontend(FrontendID) error
	UpsertSourceRange(ServiceID, netip.Prefix) error
	DeleteSourceRange(ServiceID, netip.Prefix) error
	UpsertService(ServiceKey, ServiceEntry) error
	DeleteService(ServiceKey) error
	// Dump reads everything back, for restoring state after a restart and
	// for inspection.
	Dump() (*DatapathState, error)
}

// DatapathState is the content of the maps, as read by Dump. Maglev tables
// are reported by their backend IDs in slot order; a service's live table
// is Maglev[entry.ServiceID.Table(entry.TableGen)].
type DatapathState struct {
	Services     map[ServiceKey]ServiceEntry
	Backends     map[BackendID]BackendEntry
	Frontends    map[FrontendID]FrontendEntry
	Maglev       map[TableID][]BackendID
	SourceRanges map[ServiceID][]netip.Prefix
}

// NewDatapathState returns an empty state with every map allocated.
func NewDatapathState() *DatapathState {
	return &DatapathState{
		Services:     map[ServiceKey]ServiceEntry{},
		Backends:     map[BackendID]BackendEntry{},
		Frontends:    map[FrontendID]FrontendEntry{},
		Maglev:       map[TableID][]BackendID{},
		SourceRanges: map[ServiceID][]netip.Prefix{},
	}
}

// MaglevBatcher is an optional extension of Datapath for datapaths whose
// table writes have a fixed cost per call: the BPF datapath maps its slab
// of tables into memory once per batch instead of once per table. Each
// table is written as by UpsertMaglev. On error some tables may have their
// new content and others the old one (or none, for a delete); repeating
// the call is safe.
type MaglevBatcher interface {
	UpsertMaglevs(map[TableID][]BackendID) error
	DeleteMaglevs([]TableID) error
}

// EntryBatcher is an optional extension of Datapath for datapaths that
// write many entries of one kind for much less than one call each: the
// BPF datapath writes a few thousand per BPF_MAP_UPDATE_BATCH syscall,
// where a start with 10k services otherwise makes one syscall per backend.
// Each method writes ids[i] := entries[i] as the single upsert would, in
// order, and returns how many leading entries it wrote. On error the
// entries from that count on may or may not have been written, and the
// error need not name one: the reconciler writes those one by one, so
// that a failure is pinned on its object.
type EntryBatcher interface {
	UpsertBackends([]BackendID, []BackendEntry) (int, error)
	UpsertFrontends([]FrontendID, []FrontendEntry) (int, error)
	UpsertServices([]ServiceKey, []ServiceEntry) (int, error)
}
