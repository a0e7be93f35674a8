package bpf

import "fmt"

// Reason is a drop (or reject) reason: the WEIR_REASON_* values of
// bpf/include/consts.h, the index of the weir_drops counters and
// Event.Reason. reasons_test.go checks the values against the header.
type Reason uint8

const (
	ReasonNone        Reason = 0 // WEIR_REASON_NONE
	ReasonMalformed   Reason = 1 // WEIR_REASON_MALFORMED
	ReasonNoBackend   Reason = 2 // WEIR_REASON_NO_BACKEND
	ReasonSourceRange Reason = 3 // WEIR_REASON_SOURCE_RANGE
	ReasonFragNeeded  Reason = 4 // WEIR_REASON_FRAG_NEEDED
	ReasonNoRoute     Reason = 5 // WEIR_REASON_NO_ROUTE
	ReasonEncapFailed Reason = 6 // WEIR_REASON_ENCAP_FAILED
	ReasonSNATNoPort  Reason = 7 // WEIR_REASON_SNAT_NO_PORT
	ReasonPolicy      Reason = 8 // WEIR_REASON_POLICY
	ReasonUnsupported Reason = 9 // WEIR_REASON_UNSUPPORTED

	// ReasonMax bounds the reasons (WEIR_REASON_MAX): the size of the
	// weir_drops map.
	ReasonMax Reason = 32
)

// reasonNames are the metric label values, lower-case C names.
var reasonNames = [...]string{
	ReasonNone:        "none",
	ReasonMalformed:   "malformed",
	ReasonNoBackend:   "no_backend",
	ReasonSourceRange: "source_range",
	ReasonFragNeeded:  "frag_needed",
	ReasonNoRoute:     "no_route",
	ReasonEncapFailed: "encap_failed",
	ReasonSNATNoPort:  "snat_no_port",
	ReasonPolicy:      "policy",
	ReasonUnsupported: "unsupported",
}

// String returns the reason's label, or "unknown_N" for a value this
// agent doesn't know (programs newer than the agent).
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("unknown_%d", uint8(r))
}

// ReasonName names a raw reason byte, as read from an event or a counter
// index.
func ReasonName(r uint8) string { return Reason(r).String() }

// Reasons returns every known reason, ReasonNone first, for registering
// metrics up front.
func Reasons() []Reason {
	rs := make([]Reason, len(reasonNames))
	for i := range rs {
		rs[i] = Reason(i)
	}
	return rs
}
