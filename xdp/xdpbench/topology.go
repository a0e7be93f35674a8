package xdpbench

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/topo"
)

// The benchmark's network: two namespaces the harness creates and
// deletes, joined by one veth pair.
//
//	client ns: c0 10.0.0.2, fd00::2 ── node ns: lb0 10.0.0.1, fd00::1
//
// lb0 is the load balancer's device: test runs arrive on it, and in live
// mode the program under test is attached to it. c0 is the next hop of
// every backend tunnel (a permanent neighbour, so bpf_fib_lookup
// resolves), and in live mode the generator's device and the sink. The
// MTU leaves room for a DSR header on a full-size frame, within what
// native XDP on veth accepts.
const (
	benchMTU = 1600
	lbDev    = "lb0"
	peerDev  = "c0"
)

type network struct {
	topo         *topo.Topology
	node, client *topo.Host
	lbIndex      int
	peerIndex    int
	lbMAC        net.HardwareAddr
	peerMAC      net.HardwareAddr
}

// randomSuffix is 8 hex digits, to keep names of concurrent runs apart.
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newNetwork creates the namespaces. On error, what was created is gone.
func newNetwork() (_ *network, err error) {
	t := topo.New(fmt.Sprintf("weir-bench-%s-", randomSuffix()))
	n := &network{topo: t}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if n.node, err = t.Host("node"); err != nil {
		return nil, err
	}
	if n.client, err = t.Host("cl"); err != nil {
		return nil, err
	}
	lbl, pl, err := topo.Veth(n.node, lbDev, n.client, peerDev, benchMTU)
	if err != nil {
		return nil, err
	}
	n.lbIndex, n.peerIndex = lbl.Attrs().Index, pl.Attrs().Index
	if lbl, err = n.node.Link.LinkByIndex(n.lbIndex); err != nil {
		return nil, err
	}
	if pl, err = n.client.Link.LinkByIndex(n.peerIndex); err != nil {
		return nil, err
	}
	n.lbMAC, n.peerMAC = lbl.Attrs().HardwareAddr, pl.Attrs().HardwareAddr
	for _, a := range []struct {
		h    *topo.Host
		dev  string
		addr netip.Prefix
	}{{n.node, lbDev, nodeAddr4}, {n.node, lbDev, nodeAddr6}, {n.client, peerDev, peerAddr4}, {n.client, peerDev, peerAddr6}} {
		if err := a.h.AddAddr(a.dev, a.addr); err != nil {
			return nil, err
		}
	}
	for _, nb := range []netip.Addr{peerAddr4.Addr(), peerAddr6.Addr()} {
		fam := netlink.FAMILY_V4
		if nb.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := n.node.Link.NeighAdd(&netlink.Neigh{LinkIndex: n.lbIndex, Family: fam, State: netlink.NUD_PERMANENT,
			IP: nb.AsSlice(), HardwareAddr: n.peerMAC}); err != nil {
			return nil, fmt.Errorf("%s: neighbour %s: %w", n.node.Name, nb, err)
		}
	}
	if err := n.node.Route(tunnelNet4, peerAddr4.Addr(), lbDev); err != nil {
		return nil, err
	}
	if err := n.node.Route(tunnelNet6, peerAddr6.Addr(), lbDev); err != nil {
		return nil, err
	}
	// bpf_fib_lookup is a forwarding lookup: it needs forwarding on.
	for _, k := range []string{"net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"} {
		if err := n.node.Sysctl(k, "1"); err != nil {
			return nil, fmt.Errorf("%s: sysctl %s: %w", n.node.Name, k, err)
		}
	}
	return n, nil
}

// close deletes the namespaces, and with them the veth pair and every
// program attached to it.
func (n *network) close() error { return n.topo.Close() }

// bpffsDir creates a fresh directory for the run's pins on the bpffs at
// /sys/fs/bpf (mounting it when the machine booted without), removed by
// the returned function with everything pinned in it.
func bpffsDir() (string, func() error, error) {
	const base = "/sys/fs/bpf"
	if err := bpf.EnsureBPFFS(base); err != nil {
		return "", nil, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return "", nil, fmt.Errorf("%s is not a bpffs (mount one: mount -t bpf bpf %s)", base, base)
	}
	dir := filepath.Join(base, "weir-bench-"+randomSuffix())
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("create the benchmark's pin directory: %w", err)
	}
	return dir, func() error { return os.RemoveAll(dir) }, nil
}
