package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"github.com/vishvananda/netlink"

	"github.com/weir-lb/weir/e2e/kube"
	"github.com/weir-lb/weir/internal/testutil"
)

// KubeProxyResult is one proxy at one service count in `weir bench
// kube-proxy`. The JSON names are a contract (docs/BENCHMARKS.md).
type KubeProxyResult struct {
	// Proxy is weir, iptables or nftables (kube-proxy's modes).
	Proxy    string `json:"proxy"`
	Services int    `json:"services"`
	// ProgramSeconds: from starting the proxy, with every Service already
	// in the API, to the end of the sync that programmed them all (the
	// proxy's own kubeproxy_sync_proxy_rules_last_timestamp_seconds).
	// SyncSeconds: the time spent in syncs until then, by the proxy's
	// kubeproxy_sync_proxy_rules_duration_seconds; Syncs how many.
	ProgramSeconds float64 `json:"program_seconds"`
	SyncSeconds    float64 `json:"sync_seconds"`
	Syncs          int     `json:"syncs"`
	// ChangeSeconds: from writing one EndpointSlice change to the API to
	// the end of the sync that programmed it.
	ChangeSeconds float64 `json:"change_seconds"`
	// NodePortPPS: UDP frames to the NodePort that reached the backend,
	// per CPU-second spent on their whole path (generator, node, backend
	// device; see xdpbench.SendStats); NodePortWallPPS per wall second.
	NodePortPPS     float64 `json:"nodeport_pps"`
	NodePortWallPPS float64 `json:"nodeport_pps_wall"`
	NodePortLost    uint64  `json:"nodeport_lost"`
	// NodePortRPS: HTTP requests, a new connection each, completed per
	// second through the NodePort.
	NodePortRPS float64 `json:"nodeport_requests_per_second"`
	// ClusterIP connect latency from a process on the node.
	ConnectP50Seconds float64 `json:"clusterip_connect_p50_seconds"`
	ConnectP99Seconds float64 `json:"clusterip_connect_p99_seconds"`
	// Ratios (Weir's rows): for each kube-proxy mode, Weir's figure
	// divided by kube-proxy's, figure by figure (pps and requests: higher
	// is better; seconds: lower is better).
	Ratios map[string]map[string]float64 `json:"ratios,omitempty"`
}

type kpOptions struct {
	services []int
	proxies  []string
	packets  int
	flows    int
	runs     int
	duration time.Duration
	workers  int
	connects int
}

var kpProxies = []string{"iptables", "nftables", "weir"}

func runBenchKubeProxy(ctx context.Context, args []string) error {
	return benchKubeProxy(ctx, args, os.Stdout, os.Stderr)
}

func benchKubeProxy(ctx context.Context, args []string, out, log io.Writer) error {
	fs := pflag.NewFlagSet("bench kube-proxy", pflag.ContinueOnError)
	fs.SetOutput(log)
	var (
		o      kpOptions
		format outputFormat
	)
	fs.IntSliceVar(&o.services, "services", []int{1000, 10000}, "ClusterIP service counts (created in the API once, then grown)")
	fs.StringSliceVar(&o.proxies, "proxies", kpProxies, "proxies to compare: iptables, nftables (kube-proxy's modes), weir")
	fs.IntVar(&o.packets, "packets", 1_000_000, "UDP frames per NodePort throughput run")
	fs.IntVar(&o.flows, "flows", 1000, "client ports the NodePort frames cycle through")
	fs.IntVar(&o.runs, "runs", 3, "throughput runs per proxy (the median counts)")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "how long the NodePort HTTP request run lasts")
	fs.IntVar(&o.workers, "workers", 16, "concurrent HTTP clients")
	fs.IntVar(&o.connects, "connects", 2000, "ClusterIP connects timed per proxy")
	format.flags(fs)
	fs.Usage = func() {
		fmt.Fprintln(log, "usage: weir bench kube-proxy [--services 1000,10000] [--proxies iptables,nftables,weir] [--json|--csv]\n\n"+
			"Starts etcd, kube-apiserver and, one after the other, kube-proxy (iptables, nftables) and the Weir agent\n"+
			"in a node namespace between a client and a backend namespace; see docs/BENCHMARKS.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := format.check(); err != nil {
		return err
	}
	for _, p := range o.proxies {
		if !slices.Contains(kpProxies, p) {
			return fmt.Errorf("--proxies %q: want iptables, nftables or weir", p)
		}
	}
	for _, n := range o.services {
		if n < 1 || n > 30000 {
			return fmt.Errorf("--services %d out of range (1 to 30000: the service CIDR is a /16)", n)
		}
	}
	if o.packets < 1 || o.flows < 1 || o.flows > 65536 || o.runs < 1 || o.workers < 1 || o.connects < 1 || o.duration <= 0 {
		return errors.New("--packets, --runs, --workers, --connects and --duration must be positive, --flows 1 to 65536")
	}
	if os.Geteuid() != 0 {
		return errors.New("the kube-proxy comparison creates network namespaces, runs kube-proxy and loads BPF programs: run it as root")
	}
	slices.Sort(o.services)
	var results []KubeProxyResult
	err := runTB(ctx, "bench kube-proxy", log, func(tb *benchTB) {
		testutil.RequirePrivileged(tb)
		fmt.Fprintln(log, "kube-proxy comparison: building or finding the Kubernetes binaries, starting etcd and kube-apiserver")
		e := newKPEnv(tb, log)
		for _, n := range o.services {
			start := time.Now()
			e.growServices(n)
			fmt.Fprintf(log, "%d services in the API (%.1fs)\n", n, time.Since(start).Seconds())
			for _, p := range o.proxies {
				r, err := e.runProxy(p, n, o)
				if err != nil {
					tb.Fatalf("%s at %d services: %v", p, n, err)
				}
				fmt.Fprintf(log, "  %-8s program %.2fs (syncs %.2fs), change %.3fs, nodeport %.3f Mpps/CPU %.0f req/s, connect p50 %.0fus p99 %.0fus\n",
					p, r.ProgramSeconds, r.SyncSeconds, r.ChangeSeconds, r.NodePortPPS/1e6, r.NodePortRPS, r.ConnectP50Seconds*1e6, r.ConnectP99Seconds*1e6)
				results = append(results, r)
			}
		}
	})
	addRatios(results)
	if len(results) > 0 {
		var werr error
		switch {
		case format.json:
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			werr = enc.Encode(results)
		case format.csv:
			werr = writeKubeProxyCSV(out, results)
		default:
			werr = writeKubeProxyTable(out, results)
		}
		err = errors.Join(err, werr)
	}
	return err
}

// runProxy starts one proxy, measures it and stops it (and removes its
// rules or programs) before returning.
func (e *kpEnv) runProxy(name string, n int, o kpOptions) (r KubeProxyResult, err error) {
	r = KubeProxyResult{Proxy: name, Services: n}
	err = runTB(e.ctx, name, e.log, func(tb *benchTB) {
		// Registered first, so it runs after the proxy is gone: the next
		// proxy starts without this one's connection tracking (a NAT
		// entry's reply tuple would capture the next proxy's flows).
		tb.Cleanup(func() {
			for _, ns := range []*testutil.Netns{e.node, e.client, e.backend} {
				if err := ns.Link.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
					tb.Errorf("flush conntrack in %s: %v", ns.Name, err)
				}
			}
		})
		start := time.Now()
		metricsURL := "http://127.0.0.1:10249/metrics"
		if name == "weir" {
			e.startAgent(tb)
			metricsURL = "http://127.0.0.1:9963/metrics"
		} else {
			kube.RunKubeProxy(tb, e.cluster, e.node, name, kpNodeName)
		}
		c := httpIn(e.node)
		var m metrics
		err := poll(e.ctx, 10*time.Minute, name+": first sync of every service", func() (bool, error) {
			if name == "weir" {
				// Weir syncs before its source has listed anything;
				// ready means the source's state is programmed.
				resp, err := c.Get("http://127.0.0.1:10257/readyz")
				if err != nil {
					return false, err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return false, fmt.Errorf("readyz: %s", resp.Status)
				}
			}
			var err error
			if m, err = scrape(c, metricsURL); err != nil {
				return false, err
			}
			ts, ok := m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
			return ok && ts > 0, nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		ts, _ := m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
		r.ProgramSeconds = ts - unixSecondsOf(start)
		// kube-proxy sets the timestamp inside the sync and observes its
		// duration when the sync returns: wait for that.
		err = poll(e.ctx, time.Minute, name+": the first sync's duration", func() (bool, error) {
			var err error
			if m, err = scrape(c, metricsURL); err != nil {
				return false, err
			}
			n, _ := m.get("kubeproxy_sync_proxy_rules_duration_seconds_count")
			return n >= 1, nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		r.SyncSeconds, _ = m.get("kubeproxy_sync_proxy_rules_duration_seconds_sum")
		syncs, _ := m.get("kubeproxy_sync_proxy_rules_duration_seconds_count")
		r.Syncs = int(syncs)

		// One change, after the proxies' minimum sync period (kube-proxy:
		// 1s) has passed since their last sync.
		time.Sleep(2 * time.Second)
		before, err := scrape(c, metricsURL)
		if err != nil {
			tb.Fatal(err)
		}
		changed := time.Now()
		if err := e.toggleEndpoint(); err != nil {
			tb.Fatal(err)
		}
		err = poll(e.ctx, 2*time.Minute, name+": the change programmed", func() (bool, error) {
			var err error
			if m, err = scrape(c, metricsURL); err != nil {
				return false, err
			}
			ts, _ := m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
			if ts <= unixSecondsOf(changed) {
				return false, nil
			}
			if name == "weir" {
				// A sync that wrote the changed service.
				a, _ := m.get("weir_service_changes_total")
				b, _ := before.get("weir_service_changes_total")
				return a > b, nil
			}
			// kube-proxy saw the change and has none pending.
			a, _ := m.get("kubeproxy_sync_proxy_rules_endpoint_changes_total")
			b, _ := before.get("kubeproxy_sync_proxy_rules_endpoint_changes_total")
			pending, _ := m.get("kubeproxy_sync_proxy_rules_endpoint_changes_pending")
			return a > b && pending == 0, nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		ts, _ = m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
		r.ChangeSeconds = ts - unixSecondsOf(changed)

		pps, err := e.measurePPS(o)
		if err != nil {
			tb.Fatalf("NodePort throughput: %v", err)
		}
		r.NodePortPPS, r.NodePortWallPPS, r.NodePortLost = pps.pps, pps.wall, pps.lost
		if r.NodePortRPS, err = e.measureRequests(o); err != nil {
			tb.Fatalf("NodePort requests: %v", err)
		}
		if r.ConnectP50Seconds, r.ConnectP99Seconds, err = e.measureConnect(o); err != nil {
			tb.Fatalf("ClusterIP connects: %v", err)
		}
	})
	return r, err
}

func unixSecondsOf(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// startAgent runs the Weir agent in the node namespace against the
// cluster; cleanup stops it and detaches and unpins what it attached.
func (e *kpEnv) startAgent(tb *benchTB) {
	root := filepath.Join(e.pinRoot, "agent")
	logPath := filepath.Join(tb.TempDir(), "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+filepath.Join("/run/netns", e.node.Name), "--", e.self, "agent",
		"--kubeconfig", e.cluster.Kubeconfig, "--node-name", kpNodeName,
		// n0 takes the clients' packets, n1 the backends' replies to
		// SNAT flows; the SNAT address is the node's on the backends'
		// side.
		"--devices", "n0,n1", "--snat-ipv4", kpNode1.Addr().String(), "--xdp-mode", "native", "--bpf-root", root,
		"--cgroup-root", e.cgroup, "--socket-lb-host-netns-only",
		"--metrics-bind-address", "127.0.0.1:9963", "--healthz-bind-address", "127.0.0.1:10257",
		"--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a ^C reaches the benchmark, which stops it),
	// and it dies with the benchmark.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("start the Weir agent: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		// The agent leaves its programs attached by design: take them off.
		if err := cleanupRoot(root); err != nil {
			tb.Errorf("remove the agent's programs and pins under %s: %v", root, err)
		}
		if tb.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				tb.Logf("Weir agent log:\n%s", tailLines(string(b), 40))
			}
		}
	})
	select {
	case err := <-done:
		b, _ := os.ReadFile(logPath)
		tb.Fatalf("the Weir agent exited at once: %v\n%s", err, tailLines(string(b), 40))
	case <-time.After(200 * time.Millisecond):
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// kpFigures are the figures the ratios cover, with their getters.
var kpFigures = []struct {
	name string
	get  func(KubeProxyResult) float64
}{
	{"program_seconds", func(r KubeProxyResult) float64 { return r.ProgramSeconds }},
	{"sync_seconds", func(r KubeProxyResult) float64 { return r.SyncSeconds }},
	{"change_seconds", func(r KubeProxyResult) float64 { return r.ChangeSeconds }},
	{"nodeport_pps", func(r KubeProxyResult) float64 { return r.NodePortPPS }},
	{"nodeport_requests_per_second", func(r KubeProxyResult) float64 { return r.NodePortRPS }},
	{"clusterip_connect_p50_seconds", func(r KubeProxyResult) float64 { return r.ConnectP50Seconds }},
	{"clusterip_connect_p99_seconds", func(r KubeProxyResult) float64 { return r.ConnectP99Seconds }},
}

// addRatios fills the Weir rows' ratios to the kube-proxy rows of the
// same service count.
func addRatios(rs []KubeProxyResult) {
	for i := range rs {
		w := &rs[i]
		if w.Proxy != "weir" {
			continue
		}
		for _, k := range rs {
			if k.Proxy == "weir" || k.Services != w.Services {
				continue
			}
			ratios := map[string]float64{}
			for _, f := range kpFigures {
				if d := f.get(k); d > 0 {
					ratios[f.name] = f.get(*w) / d
				}
			}
			if w.Ratios == nil {
				w.Ratios = map[string]map[string]float64{}
			}
			w.Ratios[k.Proxy] = ratios
		}
	}
}

func writeKubeProxyTable(w io.Writer, rs []KubeProxyResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROXY\tSERVICES\tPROGRAM(s)\tSYNCS(ms)\tCHANGE(ms)\tNODEPORT(Mpps/CPU)\t(Mpps wall)\tREQ/S\tCONNECT p50(us)\tp99(us)\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.1f\t%.1f\t%.3f\t%.3f\t%.0f\t%.0f\t%.0f\t\n", r.Proxy, r.Services, r.ProgramSeconds, r.SyncSeconds*1e3,
			r.ChangeSeconds*1e3, r.NodePortPPS/1e6, r.NodePortWallPPS/1e6, r.NodePortRPS, r.ConnectP50Seconds*1e6, r.ConnectP99Seconds*1e6)
	}
	for _, r := range rs {
		for _, k := range slices.Sorted(maps.Keys(r.Ratios)) {
			q := r.Ratios[k]
			cell := func(name string) string {
				if v, ok := q[name]; ok {
					return fmt.Sprintf("%.3gx", v)
				}
				return "-"
			}
			fmt.Fprintf(tw, "weir/%s\t%d\t%s\t%s\t%s\t%s\t\t%s\t%s\t%s\t\n", k, r.Services, cell("program_seconds"), cell("sync_seconds"),
				cell("change_seconds"), cell("nodeport_pps"), cell("nodeport_requests_per_second"), cell("clusterip_connect_p50_seconds"), cell("clusterip_connect_p99_seconds"))
		}
	}
	return tw.Flush()
}

func writeKubeProxyCSV(w io.Writer, rs []KubeProxyResult) error {
	fmt.Fprintln(w, "proxy,services,program_seconds,sync_seconds,change_seconds,nodeport_pps,nodeport_pps_wall,nodeport_lost,nodeport_requests_per_second,clusterip_connect_p50_seconds,clusterip_connect_p99_seconds")
	for _, r := range rs {
		fmt.Fprintf(w, "%s,%d,%g,%g,%g,%g,%g,%d,%g,%g,%g\n", r.Proxy, r.Services, r.ProgramSeconds, r.SyncSeconds, r.ChangeSeconds,
			r.NodePortPPS, r.NodePortWallPPS, r.NodePortLost, r.NodePortRPS, r.ConnectP50Seconds, r.ConnectP99Seconds)
	}
	for _, r := range rs {
		for _, k := range slices.Sorted(maps.Keys(r.Ratios)) {
			q := r.Ratios[k]
			fmt.Fprintf(w, "weir/%s,%d,%g,%g,%g,%g,,,%g,%g,%g\n", k, r.Services, q["program_seconds"], q["sync_seconds"], q["change_seconds"],
				q["nodeport_pps"], q["nodeport_requests_per_second"], q["clusterip_connect_p50_seconds"], q["clusterip_connect_p99_seconds"])
		}
	}
	return nil
}
