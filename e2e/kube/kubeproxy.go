package kube

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/testutil"
)

// KubeProxyClusterCIDR is the pod CIDR kube-proxy is told about (it decides
// which sources get masqueraded). Test endpoints may live anywhere.
const KubeProxyClusterCIDR = "10.244.0.0/16"

// RunKubeProxy runs the reference kube-proxy inside ns as node nodeName, in
// mode "nftables" or "iptables", against c. It only programs that
// namespace. The Node object should exist first (Cluster.CreateNode) and c
// must be reachable from ns, i.e. started with a BindAddr from RootVeth.
//
// It enters the namespace with nsenter --net (not `ip netns exec`, and no
// new mount namespace), binds metrics and healthz to 127.0.0.1 inside the
// namespace, and in Cleanup stops the process and runs
// `kube-proxy --cleanup --proxy-mode <mode>` in the namespace.
func RunKubeProxy(tb testing.TB, c *Cluster, ns *testutil.Netns, mode, nodeName string) *Process {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	switch mode {
	case "nftables":
		requireTool(tb, "nft", "nftables")
	case "iptables":
		requireTool(tb, "iptables", "iptables")
	default:
		tb.Fatalf("RunKubeProxy: mode %q is not nftables or iptables", mode)
	}
	_, bin, _ := Binaries(tb)
	nsPath := filepath.Join("/run/netns", ns.Name)
	if _, err := os.Stat(nsPath); err != nil {
		tb.Fatalf("RunKubeProxy: netns %s has no %s (create it with testutil.NewNetns): %v", ns.Name, nsPath, err)
	}
	dir := tb.TempDir()
	cmd := exec.Command("nsenter", "--net="+nsPath, "--", bin,
		"--kubeconfig", c.Kubeconfig,
		"--hostname-override", nodeName,
		"--proxy-mode", mode,
		// 0 leaves the conntrack sysctls alone: they are not per-namespace.
		"--conntrack-max-per-core", "0",
		"--cluster-cidr", KubeProxyClusterCIDR,
		"--metrics-bind-address", "127.0.0.1:10249",
		"--healthz-bind-address", "127.0.0.1:10256",
	)
	// nsenter execs kube-proxy in place (no --fork), so this PID is
	// kube-proxy's own and SIGTERM reaches it.
	p, err := startProcess("kube-proxy-"+mode, filepath.Join(dir, "kube-proxy.log"), cmd)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stopAndReport(tb, p, 10*time.Second)
		if _, err := os.Stat(nsPath); err != nil {
			return // namespace already gone, and its rules with it
		}
		out, err := exec.Command("nsenter", "--net="+nsPath, "--", bin, "--cleanup", "--proxy-mode", mode).CombinedOutput()
		if err != nil {
			tb.Errorf("kube-proxy --cleanup --proxy-mode %s in netns %s: %v\n%s", mode, ns.Name, err, out)
		}
	})
	return p
}

func requireTool(tb testing.TB, name, pkg string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Fatalf("%s not found: install the Debian package %s (make deps)", name, pkg)
	}
}
