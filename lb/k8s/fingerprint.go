package k8s

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"

	"github.com/weir-lb/weir/lb"
)

// fingerprint is a 128-bit hash of everything in an lb.Service.
// Translation is deterministic (sorted lists), so equal fingerprints mean
// delivering the service again would change nothing. The
// source remembers what it emitted by fingerprint, not by copy: the
// reconciler keeps the services themselves, and at 10k services x 10
// endpoints a second copy is about 25 MB. Two different services share
// a fingerprint with probability 2^-128; TestFingerprintCoversEveryField
// fails when lb.Service gains a field this doesn't hash.
type fingerprint [2]uint64

// fingerprintSeeds are per process: fingerprints are never stored.
var fingerprintSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

func fingerprintOf(s *lb.Service) fingerprint {
	// Sized for the common case, so the encoding allocates once.
	e := serviceEncoder{b: make([]byte, 0, 128+48*len(s.Frontends)+96*len(s.Backends))}
	e.service(s)
	return fingerprint{maphash.Bytes(fingerprintSeeds[0], e.b), maphash.Bytes(fingerprintSeeds[1], e.b)}
}

// serviceEncoder writes a service's fields into an unambiguous byte
// string: strings and lists are length-prefixed.
type serviceEncoder struct{ b []byte }

func (e *serviceEncoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }

func (e *serviceEncoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

func (e *serviceEncoder) str(s string) {
	e.u64(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *serviceEncoder) addr(a netip.Addr) {
	b, _ := a.MarshalBinary() // never fails; the zone is included
	e.u64(uint64(len(b)))
	e.b = append(e.b, b...)
}

func (e *serviceEncoder) service(s *lb.Service) {
	e.str(s.Name.Namespace)
	e.str(s.Name.Name)
	e.str(s.Name.Port)
	e.bool(s.Name.IPv6)
	e.u64(uint64(len(s.Frontends)))
	for _, f := range s.Frontends {
		e.addr(f.Addr)
		e.u64(uint64(f.Port))
		e.b = append(e.b, byte(f.Protocol), byte(f.Scope), byte(f.Kind))
	}
	e.u64(uint64(len(s.Backends)))
	for _, b := range s.Backends {
		e.addr(b.Addr)
		e.u64(uint64(b.Port))
		e.addr(b.Tunnel)
		e.u64(uint64(b.Weight))
		e.b = append(e.b, byte(b.State))
		e.str(b.Zone)
		e.str(b.NodeName)
		e.bool(b.Local)
	}
	e.b = append(e.b, byte(s.Mode))
	e.u64(uint64(s.SessionAffinity))
	e.bool(s.ExternalLocal)
	e.bool(s.InternalLocal)
	e.u64(uint64(len(s.SourceRanges)))
	for _, p := range s.SourceRanges {
		e.addr(p.Addr())
		e.u64(uint64(p.Bits()))
	}
	e.u64(uint64(s.MaglevTableSize))
	e.bool(s.HealthCheck != nil)
	if hc := s.HealthCheck; hc != nil {
		e.str(hc.Type)
		e.str(hc.Path)
		e.u64(uint64(hc.Port))
		e.u64(uint64(hc.Interval))
		e.u64(uint64(hc.Timeout))
		e.u64(uint64(hc.Rise))
		e.u64(uint64(hc.Fall))
	}
}
