package xdpbench

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// services is the set of benchmark services written into one target's
// maps: service i (ID i+1) answers on VIP vipBase+i, port 80, one
// protocol, and has `backends` backends whose tunnel addresses are
// tunnelBase + backend ID. They are written straight through the real
// bpf.Datapath, in the reconciler's make-before-break order.
type services struct {
	dp        *bpf.Datapath
	n         int
	backends  int
	tableSize int
	ip        int
	proto     uint8
	// What the service entries carry now (configure changes it).
	flags  lb.ServiceFlags
	ranges rangeSet
}

// tableChunk bounds how many Maglev tables are built in memory at once.
const tableChunk = 4096

func (s *services) vip(i int) netip.Addr {
	if s.ip == 4 {
		return addrPlus(vipBase4, uint32(i))
	}
	return addrPlus(vipBase6, uint32(i))
}

func (s *services) key(i int) lb.ServiceKey {
	return lb.ServiceKey{Addr: s.vip(i), Port: servicePort, Protocol: lb.Protocol(s.proto), Scope: lb.ScopeExternal}
}

func (s *services) entry(i int) lb.ServiceEntry {
	return lb.ServiceEntry{
		ServiceID: lb.ServiceID(i + 1), FrontendID: lb.FrontendID(i + 1),
		Backends: uint32(s.backends), TableSize: uint32(s.tableSize), Mode: lb.ModeDSR,
		Flags: s.flags, AffinityTimeout: affinityTimeoutSeconds * time.Second,
	}
}

// fill writes every service. The table is not a Maglev permutation (the
// backends in turn): the datapath reads one slot per new flow whatever
// the content, and computing 100k permutations would only slow the
// setup.
func (s *services) fill(ctx context.Context) error {
	tunnel := tunnelBase4
	if s.ip == 6 {
		tunnel = tunnelBase6
	}
	for i := range s.n {
		if i%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		sid := lb.ServiceID(i + 1)
		for j := range s.backends {
			id := uint32(i*s.backends + j + 1)
			addr := addrPlus(tunnel, id)
			if err := s.dp.UpsertBackend(lb.BackendID(id), lb.BackendEntry{ServiceID: sid, Addr: addr, Port: 8080, Tunnel: addr, Weight: 1}); err != nil {
				return err
			}
		}
	}
	for start := 0; start < s.n; start += tableChunk {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		tables := map[lb.TableID][]lb.BackendID{}
		for i := start; i < min(s.n, start+tableChunk); i++ {
			t := make([]lb.BackendID, s.tableSize)
			for k := range t {
				t[k] = lb.BackendID(i*s.backends + k%s.backends + 1)
			}
			tables[lb.ServiceID(i+1).Table(0)] = t
		}
		if err := s.dp.UpsertMaglevs(tables); err != nil {
			return err
		}
	}
	for i := range s.n {
		if err := s.dp.UpsertFrontend(lb.FrontendID(i+1), lb.FrontendEntry{
			ServiceID: lb.ServiceID(i + 1), Addr: s.vip(i), Port: servicePort, Protocol: lb.Protocol(s.proto),
			Scope: lb.ScopeExternal, Kind: lb.KindLoadBalancer, Service: fmt.Sprintf("bench/svc-%d", i),
		}); err != nil {
			return err
		}
		if err := s.dp.UpsertService(s.key(i), s.entry(i)); err != nil {
			return err
		}
	}
	return nil
}

// configure gives every service these flags and source ranges, writing
// only what differs from now.
func (s *services) configure(flags lb.ServiceFlags, ranges rangeSet) error {
	denied, clients := deniedNet4, clientNet4
	if s.ip == 6 {
		denied, clients = deniedNet6, clientNet6
	}
	want := map[netip.Prefix]bool{}
	if ranges >= rangesDenied {
		want[denied] = true
	}
	if ranges >= rangesAllowed {
		want[clients] = true
	}
	have := map[netip.Prefix]bool{}
	if s.ranges >= rangesDenied {
		have[denied] = true
	}
	if s.ranges >= rangesAllowed {
		have[clients] = true
	}
	for i := range s.n {
		sid := lb.ServiceID(i + 1)
		// Make before break: ranges to allow first, the flags, then the
		// ranges to drop.
		for p := range want {
			if !have[p] {
				if err := s.dp.UpsertSourceRange(sid, p); err != nil {
					return err
				}
			}
		}
	}
	if flags != s.flags {
		s.flags = flags
		for i := range s.n {
			if err := s.dp.UpsertService(s.key(i), s.entry(i)); err != nil {
				return err
			}
		}
	}
	for i := range s.n {
		for p := range have {
			if !want[p] {
				if err := s.dp.DeleteSourceRange(lb.ServiceID(i+1), p); err != nil {
					return err
				}
			}
		}
	}
	s.ranges = ranges
	return nil
}
