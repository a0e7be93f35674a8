package lb

import (
	"net/netip"
	"time"
)

// ServiceID names one backend view of a service: the external frontends of a
// service port share one, its internal frontends another. It owns a Maglev
// table and its backends' IDs. Zero is never allocated.
type ServiceID uint32

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
	Backends        uint32
	TableSize       uint32
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
	// UpsertMaglev replaces a service's table atomically: a packet sees the
	// old table or the new one, never a mix.
	UpsertMaglev(ServiceID, []BackendID) error
	DeleteMaglev(ServiceID) error
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
// are reported by their backend IDs in slot order.
type DatapathState struct {
	Services     map[ServiceKey]ServiceEntry
	Backends     map[BackendID]BackendEntry
	Frontends    map[FrontendID]FrontendEntry
	Maglev       map[ServiceID][]BackendID
	SourceRanges map[ServiceID][]netip.Prefix
}

// NewDatapathState returns an empty state with every map allocated.
func NewDatapathState() *DatapathState {
	return &DatapathState{
		Services:     map[ServiceKey]ServiceEntry{},
		Backends:     map[BackendID]BackendEntry{},
		Frontends:    map[FrontendID]FrontendEntry{},
		Maglev:       map[ServiceID][]BackendID{},
		SourceRanges: map[ServiceID][]netip.Prefix{},
	}
}

// MaglevBatcher is an optional extension of Datapath for datapaths whose
// table swap has a fixed cost per call: the BPF datapath's kernel waits for
// an RCU grace period (about 10 ms) after every write to the map of Maglev
// tables, so 10k services one by one take minutes and in one batch well
// under a second. Each service's swap stays atomic. On error some services
// may have their new table and others the old one (or none, for a
// delete); repeating the call is safe.
type MaglevBatcher interface {
	UpsertMaglevs(map[ServiceID][]BackendID) error
	DeleteMaglevs([]ServiceID) error
}
