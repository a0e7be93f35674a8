package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

// BenchmarkK8sScale measures the agent against a real apiserver holding
// many services (default 10000, WEIR_K8S_SCALE_SERVICES overrides) of 10
// endpoints each:
//
//   - create-s: time to create the objects (the apiserver, not weir);
//   - ready-s: agent start until /healthz is 200 (informers listed and
//     synced, every service translated and written to the BPF maps);
//   - frontends: ClusterIP frontends `weir inspect services` then lists;
//   - scrape-ms: one GET of the agent's /metrics (per-service and
//     per-backend series);
//   - change-p50-ms / change-p99-ms: one EndpointSlice update (one endpoint
//     address replaced), from just before the API write to the end of the
//     agent's sync that programmed it (its "msg=synced" log line, 1 ms
//     resolution), one loop iteration per change;
//   - rss-MiB: the agent's VmRSS after all that.
//
// Nothing is asserted about the numbers. Run it alone:
//
//	go test -run '^$' -bench K8sScale -benchtime 50x -timeout 30m ./e2e
func BenchmarkK8sScale(b *testing.B) {
	testutil.RequirePrivileged(b)
	nSvc := 10000
	if v := os.Getenv("WEIR_K8S_SCALE_SERVICES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("WEIR_K8S_SCALE_SERVICES=%q: want a positive number", v)
		}
		nSvc = n
	}
	const nEP = 10
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	b.Cleanup(cancel)

	bin := buildWeir(b)
	cg := k8sCgroup(b)
	bpfRoot := testutil.BPFRoot(b)
	node := testutil.NewNetns(b, "weir-scale-")
	peer := testutil.NewNetns(b, "weir-scalep-")
	nodeIP := netip.MustParseAddr("10.203.0.2")
	testutil.Veth(b, node, "eth0", netip.PrefixFrom(nodeIP, 24), peer, "eth0", netip.MustParsePrefix("10.203.0.1/24"))
	apiAddr := kube.RootVeth(b, node, netip.Prefix{})
	c := kube.StartCluster(b, kube.Options{BindAddr: apiAddr})
	if _, err := c.CreateNode(ctx, k8sNodeName, nodeIP); err != nil {
		b.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, "scale"); err != nil {
		b.Fatal(err)
	}

	t0 := time.Now()
	svcs := createScaleObjects(ctx, b, c, nSvc, nEP)
	createS := time.Since(t0).Seconds()

	t0 = time.Now()
	agent := startScaleAgent(b, bin, node, c.Kubeconfig, cg, bpfRoot)
	for {
		if code, _, _ := scaleGet(node, "127.0.0.1:10256", "/healthz"); code == 200 {
			break
		}
		if time.Since(t0) > 10*time.Minute {
			b.Fatalf("agent not healthy after %s", time.Since(t0))
		}
		time.Sleep(50 * time.Millisecond)
	}
	readyS := time.Since(t0).Seconds()

	out, err := exec.Command(bin, "inspect", "services", "--bpf-root", bpfRoot).Output()
	if err != nil {
		b.Fatalf("weir inspect services: %v", err)
	}
	frontends := strings.Count(string(out), " ClusterIP ")

	// One scrape of /metrics: its cost grows with services and backends.
	scrapeStart := time.Now()
	if code, _, err := scaleGetTimeout(node, "127.0.0.1:9963", "/metrics", 2*time.Minute); err != nil || code != 200 {
		b.Fatalf("agent /metrics: %d %v", code, err)
	}
	scrapeMS := float64(time.Since(scrapeStart).Milliseconds())

	// Change latency is read from the agent's log ("msg=synced" lines,
	// millisecond timestamps), not from /metrics: polling a scrape that
	// big would load the two CPUs the agent runs on.
	var lat []time.Duration
	api := c.Client.DiscoveryV1().EndpointSlices("scale")
	i := 0
	for b.Loop() {
		svc := svcs[i%len(svcs)]
		i++
		s, err := api.Get(ctx, svc.Name+"-1", metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// A fresh address each time, so every update is a real change.
		s.Endpoints[0].Addresses = []string{fmt.Sprintf("10.245.%d.%d", (i/250)%250, i%250+1)}
		before := len(syncTimes(b, agent.log))
		written := time.Now()
		if _, err := api.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		deadline := written.Add(30 * time.Second)
		for {
			if st := syncTimes(b, agent.log); len(st) > before {
				lat = append(lat, st[before].Sub(written))
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("change %d not programmed within 30 s", i)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// b.Loop's first call resets user metrics: report everything here.
	b.ReportMetric(createS, "create-s")
	b.ReportMetric(readyS, "ready-s")
	b.ReportMetric(float64(frontends), "frontends")
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.ReportMetric(ms(lat[len(lat)/2]), "change-p50-ms")
		b.ReportMetric(ms(lat[(len(lat)*99)/100]), "change-p99-ms")
	}
	b.ReportMetric(scrapeMS, "scrape-ms")
	b.ReportMetric(float64(vmRSS(b, agent.cmd.Process.Pid))/1024, "rss-MiB")
}

// buildWeir builds cmd/weir into a temporary directory.
func buildWeir(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "weir")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/weir").CombinedOutput(); err != nil {
		tb.Fatalf("go build ../cmd/weir: %v\n%s", err, out)
	}
	return bin
}

// createScaleObjects creates n ClusterIP services "s<i>" in namespace
// scale, each with one slice of nEP ready endpoints, from 16 workers.
func createScaleObjects(ctx context.Context, tb testing.TB, c *kube.Cluster, n, nEP int) []*corev1.Service {
	tb.Helper()
	out := make([]*corev1.Service, n)
	work := make(chan int)
	errc := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				svc, err := c.Client.CoreV1().Services("scale").Create(ctx,
					kube.Service("scale", fmt.Sprintf("s%d", i), kube.Port(corev1.ProtocolTCP, 80, 8080)), metav1.CreateOptions{})
				if err == nil {
					addrs := make([]netip.Addr, nEP)
					for j := range addrs {
						addrs[j] = netip.AddrFrom4([4]byte{10, byte(128 + j), byte(i / 250), byte(i%250 + 1)})
					}
					_, err = c.Client.DiscoveryV1().EndpointSlices("scale").Create(ctx,
						kube.EndpointSlice(svc, svc.Name+"-1", addrs...), metav1.CreateOptions{})
				}
				if err != nil {
					select {
					case errc <- fmt.Errorf("service scale/s%d: %w", i, err):
					default:
					}
					continue
				}
				out[i] = svc
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		tb.Fatal(err)
	default:
	}
	return out
}

// startScaleAgent runs the agent in node and stops it (then removes its
// pins) in Cleanup.
func startScaleAgent(tb testing.TB, bin string, node *testutil.Netns, kubeconfig, cgroup, bpfRoot string) scaleAgent {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := node.Host.Command(bin, "agent", "--kubeconfig", kubeconfig, "--node-name", k8sNodeName,
		"--devices", "eth0", "--xdp-mode", "generic", "--cgroup-root", cgroup, "--bpf-root", bpfRoot,
		"--sync-period", "1h", "--metrics-bind-address", "127.0.0.1:9963", "--healthz-bind-address", "127.0.0.1:10256")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start agent: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if out, err := exec.Command(bin, "cleanup", "--bpf-root", bpfRoot).CombinedOutput(); err != nil {
			tb.Errorf("weir cleanup %s: %v: %s", bpfRoot, err, out)
		}
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			tb.Logf("--- agent log ---\n%s", b)
		}
	})
	return scaleAgent{cmd: cmd, log: logPath}
}

// scaleAgent is the benchmark's agent process and its log file.
type scaleAgent struct {
	cmd *exec.Cmd
	log string
}

// syncTimes returns the times of the agent's "msg=synced" log lines.
func syncTimes(tb testing.TB, logPath string) []time.Time {
	tb.Helper()
	b, err := os.ReadFile(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	var out []time.Time
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.Contains(line, " msg=synced ") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			tb.Fatalf("agent log line %q: %v", line, err)
		}
		out = append(out, t)
	}
	return out
}

func scaleGet(node *testutil.Netns, addr, path string) (int, string, error) {
	return scaleGetTimeout(node, addr, path, 5*time.Second)
}

// scaleGetTimeout is one GET from inside node.
func scaleGetTimeout(node *testutil.Netns, addr, path string, timeout time.Duration) (int, string, error) {
	var code int
	var body string
	err := node.Do(func() error {
		var err error
		code, body, err = httpGet(addr, path, timeout)
		return err
	})
	return code, body, err
}

// vmRSS is a process's resident set in KiB.
func vmRSS(tb testing.TB, pid int) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	tb.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
