package bpf

// Constants of bpf/include/consts.h and types.h that Go code writes into or
// reads from the maps; consts_test.go checks them against the headers. The
// lb package's Scope, Mode, ServiceFlags and BackendState use the same
// numbers, and the test checks that too, so the Datapath stores them as is.
const (
	NameLen     = 128 // WEIR_NAME_LEN: bytes of frontend_value.name
	PortNameLen = 32  // WEIR_PORT_NAME_LEN: bytes of frontend_value.port_name

	ScopeExternal = 0 // WEIR_SCOPE_EXTERNAL
	ScopeInternal = 1 // WEIR_SCOPE_INTERNAL

	ModeDSR    = 0 // WEIR_MODE_DSR
	ModeSNAT   = 1 // WEIR_MODE_SNAT
	ModeHybrid = 2 // WEIR_MODE_HYBRID

	ServiceFlagSourceRanges = 1 << 0 // WEIR_SVC_SOURCE_RANGES
	ServiceFlagAffinity     = 1 << 1 // WEIR_SVC_AFFINITY
	ServiceFlagLocalOnly    = 1 << 2 // WEIR_SVC_LOCAL_ONLY

	BackendStateActive      = 0 // WEIR_BACKEND_ACTIVE
	BackendStateTerminating = 1 // WEIR_BACKEND_TERMINATING
	BackendStateQuarantined = 2 // WEIR_BACKEND_QUARANTINED

	EventDrop    = 1 // WEIR_EVENT_DROP
	EventNewFlow = 2 // WEIR_EVENT_NEW_FLOW
)
