package main

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/lb"
)

// neighbors keeps the next hops of the backends resolved. XDP can't wait
// for ARP or neighbour discovery: bpf_fib_lookup without a neighbour entry
// fails and the packet is lost. So the agent installs "managed" neighbour
// entries (kernel >= 5.16) for every next hop toward a backend or DSR
// tunnel address on an XDP device; the kernel resolves them and keeps
// them fresh. Entries it no longer needs are removed.
type neighbors struct {
	log     *slog.Logger
	devices map[int]bool // ifindexes with XDP

	mu      sync.Mutex
	hops    map[netip.Addr]neighKey // destination -> next hop (route cache)
	managed map[neighKey]bool       // entries this agent installed
}

type neighKey struct {
	ifindex int
	ip      netip.Addr
}

func newNeighbors(log *slog.Logger, devices []string) *neighbors {
	n := &neighbors{log: log, devices: map[int]bool{}, hops: map[netip.Addr]neighKey{}, managed: map[neighKey]bool{}}
	for _, d := range devices {
		if l, err := netlink.LinkByName(d); err == nil {
			n.devices[l.Attrs().Index] = true
		}
	}
	return n
}

// backendAddrs lists the addresses XDP forwards to for the services'
// external views: backend addresses (SNAT) and tunnel addresses (DSR).
func backendAddrs(visit func(func(*lb.Service))) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	visit(func(s *lb.Service) {
		external := false
		for _, f := range s.Frontends {
			external = external || f.Scope == lb.ScopeExternal
		}
		if !external {
			return
		}
		for _, b := range s.Backends {
			out[b.Addr.Unmap()] = true
			out[b.TunnelAddr().Unmap()] = true
		}
	})
	return out
}

// update makes the managed entries match the next hops of addrs.
func (n *neighbors) update(addrs map[netip.Addr]bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	want := map[neighKey]bool{}
	for a := range addrs {
		hop, ok := n.hops[a]
		if !ok {
			var err error
			hop, err = nextHop(a)
			if err != nil {
				n.log.Debug("no route to backend", "addr", a, "err", err)
				continue
			}
			n.hops[a] = hop
		}
		if n.devices[hop.ifindex] {
			want[hop] = true
		}
	}
	for k := range n.hops {
		if !addrs[k] {
			delete(n.hops, k)
		}
	}
	for k := range want {
		if n.managed[k] {
			continue
		}
		if err := netlink.NeighSet(neighEntry(k)); err != nil {
			n.log.Warn("install a managed neighbour entry for a backend's next hop", "ip", k.ip, "ifindex", k.ifindex, "err", err)
			continue
		}
		n.managed[k] = true
	}
	for k := range n.managed {
		if want[k] {
			continue
		}
		if err := netlink.NeighDel(neighEntry(k)); err != nil && !errors.Is(err, unix.ENOENT) {
			n.log.Warn("remove a managed neighbour entry", "ip", k.ip, "err", err)
			continue
		}
		delete(n.managed, k)
	}
}

func neighEntry(k neighKey) *netlink.Neigh {
	fam := netlink.FAMILY_V4
	if k.ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{
		LinkIndex: k.ifindex,
		Family:    fam,
		IP:        net.IP(k.ip.AsSlice()),
		State:     netlink.NUD_NONE,
		Flags:     netlink.NTF_EXT_LEARNED,
		FlagsExt:  netlink.NTF_EXT_MANAGED,
	}
}

// nextHop asks the kernel's routing table how a packet to a leaves.
func nextHop(a netip.Addr) (neighKey, error) {
	routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return neighKey{}, err
	}
	if len(routes) == 0 {
		return neighKey{}, errors.New("no route")
	}
	r := routes[0]
	hop := a
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
		hop = gw.Unmap()
	}
	return neighKey{ifindex: r.LinkIndex, ip: hop}, nil
}
