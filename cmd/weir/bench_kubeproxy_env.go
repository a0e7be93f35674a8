package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

// The kube-proxy comparison's topology: three namespaces the benchmark
// creates, the node between a client and a backend.
//
//	client c0 10.211.0.2 ── n0 10.211.0.1  node  n1 10.211.1.1 ── b0 10.211.1.2 backend
//
// The node runs one proxy at a time (kube-proxy in iptables or nftables
// mode, or the Weir agent), all against one kube-apiserver in the root
// namespace, reached over a veth of its own (kube.RootVeth). The node's
// Kubernetes address is 10.211.0.1: the NodePorts open there. The backend
// serves HTTP on 8080, the services' target port. Replies go back through
// the node: kube-proxy masquerades NodePort traffic, and Weir serves a
// NodePort in SNAT mode (DSR delivers the packet unchanged, so it needs
// the backend's port to be the frontend's, which a NodePort's never is).
var (
	kpClient0  = netip.MustParsePrefix("10.211.0.2/24")
	kpNode0    = netip.MustParsePrefix("10.211.0.1/24")
	kpNode1    = netip.MustParsePrefix("10.211.1.1/24")
	kpBackend0 = netip.MustParsePrefix("10.211.1.2/24")
	// kpSpareEndpoint is the endpoint the change adds and removes.
	kpSpareEndpoint = netip.MustParseAddr("10.211.1.3")
	kpServiceCIDR   = netip.MustParsePrefix("10.96.0.0/16")
)

const (
	kpNamespace   = "bench"
	kpNodeName    = "bench-node"
	kpTargetPort  = 8080
	kpNodePortTCP = 30080
	kpNodePortUDP = 30090
	kpUDPPort     = 9
)

type kpEnv struct {
	tb                    *benchTB
	ctx                   context.Context
	log                   io.Writer
	self                  string
	node, client, backend *testutil.Netns
	cluster               *kube.Cluster
	// cgroup is a cgroup v2 directory of the benchmark's: Weir's socket
	// hooks attach to it, and the connect probe runs in it.
	cgroup string
	// pinRoot holds the agent's pins.
	pinRoot string
	// clusterIPs of the services created so far.
	clusterIPs []netip.Addr
	// ifindexes and MACs the generator needs.
	c0Index        int
	c0MAC, n0MAC   net.HardwareAddr
	b0Index        int
	spareEndpoints bool // svc-0's slice has kpSpareEndpoint
}

func newKPEnv(tb *benchTB, log io.Writer) *kpEnv {
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	e := &kpEnv{tb: tb, ctx: tb.Context(), log: log, self: self}
	e.topology()
	e.cgroupDir()
	e.pins()
	apiAddr := kube.RootVeth(tb, e.node, netip.Prefix{})
	e.cluster = kube.StartCluster(tb, kube.Options{BindAddr: apiAddr, ServiceCIDR: kpServiceCIDR})
	if err := e.cluster.CreateNamespace(e.ctx, kpNamespace); err != nil {
		tb.Fatal(err)
	}
	if _, err := e.cluster.CreateNode(e.ctx, kpNodeName, kpNode0.Addr()); err != nil {
		tb.Fatal(err)
	}
	e.nodePortService()
	e.backendServer()
	return e
}

func (e *kpEnv) topology() {
	tb := e.tb
	e.node = testutil.NewNetns(tb, "wbkp-node-")
	e.client = testutil.NewNetns(tb, "wbkp-cl-")
	e.backend = testutil.NewNetns(tb, "wbkp-be-")
	c0, n0 := testutil.Veth(tb, e.client, "c0", kpClient0, e.node, "n0", kpNode0)
	_, b0 := testutil.Veth(tb, e.node, "n1", kpNode1, e.backend, "b0", kpBackend0)
	e.c0Index, e.c0MAC, e.n0MAC, e.b0Index = c0.Attrs().Index, c0.Attrs().HardwareAddr, n0.Attrs().HardwareAddr, b0.Attrs().Index
	// The node's own connects to ClusterIPs need a route before
	// kube-proxy's OUTPUT rules rewrite them (Weir's socket hook rewrites
	// before routing).
	kpRoute(tb, e.node, kpServiceCIDR, kpBackend0.Addr())
	// The node's own connections (the connect probe) take ports below
	// Weir's SNAT range (32768-60999): with the SNAT address also the
	// node's address towards the backends, a reply to one of its own
	// ports that a SNAT flow also holds would be taken for the flow's
	// (xdp.Config.SNATPortMin documents this).
	kpSysctl(tb, e.node, map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/n0/rp_filter": "0",
		"net/ipv4/ip_local_port_range": "10000\t32767"})
	// GRO on a veth end lets it take frames its peer sends with native
	// XDP (the generator's, Weir's redirects) without an XDP program of
	// its own; the ends whose stack-sent TCP Weir's XDP forwards must
	// compute full checksums (NOTES-kernel).
	for _, x := range []struct {
		ns  *testutil.Netns
		dev string
	}{{e.node, "n0"}, {e.node, "n1"}, {e.client, "c0"}, {e.backend, "b0"}} {
		x.ns.Run(tb, "ethtool", "-K", x.dev, "gro", "on", "tx", "off")
	}
}

func kpRoute(tb *benchTB, ns *testutil.Netns, dst netip.Prefix, gw netip.Addr) {
	_, n, _ := net.ParseCIDR(dst.String())
	if err := ns.Link.RouteAdd(&netlink.Route{Dst: n, Gw: gw.AsSlice()}); err != nil {
		tb.Fatalf("%s: route %s via %s: %v", ns.Name, dst, gw, err)
	}
}

func kpSysctl(tb *benchTB, ns *testutil.Netns, kv map[string]string) {
	ns.MustDo(tb, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("%s: sysctl %s: %w", ns.Name, k, err)
			}
		}
		return nil
	})
}

func kpRandom() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// cgroupDir creates the benchmark's cgroup under the cgroup v2 mount.
func (e *kpEnv) cgroupDir() {
	base := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
		base = "/sys/fs/cgroup"
	}
	if _, err := os.Stat(filepath.Join(base, "cgroup.controllers")); err != nil {
		e.tb.Fatalf("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup: Weir's socket hooks need one")
	}
	e.cgroup = filepath.Join(base, "weir-bench-"+kpRandom())
	if err := os.Mkdir(e.cgroup, 0o755); err != nil {
		e.tb.Fatalf("create cgroup %s: %v", e.cgroup, err)
	}
	e.tb.Cleanup(func() {
		if err := os.Remove(e.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.tb.Errorf("remove cgroup %s: %v", e.cgroup, err)
		}
	})
}

func (e *kpEnv) pins() {
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		e.tb.Fatal(err)
	}
	e.pinRoot = filepath.Join("/sys/fs/bpf", "weir-bench-kp-"+kpRandom())
	if err := os.Mkdir(e.pinRoot, 0o700); err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(func() { _ = os.RemoveAll(e.pinRoot) })
}

// nodePortService is the north-south target: TCP 80 on NodePort 30080 and
// UDP 9 on 30090, one endpoint on the backend.
func (e *kpEnv) nodePortService() {
	tcp := kube.Port(corev1.ProtocolTCP, 80, kpTargetPort)
	tcp.NodePort = kpNodePortTCP
	udp := kube.Port(corev1.ProtocolUDP, kpUDPPort, kpUDPPort)
	udp.NodePort = kpNodePortUDP
	s := kube.Service(kpNamespace, "nodeport", tcp, udp)
	s.Spec.Type = corev1.ServiceTypeNodePort
	out, err := e.cluster.Client.CoreV1().Services(kpNamespace).Create(e.ctx, s, metav1.CreateOptions{})
	if err != nil {
		e.tb.Fatalf("create the NodePort service: %v", err)
	}
	if _, err := e.cluster.Client.DiscoveryV1().EndpointSlices(kpNamespace).Create(e.ctx,
		kube.EndpointSlice(out, "nodeport-1", kpBackend0.Addr()), metav1.CreateOptions{}); err != nil {
		e.tb.Fatalf("create the NodePort service's endpoints: %v", err)
	}
}

// growServices creates ClusterIP services svc-<len> .. svc-<n-1>, each
// with the backend as its endpoint, 16 at a time.
func (e *kpEnv) growServices(n int) {
	from := len(e.clusterIPs)
	if n <= from {
		return
	}
	ips := make([]netip.Addr, n-from)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next.Store(int64(from))
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || e.ctx.Err() != nil {
					return
				}
				ip, err := e.createService(i)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				ips[i-from] = ip
			}
		})
	}
	wg.Wait()
	if err := errors.Join(append(errs, e.ctx.Err())...); err != nil {
		e.tb.Fatal(err)
	}
	e.clusterIPs = append(e.clusterIPs, ips...)
}

func (e *kpEnv) createService(i int) (netip.Addr, error) {
	name := fmt.Sprintf("svc-%d", i)
	out, err := e.cluster.Client.CoreV1().Services(kpNamespace).Create(e.ctx,
		kube.Service(kpNamespace, name, kube.Port(corev1.ProtocolTCP, 80, kpTargetPort)), metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("create service %s: %w", name, err)
	}
	if _, err := e.cluster.Client.DiscoveryV1().EndpointSlices(kpNamespace).Create(e.ctx,
		kube.EndpointSlice(out, name+"-1", kpBackend0.Addr()), metav1.CreateOptions{}); err != nil {
		return netip.Addr{}, fmt.Errorf("create the endpoints of %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(out.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s has ClusterIP %q: %w", name, out.Spec.ClusterIP, err)
	}
	return ip, nil
}

// toggleEndpoint adds the spare endpoint to svc-0, or removes it: the
// single change whose programming is timed.
func (e *kpEnv) toggleEndpoint() error {
	slices := e.cluster.Client.DiscoveryV1().EndpointSlices(kpNamespace)
	s, err := slices.Get(e.ctx, "svc-0-1", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read svc-0's endpoints: %w", err)
	}
	if e.spareEndpoints {
		s.Endpoints = s.Endpoints[:1]
	} else {
		ep := s.Endpoints[0]
		ep.Addresses = []string{kpSpareEndpoint.String()}
		s.Endpoints = append(s.Endpoints, ep)
	}
	if _, err := slices.Update(e.ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update svc-0's endpoints: %w", err)
	}
	e.spareEndpoints = !e.spareEndpoints
	return nil
}

// backendServer listens in the backend namespace on the target port and
// answers each connection with one short HTTP response, then waits for
// the client to close: the client resets the connection (see
// connect-probe), so no side keeps TIME_WAIT state that a fast request
// loop would run into.
func (e *kpEnv) backendServer() {
	var l net.Listener
	e.backend.MustDo(e.tb, func() error {
		var err error
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", kpTargetPort))
		return err
	})
	e.tb.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveOne(c)
		}
	}()
}

const benchResponse = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

func serveOne(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1024)
	var req []byte
	for !bytes.Contains(req, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		req = append(req, buf[:n]...)
	}
	if _, err := io.WriteString(c, benchResponse); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, c)
}
