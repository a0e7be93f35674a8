package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

// k8sLab is the edge lab (client, node "lb", backends b1..bn on one LAN)
// turned into a one-node Kubernetes cluster: a real apiserver reachable
// from the node's namespace over a root veth, a Node object for the node,
// and a test cgroup for the agent's socket hooks. The agent itself is
// started by startAgent so tests can kill and restart it.
type k8sLab struct {
	*lab
	c        *kube.Cluster
	nodeIP   netip.Addr // the node's LAN address, its InternalIP
	nodeIP6  netip.Addr // its IPv6 LAN address, an InternalIP too in a dual-stack lab
	apiIP    netip.Addr // the node's address on the root veth (also a node address)
	cgroup   string
	ctx      context.Context
	nodeName string
}

const k8sNodeName = "node1"

// newK8sLab builds the lab with n backends and an IPv4 single-stack
// cluster, and creates namespace "e2e" in it.
func newK8sLab(t *testing.T, n int) *k8sLab {
	t.Helper()
	return newK8sLabWith(t, n, false)
}

// newDualStackK8sLab is newK8sLab with an IPv4-primary dual-stack cluster
// (service ranges kube.DualStackServiceCIDRs) whose Node has an IPv4 and
// an IPv6 InternalIP. The lab's hosts have both families already.
func newDualStackK8sLab(t *testing.T, n int) *k8sLab {
	t.Helper()
	return newK8sLabWith(t, n, true)
}

func newK8sLabWith(t *testing.T, n int, dualStack bool) *k8sLab {
	t.Helper()
	testutil.RequirePrivileged(t)
	// The cgroup first: cleanups run last-in first-out, so the agent and
	// every client in it have exited before the rmdir.
	cg := k8sCgroup(t)
	l := newLab(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	apiAddr := kube.RootVeth(t, &testutil.Netns{Host: l.lb}, netip.Prefix{})
	opts := kube.Options{BindAddr: apiAddr}
	nodeIPs := []netip.Addr{lbAddr(false)}
	if dualStack {
		opts.ServiceCIDRs = kube.DualStackServiceCIDRs
		nodeIPs = append(nodeIPs, lbAddr(true))
	}
	c := kube.StartCluster(t, opts)
	k := &k8sLab{lab: l, c: c, nodeIP: lbAddr(false), apiIP: apiAddr.Next(), cgroup: cg, ctx: ctx, nodeName: k8sNodeName}
	if dualStack {
		k.nodeIP6 = lbAddr(true)
	}
	// The agent's watches must end before the apiserver stops: an
	// apiserver with open watches ignores SIGTERM until its grace period.
	t.Cleanup(func() { k.stop("agent", syscall.SIGTERM) })
	_, err := c.CreateNode(ctx, k8sNodeName, nodeIPs...)
	must(t, err)
	must(t, c.CreateNamespace(ctx, "e2e"))
	return k
}

// k8sCgroup creates an empty cgroup v2 directory for the agent's socket
// hooks (never the root cgroup) and removes it in Cleanup.
func k8sCgroup(t testing.TB) string {
	t.Helper()
	const root = "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		t.Fatalf("cgroup v2 is not mounted at %s: %v", root, err)
	}
	dir := filepath.Join(root, testutil.RandomName("weir-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create test cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() {
		var err error
		for range 100 {
			if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("remove test cgroup %s: %v", dir, err)
	})
	return dir
}

// agentArgs are the node agent's flags: Kubernetes source, XDP in generic
// mode on the node's LAN port, SNAT by default (NodePorts differ from the
// target ports), socket hooks on the test cgroup only.
func (k *k8sLab) agentArgs(extra ...string) []string {
	return append([]string{"agent",
		"--kubeconfig", k.c.Kubeconfig, "--node-name", k.nodeName,
		"--devices", "eth0", "--xdp-mode", "generic", "--lb-mode", "snat",
		"--cgroup-root", k.cgroup, "--bpf-root", k.bpfRoot("lb"),
		"--metrics-bind-address", "127.0.0.1:9963", "--healthz-bind-address", "127.0.0.1:10256",
	}, extra...)
}

// startAgent runs the agent in the node's namespace and waits until it is
// healthy (its source synced and the maps programmed).
func (k *k8sLab) startAgent(extra ...string) *process {
	k.t.Helper()
	p := k.start("agent", k.lb, k.agentArgs(extra...)...)
	k.waitHealthy(k.lb)
	return p
}

func (k *k8sLab) createService(s *corev1.Service) *corev1.Service {
	k.t.Helper()
	out, err := k.c.Client.CoreV1().Services(s.Namespace).Create(k.ctx, s, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("create service %s/%s: %v", s.Namespace, s.Name, err)
	}
	return out
}

func (k *k8sLab) deleteService(ns, name string) {
	k.t.Helper()
	if err := k.c.Client.CoreV1().Services(ns).Delete(k.ctx, name, metav1.DeleteOptions{}); err != nil {
		k.t.Fatalf("delete service %s/%s: %v", ns, name, err)
	}
}

// waitUnprogrammed waits until no frontend of service ns/name is left in
// `weir inspect services`.
func (k *k8sLab) waitUnprogrammed(ns, name string) {
	k.t.Helper()
	svc := ns + "/" + name
	k.waitInspect(func(m map[string]serviceView) error {
		for fe, v := range m {
			if v.Service == svc {
				return fmt.Errorf("frontend %s of the deleted %s is still programmed", fe, svc)
			}
		}
		return nil
	})
}

// applySlice creates the slice or replaces an existing one of that name.
func (k *k8sLab) applySlice(s *discoveryv1.EndpointSlice) {
	k.t.Helper()
	api := k.c.Client.DiscoveryV1().EndpointSlices(s.Namespace)
	_, err := api.Create(k.ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *discoveryv1.EndpointSlice
		if cur, err = api.Get(k.ctx, s.Name, metav1.GetOptions{}); err == nil {
			s = s.DeepCopy()
			s.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(k.ctx, s, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		k.t.Fatalf("apply endpointslice %s/%s: %v", s.Namespace, s.Name, err)
	}
}

// backendsOf lists b1..bn's addresses.
func backendsOf(idx ...int) []netip.Addr {
	out := make([]netip.Addr, 0, len(idx))
	for _, i := range idx {
		out = append(out, backendAddr(i, false))
	}
	return out
}

// frontendOf is "addr:port/PROTO", inspect's and kube.NftServices' key.
func frontendOf(a netip.Addr, port int32, proto corev1.Protocol) string {
	return netip.AddrPortFrom(a, uint16(port)).String() + "/" + string(proto)
}

// inspectByFrontend indexes `weir inspect services` by frontend.
func inspectByFrontend(views []serviceView) map[string]serviceView {
	m := make(map[string]serviceView, len(views))
	for _, v := range views {
		m[v.Frontend] = v
	}
	return m
}

// backendStates renders a view's backends as sorted "addr=state".
func backendStates(v serviceView) []string {
	out := make([]string, 0, len(v.Backends))
	for _, b := range v.Backends {
		out = append(out, b.Address+"="+b.State)
	}
	slices.Sort(out)
	return out
}

// activeBackends is a view's active backends, sorted: what kube-proxy
// would DNAT new connections to.
func activeBackends(v serviceView) []string {
	var out []string
	for _, b := range v.Backends {
		if b.State == "active" {
			out = append(out, b.Address)
		}
	}
	slices.Sort(out)
	return out
}

// waitInspect polls inspect until check passes (20 s).
func (k *k8sLab) waitInspect(check func(map[string]serviceView) error) map[string]serviceView {
	k.t.Helper()
	var last map[string]serviceView
	eventually(k.t, 20*time.Second, func() error {
		last = inspectByFrontend(k.inspect())
		return check(last)
	})
	return last
}

// wantFrontend checks one frontend's service, type, scope and backends
// ("addr:port=state", any order).
func wantFrontend(m map[string]serviceView, fe, service, typ, scope string, backends ...string) error {
	v, ok := m[fe]
	if !ok {
		return fmt.Errorf("frontend %s (%s %s) is not programmed", fe, service, typ)
	}
	slices.Sort(backends)
	if v.Service != service || v.Type != typ || v.Scope != scope || !slices.Equal(backendStates(v), backends) {
		return fmt.Errorf("frontend %s: got %s %s %s %v, want %s %s %s %v",
			fe, v.Service, v.Type, v.Scope, backendStates(v), service, typ, scope, backends)
	}
	return nil
}

// runInCgroup runs a command in the node's namespace inside the test
// cgroup, so the agent's socket hooks apply to it, and returns what run
// (Output or CombinedOutput) returns.
func (k *k8sLab) runInCgroup(run func(*exec.Cmd) ([]byte, error), name string, args ...string) ([]byte, error) {
	cg, err := os.Open(k.cgroup)
	if err != nil {
		return nil, err
	}
	defer cg.Close()
	cmd := k.lb.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	return run(cmd)
}

// curlInCgroup runs curl in the node's namespace inside the test cgroup
// (so the agent's socket hooks apply to it) and returns the first line of
// the body: the backend's name.
func (k *k8sLab) curlInCgroup(addr netip.AddrPort) (string, error) {
	out, err := k.runInCgroup((*exec.Cmd).Output, "curl", "-sS", "--max-time", "5", "http://"+addr.String()+"/")
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("curl %s in cgroup %s: %v: %s", addr, k.cgroup, err, ee.Stderr)
		}
		return "", fmt.Errorf("curl %s in cgroup %s: %v", addr, k.cgroup, err)
	}
	name, _, _ := strings.Cut(string(out), "\n")
	return name, nil
}

// spreadInCgroup makes n requests to addr with curlInCgroup and counts
// the answers by backend name.
func (k *k8sLab) spreadInCgroup(t *testing.T, addr netip.AddrPort, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, err := k.curlInCgroup(addr)
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	return got
}

// connectInCgroup opens a TCP connection to addr from the node's
// namespace inside the test cgroup and closes it; the error carries the
// errno's text ("Connection refused"), which curl does not print.
func (k *k8sLab) connectInCgroup(addr netip.AddrPort) error {
	// bash's /dev/tcp does a plain connect(2) and reports its errno.
	if out, err := k.runInCgroup((*exec.Cmd).CombinedOutput, "timeout", "5", "bash", "-c",
		fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr.Addr(), addr.Port())); err != nil {
		return fmt.Errorf("connect %s in cgroup %s: %v: %s", addr, k.cgroup, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// udpInCgroup sends one datagram ("who") to addr from a connected UDP
// socket in the node's namespace inside the test cgroup and returns the
// answer, the demo backend's name.
func (k *k8sLab) udpInCgroup(addr netip.AddrPort) (string, error) {
	// bash's /dev/udp connects the socket (the connect hook picks the
	// backend) and reads the answer through the same socket; read waits
	// for 64 bytes or its 2 s timeout and keeps what came.
	out, err := k.runInCgroup((*exec.Cmd).CombinedOutput, "timeout", "5", "bash", "-c",
		fmt.Sprintf("exec 3<>/dev/udp/%s/%d && printf who >&3 && IFS= read -r -t 2 -N 64 ans <&3; printf %%s \"$ans\"", addr.Addr(), addr.Port()))
	if err != nil || len(out) == 0 {
		return "", fmt.Errorf("UDP to %s in cgroup %s: %v: %q", addr, k.cgroup, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// webService is a LoadBalancer service "e2e/<name>" (80 -> 8080) with an
// externalIP; the caller sets the ingress IP after creating it.
func webService(name string, extIP netip.Addr) *corev1.Service {
	s := kube.Service("e2e", name, kube.Port(corev1.ProtocolTCP, 80, 8080))
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	if extIP.IsValid() {
		s.Spec.ExternalIPs = []string{extIP.String()}
	}
	return s
}

// onNode puts endpoint i of a slice on node name.
func onNode(s *discoveryv1.EndpointSlice, i int, name string) {
	s.Endpoints[i].NodeName = new(name)
}

// terminating turns endpoint i into serving-but-terminating.
func terminating(s *discoveryv1.EndpointSlice, i int) {
	s.Endpoints[i].Conditions = discoveryv1.EndpointConditions{Ready: new(false), Serving: new(true), Terminating: new(true)}
}
