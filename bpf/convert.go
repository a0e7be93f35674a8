package bpf

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/weir-lb/weir/lb"
)

// Conversions between the lb model's datapath entries and the map mirrors.
// The "from" direction validates: it refuses what the maps can't hold
// rather than storing something else.

// ServiceKeyFrom converts a service key to its map form.
func ServiceKeyFrom(k lb.ServiceKey) (ServiceKey, error) {
	if !k.Addr.IsValid() {
		return ServiceKey{}, fmt.Errorf("service key %v: no address", k)
	}
	return ServiceKey{Addr: AddrFrom(k.Addr), Port: PortFrom(k.Port), Proto: uint8(k.Protocol), Scope: uint8(k.Scope)}, nil
}

// LB converts a map key back to the model.
func (k *ServiceKey) LB() lb.ServiceKey {
	return lb.ServiceKey{Addr: k.Addr.IP(), Port: k.Port.Host(), Protocol: lb.Protocol(k.Proto), Scope: lb.Scope(k.Scope)}
}

// ServiceValueFrom converts a service entry; the affinity timeout is
// stored in whole seconds, rounded up so a short timeout is not "off".
func ServiceValueFrom(e lb.ServiceEntry) (ServiceValue, error) {
	if e.AffinityTimeout < 0 {
		return ServiceValue{}, fmt.Errorf("service %d: negative affinity timeout %v", e.ServiceID, e.AffinityTimeout)
	}
	if e.TableGen > 1 {
		return ServiceValue{}, fmt.Errorf("service %d: table generation %d (want 0 or 1)", e.ServiceID, e.TableGen)
	}
	secs := (e.AffinityTimeout + time.Second - 1) / time.Second
	if secs > math.MaxUint32 {
		return ServiceValue{}, fmt.Errorf("service %d: affinity timeout %v exceeds %d seconds", e.ServiceID, e.AffinityTimeout, uint32(math.MaxUint32))
	}
	return ServiceValue{
		ServiceID:       uint32(e.ServiceID),
		FrontendID:      uint32(e.FrontendID),
		Backends:        e.Backends,
		TableSize:       e.TableSize,
		AffinityTimeout: uint32(secs),
		Flags:           uint16(e.Flags),
		Mode:            uint8(e.Mode),
		TableGen:        e.TableGen,
	}, nil
}

// LB converts a map value back to the model.
func (v *ServiceValue) LB() lb.ServiceEntry {
	return lb.ServiceEntry{
		ServiceID:       lb.ServiceID(v.ServiceID),
		FrontendID:      lb.FrontendID(v.FrontendID),
		Backends:        v.Backends,
		TableSize:       v.TableSize,
		TableGen:        v.TableGen,
		Mode:            lb.Mode(v.Mode),
		Flags:           lb.ServiceFlags(v.Flags),
		AffinityTimeout: time.Duration(v.AffinityTimeout) * time.Second,
	}
}

// BackendValueFrom converts a backend entry. An unset Tunnel is stored as
// zeros and reads back unset.
func BackendValueFrom(id lb.BackendID, e lb.BackendEntry) (BackendValue, error) {
	if !e.Addr.IsValid() {
		return BackendValue{}, fmt.Errorf("backend %d: no address", id)
	}
	return BackendValue{
		Addr:      AddrFrom(e.Addr),
		Tunnel:    AddrFrom(e.Tunnel),
		Port:      PortFrom(e.Port),
		Weight:    e.Weight,
		ServiceID: uint32(e.ServiceID),
		State:     uint8(e.State),
	}, nil
}

// LB converts a map value back to the model.
func (v *BackendValue) LB() lb.BackendEntry {
	return lb.BackendEntry{
		ServiceID: lb.ServiceID(v.ServiceID),
		Addr:      v.Addr.IP(),
		Port:      v.Port.Host(),
		Tunnel:    v.Tunnel.IP(),
		Weight:    v.Weight,
		State:     lb.BackendState(v.State),
	}
}

// fillFrontendValue converts a frontend entry into v (reused to avoid
// allocating 200 bytes per call). Names that don't fit are an error, not
// truncated: a cut name would mislabel metrics and events.
func fillFrontendValue(v *FrontendValue, id lb.FrontendID, e lb.FrontendEntry) error {
	if !e.Addr.IsValid() {
		return fmt.Errorf("frontend %d: no address", id)
	}
	if err := setCString(v.Name[:], e.Service, "frontend_value.name (FrontendEntry.Service)"); err != nil {
		return fmt.Errorf("frontend %d: %w", id, err)
	}
	if err := setCString(v.PortName[:], e.PortName, "frontend_value.port_name (FrontendEntry.PortName)"); err != nil {
		return fmt.Errorf("frontend %d: %w", id, err)
	}
	v.Addr = AddrFrom(e.Addr)
	v.Port = PortFrom(e.Port)
	v.Proto = uint8(e.Protocol)
	v.Scope = uint8(e.Scope)
	v.Kind = uint8(e.Kind)
	v.ServiceID = uint32(e.ServiceID)
	return nil
}

// FrontendValueFrom converts a frontend entry.
func FrontendValueFrom(id lb.FrontendID, e lb.FrontendEntry) (FrontendValue, error) {
	var v FrontendValue
	err := fillFrontendValue(&v, id, e)
	return v, err
}

// LB converts a map value back to the model.
func (v *FrontendValue) LB() lb.FrontendEntry {
	return lb.FrontendEntry{
		ServiceID: lb.ServiceID(v.ServiceID),
		Addr:      v.Addr.IP(),
		Port:      v.Port.Host(),
		Protocol:  lb.Protocol(v.Proto),
		Scope:     lb.Scope(v.Scope),
		Kind:      lb.FrontendKind(v.Kind),
		Service:   v.ServiceName(),
		PortName:  v.PortNameString(),
	}
}

// SourceRangeKeyFor builds the LPM key of a service's client prefix. The
// prefix is masked; an IPv4 prefix counts the 96 bits of the IPv4-mapped
// form, so IPv4 and IPv6 ranges share one trie.
func SourceRangeKeyFor(id lb.ServiceID, p netip.Prefix) (SourceRangeKey, error) {
	if !p.IsValid() {
		return SourceRangeKey{}, fmt.Errorf("service %d: invalid source range %v", id, p)
	}
	p = p.Masked()
	bits := uint32(p.Bits())
	if p.Addr().Is4() {
		bits += 96
	}
	return SourceRangeKey{Prefixlen: 32 + bits, ServiceID: uint32(id), Addr: AddrFrom(p.Addr())}, nil
}

// Prefix converts an LPM key back. An IPv4-mapped IPv6 prefix of at least
// 96 bits is the same trie entry as its IPv4 prefix and reads back as IPv4.
func (k *SourceRangeKey) Prefix() (lb.ServiceID, netip.Prefix, error) {
	if k.Prefixlen < 32 || k.Prefixlen > 32+128 {
		return 0, netip.Prefix{}, fmt.Errorf("source range key of service %d: prefixlen %d outside 32..160", k.ServiceID, k.Prefixlen)
	}
	bits := int(k.Prefixlen - 32)
	a := netip.AddrFrom16(k.Addr)
	if a.Is4In6() && bits >= 96 {
		return lb.ServiceID(k.ServiceID), netip.PrefixFrom(a.Unmap(), bits-96), nil
	}
	return lb.ServiceID(k.ServiceID), netip.PrefixFrom(a, bits), nil
}
