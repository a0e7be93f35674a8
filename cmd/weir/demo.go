package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/weir-lb/weir/internal/topo"
)

// The demo's addresses: one L2 segment (a bridge in its own namespace)
// joins the client, the load balancer and three backends, so a backend can
// answer the client directly (DSR) while requests reach it through the LB.
const (
	demoVIP      = "10.201.100.1"
	demoClient   = "10.201.0.10"
	demoLB       = "10.201.0.2"
	demoFlows    = 300
	demoBasePort = 40000
)

var demoBackends = []struct{ name, addr string }{
	{"b1", "10.201.0.11"}, {"b2", "10.201.0.12"}, {"b3", "10.201.0.13"},
}

type demo struct {
	self    string // path of this binary
	tmp     string
	topo    *topo.Topology
	hosts   map[string]*topo.Host
	procs   map[string]*proc
	roots   []string
	verbose bool
}

func runDemo(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	verbose := fs.BoolP("verbose", "v", false, "show the agents' logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and loads BPF programs: run it as root")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "weir-demo-")
	if err != nil {
		return err
	}
	d := &demo{
		self: self, tmp: tmp, verbose: *verbose,
		topo:  topo.New(fmt.Sprintf("weir-demo-%d-", os.Getpid())),
		hosts: map[string]*topo.Host{}, procs: map[string]*proc{},
	}
	defer d.cleanup()
	start := time.Now()
	if err := d.run(ctx); err != nil {
		return fmt.Errorf("demo failed: %w", err)
	}
	fmt.Printf("\nDemo passed in %.1fs. Cleaning up.\n", time.Since(start).Seconds())
	return nil
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func (d *demo) run(ctx context.Context) error {
	step("Building the topology (network namespaces, one bridge)")
	if err := d.build(); err != nil {
		return err
	}
	fmt.Printf("    client %s --+\n", demoClient)
	fmt.Printf("    lb     %s --+-- bridge    (weir agent: XDP on eth0, VIP %s:80, Maglev + DSR)\n", demoLB, demoVIP)
	for _, b := range demoBackends {
		fmt.Printf("    %s     %s --+             (weir agent: DSR decap; VIP on lo; HTTP on :80)\n", b.name, b.addr)
	}

	step("Starting backends and agents")
	for _, b := range demoBackends {
		if err := d.start(b.name+"-http", b.name, d.self, "demo-backend", "--name", b.name, "--listen", "0.0.0.0:80"); err != nil {
			return err
		}
		root := d.bpfRoot(b.name)
		if err := d.start(b.name+"-agent", b.name, d.self, "agent", "--devices", "eth0", "--xdp-mode", "generic",
			"--bpf-root", root, "--metrics-bind-address", "", "--healthz-bind-address", "127.0.0.1:10256"); err != nil {
			return err
		}
	}
	cfg := filepath.Join(d.tmp, "edge.yaml")
	if err := os.WriteFile(cfg, []byte(demoConfig()), 0o644); err != nil {
		return err
	}
	if err := d.start("lb-agent", "lb", d.self, "agent", "--config", cfg, "--devices", "eth0", "--xdp-mode", "generic",
		"--bpf-root", d.bpfRoot("lb"), "--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:9963"); err != nil {
		return err
	}
	for _, h := range append([]string{"lb"}, "b1", "b2", "b3") {
		if err := d.waitHealthy(ctx, h); err != nil {
			return err
		}
	}
	fmt.Println("    all agents report healthy")
	fmt.Printf("\n    edge config (%s):\n", cfg)
	for _, l := range strings.Split(strings.TrimSpace(demoConfig()), "\n") {
		fmt.Println("      " + l)
	}

	step("weir inspect services (read from the pinned maps)")
	out, err := exec.Command(d.self, "inspect", "services", "--bpf-root", d.bpfRoot("lb")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("inspect: %v: %s", err, out)
	}
	fmt.Print(indent(string(out)))

	step("Round 1: %d HTTP connections from fixed client ports to %s:80", demoFlows, demoVIP)
	lbRx0, lbTx0, _ := d.hosts["lb"].LinkStats("eth0")
	clRx0, _, _ := d.hosts["client"].LinkStats("eth0")
	round1, err := d.round(ctx)
	if err != nil {
		return err
	}
	spread := countBy(round1)
	printSpread(spread)
	for _, b := range demoBackends {
		if spread[b.name] == 0 {
			return fmt.Errorf("backend %s got no connection", b.name)
		}
	}
	lbRx1, lbTx1, _ := d.hosts["lb"].LinkStats("eth0")
	clRx1, _, _ := d.hosts["client"].LinkStats("eth0")
	clientMB := float64(clRx1-clRx0) / 1e6
	lbMB := float64(lbRx1-lbRx0) / 1e6
	step("Direct server return")
	fmt.Printf("    the client received %.1f MB of responses\n", clientMB)
	fmt.Printf("    the LB's eth0 received %.2f MB and sent %.2f MB in the same time\n", lbMB, float64(lbTx1-lbTx0)/1e6)
	if lbMB > clientMB/10 {
		return fmt.Errorf("the LB received %.2f MB for %.2f MB of responses: replies went through the LB", lbMB, clientMB)
	}
	fmt.Println("    => the backends answered the client directly; only requests crossed the LB")

	step("Stopping backend b2's HTTP server; the LB's health check (http /healthz every 500ms, fall 2) notices")
	if err := d.stop("b2-http"); err != nil {
		return err
	}
	t0 := time.Now()
	if err := d.waitState(ctx, demoBackends[1].addr+":80", "quarantined"); err != nil {
		return err
	}
	fmt.Printf("    b2 quarantined after %.1fs\n", time.Since(t0).Seconds())

	step("Round 2: the same %d client flows", demoFlows)
	round2, err := d.round(ctx)
	if err != nil {
		return err
	}
	printSpread(countBy(round2))
	moved, movedOther := 0, 0
	for port, b := range round1 {
		if round2[port] != b {
			moved++
			if b != "b2" {
				movedOther++
			}
		}
	}
	fmt.Printf("    flows that moved: %d (all %d of b2's); flows of b1 and b3 that moved: %d\n", moved, spread["b2"], movedOther)
	if movedOther != 0 || moved != spread["b2"] {
		return fmt.Errorf("Maglev moved %d flows that were not on b2", movedOther)
	}
	fmt.Println("    => only the failed backend's flows moved (Maglev + connection tracking)")
	return nil
}

func demoConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `services:
  - name: web
    vip: %s
    port: 80
    protocol: TCP
    mode: dsr
    maglev_table_size: 16381
    health_check: {type: http, path: /healthz, interval: 500ms, timeout: 400ms, rise: 2, fall: 2}
    backends:
`, demoVIP)
	for _, be := range demoBackends {
		fmt.Fprintf(&b, "      - {address: %s, port: 80}\n", be.addr)
	}
	return b.String()
}

func (d *demo) bpfRoot(host string) string {
	return filepath.Join("/sys/fs/bpf", d.hostName(host))
}

func (d *demo) hostName(h string) string { return d.hosts[h].Name }

func (d *demo) build() error {
	lan, err := d.topo.LAN(1600)
	if err != nil {
		return err
	}
	join := func(name, addr string, mtu int) (*topo.Host, error) {
		h, err := lan.Join(name, mtu, netip.MustParsePrefix(addr+"/24"))
		d.hosts[name] = h
		return h, err
	}
	client, err := join("client", demoClient, 1500)
	if err != nil {
		return err
	}
	if err := client.Route(netip.MustParsePrefix(demoVIP+"/32"), netip.MustParseAddr(demoLB), ""); err != nil {
		return err
	}
	// Clients reuse their ports in round 2.
	if err := client.Sysctl("net/ipv4/tcp_tw_reuse", "1"); err != nil {
		return err
	}
	// The IPIP packets are 20 bytes larger than the client's.
	lbHost, err := join("lb", demoLB, 1600)
	if err != nil {
		return err
	}
	// Encapsulated packets whose next hop isn't resolved yet are handed to
	// the kernel to forward (and resolve).
	if err := lbHost.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	for _, b := range demoBackends {
		h, err := join(b.name, b.addr, 1600)
		if err != nil {
			return err
		}
		if err := h.AddAddr("lo", netip.MustParsePrefix(demoVIP+"/32")); err != nil {
			return err
		}
	}
	return nil
}

// start runs a process inside a host; its output goes to a log file (and
// to the terminal with --verbose).
func (d *demo) start(name, host string, prog string, args ...string) error {
	cmd := d.hosts[host].Command(prog, args...)
	logf, err := os.Create(filepath.Join(d.tmp, name+".log"))
	if err != nil {
		return err
	}
	var w io.Writer = logf
	if d.verbose {
		w = io.MultiWriter(logf, prefixWriter(name))
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	d.procs[name] = p
	if strings.HasSuffix(name, "-agent") {
		d.roots = append(d.roots, d.bpfRoot(host))
	}
	return nil
}

// proc is a process the demo started, ended only by the demo, by PID.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (d *demo) stop(name string) error {
	p := d.procs[name]
	if p == nil {
		return nil
	}
	delete(d.procs, name)
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

func (d *demo) cleanup() {
	for name := range d.procs {
		_ = d.stop(name)
	}
	for _, r := range d.roots {
		if err := cleanupRoot(r); err != nil {
			fmt.Fprintf(os.Stderr, "cleanup %s: %v\n", r, err)
		}
	}
	if err := d.topo.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "cleanup: %v\n", err)
	}
	if !d.verbose {
		_ = os.RemoveAll(d.tmp)
	} else {
		fmt.Printf("logs kept in %s\n", d.tmp)
	}
}

// waitHealthy polls a host's agent /healthz until it answers 200.
func (d *demo) waitHealthy(ctx context.Context, host string) error {
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for name, p := range d.procs {
			if p.exited() {
				log, _ := os.ReadFile(filepath.Join(d.tmp, name+".log"))
				return fmt.Errorf("%s exited (%v); its log:\n%s", name, p.err, log)
			}
		}
		err := d.hosts[host].Do(func() error {
			status, body, err := topo.HTTPGet("127.0.0.1:10256", "/healthz", 2*time.Second)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("%d: %s", status, body)
			}
			return err
		})
		if err == nil {
			return nil
		}
		last = err.Error()
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(d.tmp, host+"-agent.log"))
	return fmt.Errorf("agent on %s not healthy after 20s (%s); its log:\n%s", host, last, log)
}

// waitState polls `weir inspect services -o json` until the backend has
// the given state.
func (d *demo) waitState(ctx context.Context, backend, state string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		out, err := exec.Command(d.self, "inspect", "services", "-o", "json", "--bpf-root", d.bpfRoot("lb")).Output()
		if err == nil {
			var views []ServiceView
			if json.Unmarshal(out, &views) == nil {
				for _, v := range views {
					for _, b := range v.Backends {
						if b.Address == backend && b.State == state {
							return nil
						}
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("backend %s did not become %s within 20s", backend, state)
}

// round makes demoFlows HTTP connections, each from its own fixed client
// port, and returns which backend answered each port.
func (d *demo) round(ctx context.Context) (map[int]string, error) {
	res := map[int]string{}
	var mu sync.Mutex
	var firstErr error
	ports := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		// Each worker locks its own thread into the client's namespace:
		// sockets are created in the namespace of the creating thread.
		go func() {
			defer wg.Done()
			err := d.hosts["client"].Do(func() error {
				for port := range ports {
					name, err := demoRequest(ctx, port)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = fmt.Errorf("flow from client port %d: %w", port, err)
					}
					res[port] = name
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				for range ports {
				}
			}
		}()
	}
	for p := demoBasePort; p < demoBasePort+demoFlows; p++ {
		ports <- p
	}
	close(ports)
	wg.Wait()
	return res, firstErr
}

// demoRequest runs on a thread in the client namespace: the dialer's
// socket is created there. Sockets stay in the namespace they were created
// in, so goroutines the dialer starts don't matter.
func demoRequest(ctx context.Context, port int) (string, error) {
	dialer := net.Dialer{
		Timeout:   3 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(demoClient), Port: port},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	var conn net.Conn
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		conn, err = dialer.DialContext(ctx, "tcp", demoVIP+":80")
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: web\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(string(body), "\n")
	return name, nil
}

func countBy(m map[int]string) map[string]int {
	c := map[string]int{}
	for _, v := range m {
		c[v]++
	}
	return c
}

func printSpread(c map[string]int) {
	names := make([]string, 0, len(c))
	total := 0
	for n, k := range c {
		names = append(names, n)
		total += k
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("    %-4s %4d connections (%4.1f%%) %s\n", n, c[n], 100*float64(c[n])/float64(total), strings.Repeat("#", c[n]/5))
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

func prefixWriter(name string) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Printf("    [%s] %s\n", name, sc.Text())
		}
	}()
	return pw
}
