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
//   - initial-ms: the informers' caches synced until the end of the sync
//     that programmed every service (the agent's since-caches-synced);
//   - change-p50-ms / change-p99-ms: one EndpointSlice update (one endpoint
//     address replaced) written right after the previous change's sync,
//     from just before the API write to the end of the agent's sync that
//     programmed it (its "msg=synced" log line, 1 ms resolution); such a
//     change waits for --min-sync-period since the previous sync began;
//   - apply-p50-ms / apply-p99-ms: the same changes from the agent's
//     informer receiving the event to the end of that sync, as the agent
//     measures it (change-latency in the synced line; the histogram
//     weir_change_apply_duration_seconds). The update also sets the
//     slice's last-change-trigger-time to the write time, as the
//     EndpointSlice controller would, which feeds
//     kubeproxy_network_programming_duration_seconds;
//   - single-change-* and single-apply-*: the same for a change written
//     alone, 250 ms after the previous sync (every other iteration);
//   - heap-MiB: the Go heap in use at the scrape (go_memstats_heap_inuse_bytes);
//   - heap-idle-MiB: heap memory free but not yet returned to the kernel;
//   - go-sys-MiB: all memory the Go runtime has mapped (go_memstats_sys_bytes);
//   - rss-MiB: the agent's VmRSS after all that.
//
// Nothing is asserted about the numbers. WEIR_K8S_SCALE_LOG=FILE keeps a
// copy of the agent's log; WEIR_K8S_SCALE_PPROF=ADDR (e.g.
// 127.0.0.1:6060, inside the node's netns) starts its pprof server, and
// WEIR_K8S_SCALE_HEAP=FILE with it saves a heap profile at the end.
// Run it alone:
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
	code, metrics, err := scaleGetTimeout(node, "127.0.0.1:9963", "/metrics", 2*time.Minute)
	if err != nil || code != 200 {
		b.Fatalf("agent /metrics: %d %v", code, err)
	}
	scrapeMS := float64(time.Since(scrapeStart).Milliseconds())
	heapMiB := metricValue(metrics, "go_memstats_heap_inuse_bytes") / (1 << 20)
	idleMiB := (metricValue(metrics, "go_memstats_heap_idle_bytes") - metricValue(metrics, "go_memstats_heap_released_bytes")) / (1 << 20)
	sysMiB := metricValue(metrics, "go_memstats_sys_bytes") / (1 << 20)

	// Change latency is read from the agent's log ("msg=synced" lines,
	// millisecond timestamps), not from /metrics: polling a scrape that
	// big would load the two CPUs the agent runs on.
	// Every other change comes alone: 250 ms after the last sync, more
	// than --min-sync-period (default 10 ms), so no rate limit applies; the
	// others follow the previous sync at once, as fast as the API allows.
	var alone, rapid changeSamples
	api := c.Client.DiscoveryV1().EndpointSlices("scale")
	i := 0
	for b.Loop() {
		svc := svcs[i%len(svcs)]
		i++
		samples := &rapid
		if i%2 == 1 {
			samples = &alone
			time.Sleep(250 * time.Millisecond)
		}
		s, err := api.Get(ctx, svc.Name+"-1", metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// A fresh address each time, so every update is a real change.
		s.Endpoints[0].Addresses = []string{fmt.Sprintf("10.245.%d.%d", (i/250)%250, i%250+1)}
		before := len(syncLines(b, agent.log))
		written := time.Now()
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[corev1.EndpointsLastChangeTriggerTime] = written.UTC().Format(time.RFC3339Nano)
		if _, err := api.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		deadline := written.Add(30 * time.Second)
		for {
			if st := syncLines(b, agent.log); len(st) > before {
				samples.api = append(samples.api, st[before].at.Sub(written))
				samples.agent = append(samples.agent, st[before].changeLatency)
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
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	if st := syncLines(b, agent.log); len(st) > 0 {
		for _, l := range st {
			if l.sinceCachesSynced > 0 {
				b.ReportMetric(ms(l.sinceCachesSynced), "initial-ms")
				break
			}
		}
	}
	rapid.report(b, "change", "apply")
	alone.report(b, "single-change", "single-apply")
	b.ReportMetric(scrapeMS, "scrape-ms")
	b.ReportMetric(heapMiB, "heap-MiB")
	b.ReportMetric(idleMiB, "heap-idle-MiB")
	b.ReportMetric(sysMiB, "go-sys-MiB")
	b.ReportMetric(float64(vmRSS(b, agent.cmd.Process.Pid))/1024, "rss-MiB")
	if addr, file := os.Getenv("WEIR_K8S_SCALE_PPROF"), os.Getenv("WEIR_K8S_SCALE_HEAP"); addr != "" && file != "" {
		code, prof, err := scaleGetTimeout(node, addr, "/debug/pprof/heap?gc=1", time.Minute)
		if err != nil || code != 200 {
			b.Fatalf("heap profile: %d %v", code, err)
		}
		if err := os.WriteFile(file, []byte(prof), 0o644); err != nil {
			b.Fatal(err)
		}
	}
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
	args := []string{"agent", "--kubeconfig", kubeconfig, "--node-name", k8sNodeName,
		"--devices", "eth0", "--xdp-mode", "generic", "--cgroup-root", cgroup, "--bpf-root", bpfRoot,
		"--sync-period", "1h", "--metrics-bind-address", "127.0.0.1:9963", "--healthz-bind-address", "127.0.0.1:10256"}
	if addr := os.Getenv("WEIR_K8S_SCALE_PPROF"); addr != "" {
		args = append(args, "--pprof-address", addr)
	}
	cmd := node.Host.Command(bin, args...)
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
		if keep := os.Getenv("WEIR_K8S_SCALE_LOG"); keep != "" {
			if b, err := os.ReadFile(logPath); err == nil {
				_ = os.WriteFile(keep, b, 0o644)
			}
		}
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

// changeSamples are change latencies: from before the API write, and
// the agent's own from the informer event.
type changeSamples struct{ api, agent []time.Duration }

// report reports their p50 and p99 as NAME-p50-ms and NAME-p99-ms.
func (c changeSamples) report(b *testing.B, apiName, agentName string) {
	for _, m := range []struct {
		d    []time.Duration
		name string
	}{{c.api, apiName}, {c.agent, agentName}} {
		if len(m.d) == 0 {
			continue
		}
		slices.Sort(m.d)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.ReportMetric(ms(m.d[len(m.d)/2]), m.name+"-p50-ms")
		b.ReportMetric(ms(m.d[(len(m.d)*99)/100]), m.name+"-p99-ms")
	}
}

// syncLine is one of the agent's "msg=synced" log lines.
type syncLine struct {
	at                time.Time     // its timestamp (1 ms resolution)
	changeLatency     time.Duration // its change-latency
	sinceCachesSynced time.Duration // its since-caches-synced
}

// syncLines returns the agent's "msg=synced" log lines.
func syncLines(tb testing.TB, logPath string) []syncLine {
	tb.Helper()
	b, err := os.ReadFile(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	var out []syncLine
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.Contains(line, " msg=synced ") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			tb.Fatalf("agent log line %q: %v", line, err)
		}
		out = append(out, syncLine{at: t, changeLatency: logDuration(line, "change-latency"),
			sinceCachesSynced: logDuration(line, "since-caches-synced")})
	}
	return out
}

// logDuration is the duration attribute key of a log line, zero when
// absent.
func logDuration(line, key string) time.Duration {
	_, v, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return 0
	}
	v, _, _ = strings.Cut(v, " ")
	d, _ := time.ParseDuration(v)
	return d
}

// metricValue is the value of an unlabelled series in a Prometheus text
// exposition, zero when absent.
func metricValue(exposition, name string) float64 {
	for line := range strings.SplitSeq(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
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
