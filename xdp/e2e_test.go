package xdp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// End-to-end: real packets through namespaces, agent-less (the Go API).
//
//	client ns ──c0/l0── lb ns ──l1/b0── backend1 ns ──┐
//	   │  │                 └───l2/b0── backend2 ns ─┐ │
//	   │  └──────────────── c2/b1 (replies) ─────────┘ │
//	   └─────────────────── c1/b1 (replies) ───────────┘
//
// The LB runs weir_xdp on l0, l1, l2; each backend runs weir_xdp (its own
// maps, no services: decap only) on b0, has the VIPs on lo and answers
// the client directly over b1 (DSR). SNAT replies come back to the LB's
// SNAT address (on its lo) over b0.
var (
	e2eVIP4  = netip.MustParseAddr("10.99.0.1")
	e2eVIP6  = netip.MustParseAddr("fd99::1")
	e2eSNAT4 = netip.MustParseAddr("10.98.0.1")
	e2eSNAT6 = netip.MustParseAddr("fd98::1")
)

const (
	portDSR    = 8080
	portSNAT   = 8081
	portHybrid = 8082
)

type e2eNet struct {
	client, lbns *testutil.Netns
	backends     []*testutil.Netns
	maps         *bpf.Maps
	prog         *Program
	dp           *bpf.Datapath
}

// backendAddr is backend i's (1-based) address on its LB link.
func backendAddr(i int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd10:%d::2", 10+i))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.10.%d.2", 10+i))
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func routeVia(tb testing.TB, h *netlink.Handle, dst, gw string) {
	tb.Helper()
	_, d, err := net.ParseCIDR(dst)
	must(tb, err)
	must(tb, h.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(gw)}))
}

func sysctl(tb testing.TB, ns *testutil.Netns, kv map[string]string) {
	tb.Helper()
	ns.MustDo(tb, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

// passProg is an XDP program that passes everything: native XDP_TX and
// redirects on veth only deliver to a peer that runs an XDP program.
func passProg(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}})
	must(tb, err)
	tb.Cleanup(func() { p.Close() })
	return p
}

// newE2ENetns is a namespace whose new links skip IPv6 duplicate address
// detection: a tentative link-local address can't answer neighbour
// solicitations, which costs the first connection a 1 s retransmit.
func newE2ENetns(t *testing.T, prefix string) *testutil.Netns {
	t.Helper()
	ns := testutil.NewNetns(t, prefix)
	sysctl(t, ns, map[string]string{"net/ipv6/conf/default/accept_dad": "0", "net/ipv6/conf/all/accept_dad": "0"})
	return ns
}

func newE2E(t *testing.T, mode AttachMode) *e2eNet {
	t.Helper()
	n := &e2eNet{
		client: newE2ENetns(t, "wx-cl-"),
		lbns:   newE2ENetns(t, "wx-lb-"),
	}
	testutil.Veth(t, n.client, "c0", pfx("10.10.1.2/24"), n.lbns, "l0", pfx("10.10.1.1/24"))
	c0, err := n.client.Link.LinkByName("c0")
	must(t, err)
	l0, err := n.lbns.Link.LinkByName("l0")
	must(t, err)
	testutil.AddAddr(t, n.client.Link, c0, pfx("fd10:1::2/64"))
	testutil.AddAddr(t, n.lbns.Link, l0, pfx("fd10:1::1/64"))
	routeVia(t, n.client.Link, "10.99.0.0/24", "10.10.1.1")
	routeVia(t, n.client.Link, "fd99::/64", "fd10:1::1")
	lo, err := n.lbns.Link.LinkByName("lo")
	must(t, err)
	testutil.AddAddr(t, n.lbns.Link, lo, netip.PrefixFrom(e2eSNAT4, 32))
	testutil.AddAddr(t, n.lbns.Link, lo, netip.PrefixFrom(e2eSNAT6, 128))
	sysctl(t, n.lbns, map[string]string{"net/ipv4/conf/all/forwarding": "1", "net/ipv6/conf/all/forwarding": "1"})

	for i := 1; i <= 2; i++ {
		b := newE2ENetns(t, fmt.Sprintf("wx-b%d-", i))
		n.backends = append(n.backends, b)
		lbIf := fmt.Sprintf("l%d", i)
		testutil.Veth(t, n.lbns, lbIf, pfx(fmt.Sprintf("10.10.%d.1/24", 10+i)), b, "b0", netip.PrefixFrom(backendAddr(i, false), 24))
		lbl, err := n.lbns.Link.LinkByName(lbIf)
		must(t, err)
		b0, err := b.Link.LinkByName("b0")
		must(t, err)
		testutil.AddAddr(t, n.lbns.Link, lbl, pfx(fmt.Sprintf("fd10:%d::1/64", 10+i)))
		testutil.AddAddr(t, b.Link, b0, netip.PrefixFrom(backendAddr(i, true), 64))
		cIf := fmt.Sprintf("c%d", i)
		testutil.Veth(t, n.client, cIf, pfx(fmt.Sprintf("10.10.%d.1/24", 20+i)), b, "b1", pfx(fmt.Sprintf("10.10.%d.2/24", 20+i)))
		cl, err := n.client.Link.LinkByName(cIf)
		must(t, err)
		b1, err := b.Link.LinkByName("b1")
		must(t, err)
		testutil.AddAddr(t, n.client.Link, cl, pfx(fmt.Sprintf("fd10:%d::1/64", 20+i)))
		testutil.AddAddr(t, b.Link, b1, pfx(fmt.Sprintf("fd10:%d::2/64", 20+i)))
		blo, err := b.Link.LinkByName("lo")
		must(t, err)
		testutil.AddAddr(t, b.Link, blo, netip.PrefixFrom(e2eVIP4, 32))
		testutil.AddAddr(t, b.Link, blo, netip.PrefixFrom(e2eVIP6, 128))
		// Replies to clients go straight back; SNAT replies to the LB.
		routeVia(t, b.Link, "10.10.1.0/24", fmt.Sprintf("10.10.%d.1", 20+i))
		routeVia(t, b.Link, "fd10:1::/64", fmt.Sprintf("fd10:%d::1", 20+i))
		routeVia(t, b.Link, "10.98.0.0/24", fmt.Sprintf("10.10.%d.1", 10+i))
		routeVia(t, b.Link, "fd98::/64", fmt.Sprintf("fd10:%d::1", 10+i))
		sysctl(t, b, map[string]string{"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/b0/rp_filter": "0", "net/ipv4/conf/b1/rp_filter": "0"})
		// Locally sent packets that XDP redirects must carry a full
		// checksum (NOTES-kernel).
		b.Run(t, "ethtool", "-K", "b0", "tx", "off")

		// The backend's own Weir: decap only.
		bmaps := mustMaps(t)
		bp := mustLoad(t, Config{Maps: bmaps})
		must(t, bp.SetNodeAddrs([]netip.Addr{backendAddr(i, false), backendAddr(i, true)}))
		b.MustDo(t, func() error { return bp.Attach("b0", mode) })
		t.Cleanup(func() { _ = b.Do(func() error { return bp.Detach("b0") }) })
		startServers(t, b, fmt.Sprintf("b%d", i), i)
	}
	sysctl(t, n.client, map[string]string{"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/c1/rp_filter": "0", "net/ipv4/conf/c2/rp_filter": "0", "net/ipv4/conf/c0/rp_filter": "0"})
	n.client.Run(t, "ethtool", "-K", "c0", "tx", "off")
	if mode != Generic {
		// The client's side of l0 must run XDP for native XDP_TX (ICMP
		// replies) and redirects (SNAT replies) to reach it.
		pass := passProg(t)
		n.client.MustDo(t, func() error {
			l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: c0.Attrs().Index, Flags: link.XDPDriverMode})
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		})
	}

	n.maps = mustMaps(t)
	n.prog = mustLoad(t, Config{Maps: n.maps, SNATv4: e2eSNAT4, SNATv6: e2eSNAT6})
	n.dp = bpf.NewDatapath(n.maps)
	for _, ifn := range []string{"l0", "l1", "l2"} {
		n.lbns.MustDo(t, func() error { return n.prog.Attach(ifn, mode) })
		t.Cleanup(func() { _ = n.lbns.Do(func() error { return n.prog.Detach(ifn) }) })
	}
	n.setup(t)
	return n
}

// setup writes the services: per family, DSR, SNAT and hybrid frontends
// for TCP and UDP, all on backend 1 at first.
func (n *e2eNet) setup(t *testing.T) {
	t.Helper()
	sid := lb.ServiceID(1)
	for _, v6 := range []bool{false, true} {
		vip := e2eVIP4
		if v6 {
			vip = e2eVIP6
		}
		for _, m := range []struct {
			mode lb.Mode
			port uint16
		}{{lb.ModeDSR, portDSR}, {lb.ModeSNAT, portSNAT}, {lb.ModeHybrid, portHybrid}} {
			for _, proto := range []uint8{protoTCP, protoUDP} {
				var bes []be
				for i := 1; i <= 2; i++ {
					bes = append(bes, be{ID: lb.BackendID(int(sid)*10 + i), Addr: netip.AddrPortFrom(backendAddr(i, v6), m.port), Tunnel: backendAddr(i, v6)})
				}
				writeService(t, n.dp, svc{ID: sid, VIP: netip.AddrPortFrom(vip, m.port), Proto: proto, Mode: m.mode, Backends: bes, Table: []lb.BackendID{bes[0].ID}})
				sid++
			}
		}
	}
}

// serviceID is the ID setup gave a frontend.
func serviceID(v6 bool, port uint16, proto uint8) lb.ServiceID {
	id := 1 + int(port-portDSR)*2
	if proto == protoUDP {
		id++
	}
	if v6 {
		id += 6
	}
	return lb.ServiceID(id)
}

// startServers runs, in a backend namespace, a TCP line server on every
// test port (any address) and UDP servers on the VIPs (DSR: replies from
// the VIP) and on the backend's own addresses (SNAT). Each answers
// "<name> <line>".
func startServers(t *testing.T, ns *testutil.Netns, name string, i int) {
	t.Helper()
	var closers []func() error
	ns.MustDo(t, func() error {
		for _, port := range []int{portDSR, portSNAT, portHybrid} {
			ln, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				return err
			}
			closers = append(closers, ln.Close)
			go serveTCP(ln, name)
			for _, a := range []netip.Addr{e2eVIP4, e2eVIP6, backendAddr(i, false), backendAddr(i, true)} {
				pc, err := net.ListenPacket("udp", netip.AddrPortFrom(a, uint16(port)).String())
				if err != nil {
					return err
				}
				closers = append(closers, pc.Close)
				go serveUDP(pc, name)
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range closers {
			_ = c()
		}
	})
}

func serveTCP(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := fmt.Fprintf(c, "%s %d\n", name, len(line)-1); err != nil {
					return
				}
			}
		}()
	}
}

func serveUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %d", name, n)), from)
	}
}

// dial opens a connection from the client namespace.
func (n *e2eNet) dial(t *testing.T, network string, to netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	n.client.MustDo(t, func() error {
		var err error
		c, err = net.DialTimeout(network, to.String(), 3*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// ask sends a line of size bytes and returns the answer ("b1 <size>").
func ask(t *testing.T, c net.Conn, r *bufio.Reader, size int) string {
	t.Helper()
	must(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	if _, err := c.Write([]byte(strings.Repeat("x", size) + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return strings.TrimSpace(line)
}

// askUDP sends a datagram and returns the answer, retrying a lost one.
func askUDP(t *testing.T, c net.Conn, size int) string {
	t.Helper()
	buf := make([]byte, 2048)
	for try := 0; try < 3; try++ {
		if _, err := c.Write([]byte(strings.Repeat("u", size))); err != nil {
			t.Fatalf("write: %v", err)
		}
		must(t, c.SetReadDeadline(time.Now().Add(time.Second)))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v", err)
		}
	}
	t.Fatalf("no UDP answer after 3 tries")
	return ""
}

func TestE2E(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, mode := range []AttachMode{Native, Generic} {
		t.Run(mode.String(), func(t *testing.T) {
			n := newE2E(t, mode)
			for _, v6 := range []bool{false, true} {
				vip, fam := e2eVIP4, "v4"
				if v6 {
					vip, fam = e2eVIP6, "v6"
				}
				for _, m := range []struct {
					name string
					port uint16
				}{{"dsr", portDSR}, {"snat", portSNAT}, {"hybrid", portHybrid}} {
					t.Run(fam+"/"+m.name, func(t *testing.T) {
						to := netip.AddrPortFrom(vip, m.port)
						c := n.dial(t, "tcp", to)
						r := bufio.NewReader(c)
						if got := ask(t, c, r, 10); got != "b1 10" {
							t.Errorf("TCP answer %q, want \"b1 10\"", got)
						}
						// Full-sized segments: DSR needs the client to
						// learn the smaller path MTU from Weir's ICMP.
						if got := ask(t, c, r, 200000); got != "b1 200000" {
							t.Errorf("TCP bulk answer %q", got)
						}
						u := n.dial(t, "udp", to)
						if got := askUDP(t, u, 100); got != "b1 100" {
							t.Errorf("UDP answer %q, want \"b1 100\"", got)
						}
						// It went through Weir, not around it.
						for _, proto := range []uint8{protoTCP, protoUDP} {
							if s := sumStats(t, n.maps.ServiceStats, uint32(serviceID(v6, m.port, proto))); s.Packets == 0 {
								t.Errorf("service %s/%d counted no packets", to, proto)
							}
						}
					})
				}
			}
			for r := bpf.Reason(1); r < bpf.ReasonMax; r++ {
				if s := sumStats(t, n.maps.Drops, uint32(r)); s.Packets != 0 {
					t.Logf("%s drops: %d", r, s.Packets)
				}
			}
			if s := sumStats(t, n.maps.Drops, uint32(bpf.ReasonFragNeeded)); s.Packets == 0 {
				t.Errorf("no fragmentation-needed answers: the bulk transfers never hit the encapsulation MTU")
			}
			// A backend change mid-stream: the open connection stays on
			// its backend, new connections follow the new table.
			t.Run("backend change", func(t *testing.T) {
				for _, v6 := range []bool{false, true} {
					vip := e2eVIP4
					if v6 {
						vip = e2eVIP6
					}
					for _, port := range []uint16{portDSR, portSNAT} {
						sid := serviceID(v6, port, protoTCP)
						to := netip.AddrPortFrom(vip, port)
						c := n.dial(t, "tcp", to)
						r := bufio.NewReader(c)
						if got := ask(t, c, r, 5); got != "b1 5" {
							t.Fatalf("%s: answer %q", to, got)
						}
						writeTable(t, n.dp, sid, lb.BackendID(int(sid)*10+2))
						for range 3 {
							if got := ask(t, c, r, 3000); got != "b1 3000" {
								t.Fatalf("%s: established connection answered %q after the table changed", to, got)
							}
						}
						c2 := n.dial(t, "tcp", to)
						if got := ask(t, c2, bufio.NewReader(c2), 7); got != "b2 7" {
							t.Errorf("%s: new connection answered %q, want b2", to, got)
						}
						writeTable(t, n.dp, sid, lb.BackendID(int(sid)*10+1))
					}
				}
			})
		})
	}
}
