package xdp

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/weir-lb/weir/bpf"
)

// Config is the per-node configuration of the XDP program. Zero fields
// take the defaults below.
type Config struct {
	// Maps are the shared maps (bpf.OpenMaps). Required.
	Maps *bpf.Maps
	// SNATv4 and SNATv6 are the node's SNAT source addresses. An invalid
	// (zero) address disables SNAT for that family: its SNAT flows are
	// dropped with reason "unsupported".
	SNATv4, SNATv6 netip.Addr
	// SNATPortMin and SNATPortMax bound the SNAT source ports (default
	// 32768-60999). A backend's reply to the SNAT address on a port of
	// the range is taken for a SNAT flow when one holds that port: when
	// the SNAT address is one the node also uses for its own connections
	// to backends, keep the range apart from the node's ephemeral ports
	// (net.ipv4.ip_local_port_range, the same range by default; the
	// agent's --snat-port-range auto does).
	SNATPortMin, SNATPortMax uint16
	// EncapSourceV4 and EncapSourceV6 are the prefixes DSR outer source
	// addresses are drawn from (a hash of the client's address and port
	// fills the host bits; IPv6 uses at most the last 32). Defaults:
	// 172.16.0.0/16 and fd00:77:65:69:72::/80.
	EncapSourceV4, EncapSourceV6 netip.Prefix
	// CTTimeoutTCP and CTTimeoutOther are how long an idle flow keeps its
	// backend (default 6h and 60s).
	CTTimeoutTCP, CTTimeoutOther time.Duration
	// EventsPerMillisecond bounds drop and flow events per CPU (default
	// 32); the rest are counted in weir_events_lost.
	EventsPerMillisecond uint32
	// NewFlowSample emits a new-flow event for one new flow in N; 0 (the
	// default) emits none.
	NewFlowSample uint32
	// Logger receives the few operational messages (native XDP falling
	// back to generic). Default slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
var (
	DefaultEncapSourceV4 = netip.MustParsePrefix("172.16.0.0/16")
	DefaultEncapSourceV6 = netip.MustParsePrefix("fd00:77:65:69:72::/80")
)

const (
	DefaultSNATPortMin          = 32768
	DefaultSNATPortMax          = 60999
	DefaultCTTimeoutTCP         = 6 * time.Hour
	DefaultCTTimeoutOther       = 60 * time.Second
	DefaultEventsPerMillisecond = 32
)

func (c Config) withDefaults() Config {
	if c.SNATPortMin == 0 && c.SNATPortMax == 0 {
		c.SNATPortMin, c.SNATPortMax = DefaultSNATPortMin, DefaultSNATPortMax
	}
	if !c.EncapSourceV4.IsValid() {
		c.EncapSourceV4 = DefaultEncapSourceV4
	}
	if !c.EncapSourceV6.IsValid() {
		c.EncapSourceV6 = DefaultEncapSourceV6
	}
	if c.CTTimeoutTCP == 0 {
		c.CTTimeoutTCP = DefaultCTTimeoutTCP
	}
	if c.CTTimeoutOther == 0 {
		c.CTTimeoutOther = DefaultCTTimeoutOther
	}
	if c.EventsPerMillisecond == 0 {
		c.EventsPerMillisecond = DefaultEventsPerMillisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.Maps == nil {
		return fmt.Errorf("xdp: Config.Maps is nil (open the shared maps with bpf.OpenMaps first)")
	}
	if c.SNATv4.IsValid() && !c.SNATv4.Unmap().Is4() {
		return fmt.Errorf("xdp: SNATv4 %s is not an IPv4 address", c.SNATv4)
	}
	if c.SNATv6.IsValid() && (!c.SNATv6.Is6() || c.SNATv6.Is4In6()) {
		return fmt.Errorf("xdp: SNATv6 %s is not an IPv6 address", c.SNATv6)
	}
	if c.SNATPortMin == 0 || c.SNATPortMin > c.SNATPortMax {
		return fmt.Errorf("xdp: SNAT port range %d-%d is empty or starts at 0 (set SNATPortMin <= SNATPortMax, both > 0)", c.SNATPortMin, c.SNATPortMax)
	}
	if !c.EncapSourceV4.Addr().Is4() {
		return fmt.Errorf("xdp: EncapSourceV4 %s is not an IPv4 prefix", c.EncapSourceV4)
	}
	if !c.EncapSourceV6.Addr().Is6() || c.EncapSourceV6.Addr().Is4In6() {
		return fmt.Errorf("xdp: EncapSourceV6 %s is not an IPv6 prefix", c.EncapSourceV6)
	}
	if c.CTTimeoutTCP < time.Second || c.CTTimeoutOther < time.Second {
		return fmt.Errorf("xdp: conntrack timeouts %v/%v must be at least 1s", c.CTTimeoutTCP, c.CTTimeoutOther)
	}
	return nil
}

// be32 is a network-order 32-bit word as the C side stores it (__be32):
// the bytes in order, reinterpreted in host order.
func be32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

// hostMask32 returns, in network order, the host bits of the last 32 bits
// of a prefix of length bits in an address of total bits.
func hostMask32(bits, total int) uint32 {
	host := total - bits
	if host >= 32 {
		return 0xffffffff
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(1)<<host-1)
	return be32(b[:])
}

// setVariables writes the configuration into the object's volatile
// consts.
func (c Config) setVariables(spec *ebpf.CollectionSpec) error {
	var snat4 uint32
	if c.SNATv4.IsValid() {
		a := c.SNATv4.Unmap().As4()
		snat4 = be32(a[:])
	}
	var snat6 [16]byte
	if c.SNATv6.IsValid() {
		snat6 = c.SNATv6.As16()
	}
	e4 := c.EncapSourceV4.Masked()
	e4a := e4.Addr().As4()
	e6 := c.EncapSourceV6.Masked()
	vars := map[string]any{
		"cfg_snat4":               snat4,
		"cfg_snat6":               snat6,
		"cfg_snat_port_min":       c.SNATPortMin,
		"cfg_snat_port_max":       c.SNATPortMax,
		"cfg_encap4_net":          be32(e4a[:]),
		"cfg_encap4_hostmask":     hostMask32(e4.Bits(), 32),
		"cfg_encap6_net":          e6.Addr().As16(),
		"cfg_encap6_hostmask":     hostMask32(e6.Bits(), 128),
		"cfg_ct_timeout_tcp_ns":   uint64(c.CTTimeoutTCP.Nanoseconds()),
		"cfg_ct_timeout_other_ns": uint64(c.CTTimeoutOther.Nanoseconds()),
		"cfg_events_per_ms":       c.EventsPerMillisecond,
		"cfg_new_flow_sample":     c.NewFlowSample,
	}
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("xdp: object has no variable %s (rebuild with go generate ./xdp)", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("xdp: set %s: %w", name, err)
		}
	}
	return nil
}
