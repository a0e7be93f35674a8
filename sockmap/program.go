package sockmap

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
)

// Config says what to load.
type Config struct {
	// Maps are the agent's shared maps (bpf.OpenMaps); the programs use
	// them and Attach pins links under their root.
	Maps *bpf.Maps
	// HostNetnsOnly limits the hooks to sockets of the network namespace
	// that the thread calling Load is in (the agent's: the host's).
	HostNetnsOnly bool
	// SkipCgroups are cgroup v2 directories whose tasks' sockets (and
	// those of every cgroup below them) the hooks leave alone.
	SkipCgroups []string
	// NoTCPPeerName skips recording, per TCP connection, the service
	// address it was dialled through. A translated connect then costs
	// about half as much (no socket local storage to allocate), but
	// getpeername() on such a TCP socket shows the backend. UDP sockets
	// keep their reverse translation either way: resolvers check where
	// replies come from.
	NoTCPPeerName bool
}

// hook is one attach point of the socket load balancer.
type hook struct {
	name   string // in pin names: sock_<name>_<cgroup hash>
	attach ebpf.AttachType
	prog   func(*sockLBPrograms) *ebpf.Program
}

// hooks lists every program with its attach point; Attach and Detach walk
// it in this order.
var hooks = [...]hook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockConnect6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockSendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockSendmsg6 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockRecvmsg6 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockGetpeername6 }},
	{"post_bind4", ebpf.AttachCGroupInet4PostBind, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockPostBind4 }},
	{"post_bind6", ebpf.AttachCGroupInet6PostBind, func(p *sockLBPrograms) *ebpf.Program { return p.WeirSockPostBind6 }},
}

// Program is the loaded socket load balancer. Its methods are safe for
// concurrent use.
type Program struct {
	progs sockLBPrograms
	root  string // bpffs directory of the maps; links go in root/links

	mu    sync.Mutex
	links map[string][]link.Link // by cgroup path, in hooks order
}

// slotsMap is the socket load balancer's own map, pinned under the maps'
// root by Load.
const slotsMap = "weir_sock_peer_slots"

// Load loads the programs against the shared maps, applying the per-node
// switches, and fills weir_sock_skip_cgroups with cfg.SkipCgroups
// (removing entries no longer listed). Nothing is attached yet.
func Load(cfg Config) (*Program, error) {
	if cfg.Maps == nil {
		return nil, errors.New("sockmap: Config.Maps is nil (open the shared maps with bpf.OpenMaps first)")
	}
	for name, m := range map[string]*ebpf.Map{"weir_sock_skip_cgroups": cfg.Maps.SockSkipCgroups, "weir_sock_peer": cfg.Maps.SockPeer} {
		if m == nil {
			return nil, fmt.Errorf("sockmap: map %s is not pinned under %s (pins from an older agent: remove them with `rm -r %s` and restart)", name, cfg.Maps.Root(), cfg.Maps.Root())
		}
	}
	spec, err := loadSockLB()
	if err != nil {
		return nil, fmt.Errorf("sockmap: read the embedded program object: %w", err)
	}

	var cookie uint64
	if cfg.HostNetnsOnly {
		if cookie, err = currentNetnsCookie(); err != nil {
			return nil, err
		}
	}
	ids := make(map[uint64]string, len(cfg.SkipCgroups))
	for _, dir := range cfg.SkipCgroups {
		abs, err := checkCgroup2Dir(dir)
		if err != nil {
			return nil, fmt.Errorf("sockmap: skip cgroup: %w", err)
		}
		id, err := cgroupID(abs)
		if err != nil {
			return nil, fmt.Errorf("sockmap: skip cgroup: %w", err)
		}
		ids[id] = abs
	}
	skip := uint32(0)
	if len(ids) > 0 {
		skip = 1
	}
	if err := spec.Variables["host_netns_cookie"].Set(cookie); err != nil {
		return nil, fmt.Errorf("sockmap: set host_netns_cookie: %w", err)
	}
	if err := spec.Variables["skip_cgroups"].Set(skip); err != nil {
		return nil, fmt.Errorf("sockmap: set skip_cgroups: %w", err)
	}
	tcpPeer := uint32(1)
	if cfg.NoTCPPeerName {
		tcpPeer = 0
	}
	if err := spec.Variables["tcp_peer_name"].Set(tcpPeer); err != nil {
		return nil, fmt.Errorf("sockmap: set tcp_peer_name: %w", err)
	}
	// The map first: programs that skip must find their entries at once.
	if err := syncSkipCgroups(cfg.Maps.SockSkipCgroups, ids); err != nil {
		return nil, err
	}

	p := &Program{root: cfg.Maps.Root(), links: map[string][]link.Link{}}
	// The socket load balancer's own map (weir_sock_peer_slots) is pinned
	// beside the shared ones: connections made before a restart keep
	// their reverse NAT.
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.Maps.Root()}}
	if err := cfg.Maps.LoadAndAssign(spec, &p.progs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("sockmap: the kernel refused the socket load balancer: %+v", ve)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("sockmap: the pinned %s under %s does not match this agent's (%w); remove it and restart", slotsMap, cfg.Maps.Root(), err)
		}
		return nil, fmt.Errorf("sockmap: load the socket load balancer: %w", err)
	}
	return p, nil
}

// syncSkipCgroups makes the map hold exactly ids.
func syncSkipCgroups(m *ebpf.Map, ids map[uint64]string) error {
	one := uint8(1)
	for id, dir := range ids {
		if err := m.Put(id, one); err != nil {
			return fmt.Errorf("sockmap: skip cgroup %s: write map weir_sock_skip_cgroups: %w", dir, err)
		}
	}
	var stale []uint64
	var id uint64
	var v uint8
	it := m.Iterate()
	for it.Next(&id, &v) {
		if _, ok := ids[id]; !ok {
			stale = append(stale, id)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("sockmap: read map weir_sock_skip_cgroups: %w", err)
	}
	for _, id := range stale {
		if err := m.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("sockmap: remove cgroup %d from map weir_sock_skip_cgroups: %w", id, err)
		}
	}
	return nil
}

// currentNetnsCookie returns the cookie of the calling thread's network
// namespace, as bpf_get_netns_cookie() reports it for a socket there.
func currentNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("sockmap: read the host network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("sockmap: read the host network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14): %w", err)
	}
	return cookie, nil
}

// Close releases the programs and the link handles. Attached (pinned)
// links stay: the hooks keep working until Detach.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for path, ls := range p.links {
		for _, l := range ls {
			errs = append(errs, l.Close())
		}
		delete(p.links, path)
	}
	errs = append(errs, p.progs.Close())
	return errors.Join(errs...)
}
