package bpf

import "structs"

// Go mirrors of the structs in bpf/include/types.h, one per map key or
// value. Layout rules, checked against the object's BTF by types_test.go:
//   - fields in C order, padding as explicit `_` fields (so the memory can
//     be handed to the kernel as is, and padding is never set by hand);
//   - addresses are Addr (16 bytes, IPv4 stored IPv4-mapped);
//   - ports are Port: the two bytes of a __be16, network order;
//   - every other integer is native-endian, as the kernel reads it.
//
// Because no field needs conversion, cilium/ebpf passes a pointer to these
// structs to the kernel without copying or reflection-based encoding.

// ServiceKey must match struct service_key in bpf/include/types.h.
type ServiceKey struct {
	_     structs.HostLayout
	Addr  Addr
	Port  Port
	Proto uint8
	Scope uint8 // ScopeExternal or ScopeInternal
}

// ServiceValue must match struct service_value in bpf/include/types.h.
type ServiceValue struct {
	_          structs.HostLayout
	ServiceID  uint32
	FrontendID uint32
	// Backends is how many backends take new flows; 0 rejects new flows.
	Backends        uint32
	TableSize       uint32 // slots in the service's Maglev table
	AffinityTimeout uint32 // seconds
	Flags           uint16 // ServiceFlag* bits
	Mode            uint8  // Mode* values
	// TableGen picks the service's live Maglev table: weir_maglev key
	// ServiceID<<1 | TableGen&1 (lb.TableID).
	TableGen uint8
}

// BackendValue must match struct backend_value in bpf/include/types.h.
type BackendValue struct {
	_         structs.HostLayout
	Addr      Addr
	Tunnel    Addr // outer destination for DSR
	Port      Port
	Weight    uint16
	ServiceID uint32
	State     uint8 // BackendState* values
	_         [3]uint8
}

// FrontendValue must match struct frontend_value in bpf/include/types.h.
// Name and PortName are NUL-terminated when shorter than their arrays.
type FrontendValue struct {
	_         structs.HostLayout
	Addr      Addr
	Port      Port
	Proto     uint8
	Scope     uint8
	Kind      uint8
	_         [3]uint8
	ServiceID uint32
	Name      [NameLen]byte
	PortName  [PortNameLen]byte
}

// SourceRangeKey must match struct source_range_key in
// bpf/include/types.h. Prefixlen counts the 32 bits of ServiceID plus the
// address bits; see SourceRangeKeyFor.
type SourceRangeKey struct {
	_         structs.HostLayout
	Prefixlen uint32
	// ServiceID is native-endian like the C side; its 32 bits are always
	// inside the prefix, so the byte order does not change what matches.
	ServiceID uint32
	Addr      Addr
}

// AffinityKey must match struct affinity_key in bpf/include/types.h.
type AffinityKey struct {
	_           structs.HostLayout
	NetnsCookie uint64 // 0 for XDP
	ServiceID   uint32
	_           uint32
	Client      Addr
}

// AffinityValue must match struct affinity_value in bpf/include/types.h.
type AffinityValue struct {
	_         structs.HostLayout
	LastUsed  uint64 // CLOCK_MONOTONIC ns (XDP: the coarse clock)
	BackendID uint32
	_         uint32
}

// TrafficStats must match struct traffic_stats in bpf/include/types.h.
// The stats maps are per-CPU: a lookup returns one per possible CPU.
type TrafficStats struct {
	_       structs.HostLayout
	Packets uint64
	Bytes   uint64
}

// CTKey must match struct ct_key in bpf/include/types.h: the client's
// packet as it arrived.
type CTKey struct {
	_     structs.HostLayout
	Saddr Addr
	Daddr Addr
	Sport Port
	Dport Port
	Proto uint8
	_     [3]uint8
}

// CTValue must match struct ct_value in bpf/include/types.h.
type CTValue struct {
	_          structs.HostLayout
	LastSeen   uint64 // CLOCK_MONOTONIC ns, coarse (bpf_ktime_get_coarse_ns)
	BackendID  uint32
	FrontendID uint32
	ServiceID  uint32
	NatPort    Port // SNAT source port; zero for DSR
	Flags      uint8
	_          uint8
	Fib        FIBCache // towards the backend
	// What the flow's packets need of the backend, copied with the
	// backend's word (weir_backend_words).
	BackendWord uint32
	BackendPort Port
	_           [2]uint8
	BackendDst  Addr // DSR outer destination, or the backend (SNAT)
}

// FIBCache must match struct fib_cache in bpf/include/types.h: a flow's
// next hop as the XDP datapath cached it.
type FIBCache struct {
	_       structs.HostLayout
	Ifindex uint32 // egress device; 0: none
	Len     uint16 // the largest L3 length checked against its MTU
	Dmac    [6]byte
	Smac    [6]byte
	_       [6]uint8
}

// SNATKey must match struct snat_key in bpf/include/types.h: a reply from
// a backend to the node.
type SNATKey struct {
	_       structs.HostLayout
	Addr    Addr // backend
	Port    Port // backend port
	NatPort Port
	Proto   uint8
	_       [3]uint8
}

// SNATValue must match struct snat_value in bpf/include/types.h.
type SNATValue struct {
	_          structs.HostLayout
	LastSeen   uint64
	Client     Addr
	ClientPort Port
	_          [2]uint8
	FrontendID uint32
	Fib        FIBCache // towards the client
}

// SockRevNatKey must match struct sock_revnat_key in bpf/include/types.h.
type SockRevNatKey struct {
	_      structs.HostLayout
	Cookie uint64 // socket cookie
	Addr   Addr   // backend
	Port   Port
	_      [6]uint8
}

// SockRevNatValue must match struct sock_revnat_value in
// bpf/include/types.h.
type SockRevNatValue struct {
	_          structs.HostLayout
	Addr       Addr // frontend
	Port       Port
	_          [2]uint8
	FrontendID uint32
}

// Event must match struct event in bpf/include/types.h: one entry of the
// weir_events ring buffer. Decode a record with UnmarshalEvent.
type Event struct {
	_         structs.HostLayout
	Timestamp uint64 // bpf_ktime_get_ns()
	Ifindex   uint32
	ServiceID uint32
	BackendID uint32
	Type      uint8 // EventDrop or EventNewFlow
	Reason    uint8 // Reason values
	Proto     uint8
	_         uint8
	Saddr     Addr
	Daddr     Addr
	Sport     Port
	Dport     Port
	_         uint32
}
