package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/internal/topo"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// weirBinary builds cmd/weir once per test run.
func weirBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "weir-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "weir")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/weir").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// lab is an edge topology on one LAN: a client, a load balancer and
// backends, each a namespace. Addresses: 10.202.0.0/24 and fd00:202::/64;
// the VIPs live in 10.202.100.0/24 and fd00:202:100::/64.
type lab struct {
	t        *testing.T
	bin      string
	topo     *topo.Topology
	client   *topo.Host
	lb       *topo.Host
	backends []*topo.Host
	dir      string
	procs    map[string]*process
}

var (
	vip4 = netip.MustParseAddr("10.202.100.1")
	vip6 = netip.MustParseAddr("fd00:202:100::1")
)

func clientAddr(v6 bool) netip.Addr { return pick(v6, "10.202.0.10", "fd00:202::10") }
func lbAddr(v6 bool) netip.Addr     { return pick(v6, "10.202.0.2", "fd00:202::2") }
func backendAddr(i int, v6 bool) netip.Addr {
	return pick(v6, fmt.Sprintf("10.202.0.%d", 11+i), fmt.Sprintf("fd00:202::%d", 11+i))
}
func vip(v6 bool) netip.Addr {
	if v6 {
		return vip6
	}
	return vip4
}

func pick(v6 bool, a4, a6 string) netip.Addr {
	if v6 {
		return netip.MustParseAddr(a6)
	}
	return netip.MustParseAddr(a4)
}

func prefix(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(a, 24)
	}
	return netip.PrefixFrom(a, 64)
}

// newLab builds the topology with n backends; each backend has both VIPs
// on lo (for DSR) and runs the demo backend (HTTP on :80 and :8080, UDP
// on the VIPs' port 5353 and on its own address's port 5353).
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	testutil.RequirePrivileged(t)
	l := &lab{t: t, bin: weirBinary(t), dir: t.TempDir(), procs: map[string]*process{}}
	l.topo = topo.New(testutil.RandomName("we2e-") + "-")
	t.Cleanup(func() {
		l.stopAll()
		if err := l.topo.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	lan, err := l.topo.LAN(1600)
	must(t, err)
	join := func(name string, mtu int, v4, v6 netip.Addr) *topo.Host {
		h, err := lan.Join(name, mtu, prefix(v4), prefix(v6))
		must(t, err)
		return h
	}
	l.client = join("client", 1500, clientAddr(false), clientAddr(true))
	must(t, l.client.Route(netip.MustParsePrefix("10.202.100.0/24"), lbAddr(false), ""))
	must(t, l.client.Route(netip.MustParsePrefix("fd00:202:100::/64"), lbAddr(true), ""))
	l.lb = join("lb", 1600, lbAddr(false), lbAddr(true))
	must(t, l.lb.Sysctl("net/ipv4/ip_forward", "1"))
	must(t, l.lb.Sysctl("net/ipv6/conf/all/forwarding", "1"))
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("b%d", i+1)
		h := join(name, 1600, backendAddr(i, false), backendAddr(i, true))
		must(t, h.AddAddr("lo", netip.PrefixFrom(vip4, 32)))
		must(t, h.AddAddr("lo", netip.PrefixFrom(vip6, 128)))
		l.backends = append(l.backends, h)
		l.startBackendServer(i)
	}
	return l
}

// startBackendServer runs backend i's HTTP and UDP servers.
func (l *lab) startBackendServer(i int) {
	name := fmt.Sprintf("b%d", i+1)
	l.start(name+"-http", l.backends[i], "demo-backend", "--name", name, "--listen", "[::]:80", "--size", "4096",
		"--udp", netip.AddrPortFrom(vip4, 5353).String())
	l.start(name+"-http8080", l.backends[i], "demo-backend", "--name", name, "--listen", "[::]:8080", "--size", "4096",
		"--udp", "[::]:5354")
	l.start(name+"-udp6", l.backends[i], "demo-backend", "--name", name, "--listen", "127.0.0.1:0",
		"--udp", netip.AddrPortFrom(vip6, 5353).String())
}

// process is something the lab started, ended only by the lab, by PID.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func (l *lab) start(name string, h *topo.Host, args ...string) *process {
	l.t.Helper()
	// A restarted process replaces the old one, which must not linger.
	l.stop(name, syscall.SIGTERM)
	logf, err := os.Create(filepath.Join(l.dir, name+".log"))
	must(l.t, err)
	cmd := h.Command(l.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	must(l.t, cmd.Start())
	p := &process{cmd: cmd, done: make(chan struct{}), log: logf}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	l.procs[name] = p
	return p
}

func (l *lab) stop(name string, sig syscall.Signal) {
	p := l.procs[name]
	if p == nil {
		return
	}
	delete(l.procs, name)
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

func (l *lab) stopAll() {
	for name := range l.procs {
		l.stop(name, syscall.SIGTERM)
	}
	entries, _ := os.ReadDir("/sys/fs/bpf")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.rootPrefix()) {
			out, err := exec.Command(l.bin, "cleanup", "--bpf-root", filepath.Join("/sys/fs/bpf", e.Name())).CombinedOutput()
			if err != nil {
				l.t.Errorf("weir cleanup %s: %v: %s", e.Name(), err, out)
			}
		}
	}
	if l.t.Failed() {
		logs, _ := filepath.Glob(filepath.Join(l.dir, "*.log"))
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			l.t.Logf("--- %s ---\n%s", filepath.Base(f), b)
		}
	}
}

func (l *lab) rootPrefix() string { return strings.TrimSuffix(l.topo.Prefix(), "-") }

func (l *lab) bpfRoot(host string) string {
	return filepath.Join("/sys/fs/bpf", l.rootPrefix()+"-"+host)
}

// startBackendAgents runs the decap-only agent on every backend.
func (l *lab) startBackendAgents(xdpMode string) {
	for i, h := range l.backends {
		name := fmt.Sprintf("b%d", i+1)
		l.start(name+"-agent", h, "agent", "--devices", "eth0", "--xdp-mode", xdpMode,
			"--bpf-root", l.bpfRoot(name), "--metrics-bind-address", "", "--healthz-bind-address", "127.0.0.1:10256")
		l.waitHealthy(h)
	}
}

// startLB writes the config and runs the load balancer's agent.
func (l *lab) startLB(config, xdpMode string, extra ...string) {
	l.writeConfig(config)
	args := append([]string{"agent", "--config", l.configPath(), "--devices", "eth0", "--xdp-mode", xdpMode,
		"--bpf-root", l.bpfRoot("lb"), "--metrics-bind-address", "127.0.0.1:9963", "--healthz-bind-address", "127.0.0.1:10256"}, extra...)
	l.start("lb-agent", l.lb, args...)
	l.waitHealthy(l.lb)
}

func (l *lab) configPath() string { return filepath.Join(l.dir, "edge.yaml") }

// writeConfig replaces the config file the way editors do (write a
// temporary file, rename it over the old one).
func (l *lab) writeConfig(config string) {
	tmp := l.configPath() + ".tmp"
	must(l.t, os.WriteFile(tmp, []byte(config), 0o644))
	must(l.t, os.Rename(tmp, l.configPath()))
}

// healthz fetches an agent's /healthz from inside its namespace.
func (l *lab) healthz(h *topo.Host) (int, string, error) {
	var code int
	var body string
	err := h.Do(func() error {
		var err error
		code, body, err = topo.HTTPGet("127.0.0.1:10256", "/healthz", time.Second)
		return err
	})
	return code, body, err
}

func (l *lab) waitHealthy(h *topo.Host) {
	l.t.Helper()
	eventually(l.t, 20*time.Second, func() error {
		code, body, err := l.healthz(h)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("healthz %d: %s", code, body)
		}
		return nil
	})
}

// inspect runs `weir inspect services -o json` against the LB's maps.
func (l *lab) inspect() []serviceView {
	l.t.Helper()
	out, err := exec.Command(l.bin, "inspect", "services", "-o", "json", "--bpf-root", l.bpfRoot("lb")).Output()
	must(l.t, err)
	var views []serviceView
	must(l.t, json.Unmarshal(out, &views))
	return views
}

// serviceView is the documented JSON of `weir inspect services -o json`.
type serviceView struct {
	Service  string `json:"service"`
	Port     string `json:"port"`
	Frontend string `json:"frontend"`
	Type     string `json:"type"`
	Scope    string `json:"scope"`
	Backends []struct {
		Address string `json:"address"`
		State   string `json:"state"`
		Weight  int    `json:"weight"`
	} `json:"backends"`
}

// request makes one HTTP request to addr from the client, from a fixed
// source port when port != 0, and returns the backend's name.
func (l *lab) request(addr netip.AddrPort, port int, path string) (string, error) {
	var name string
	err := l.client.Do(func() error {
		var err error
		name, err = httpName(addr, port, path)
		return err
	})
	return name, err
}

// udpRequest sends one datagram to addr from the client and returns the
// answer (the backend's name), and the address the answer came from.
func (l *lab) udpRequest(addr netip.AddrPort) (string, netip.AddrPort, error) {
	var name string
	var from netip.AddrPort
	err := l.client.Do(func() error {
		conn, err := net.ListenUDP("udp", nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.WriteToUDPAddrPort([]byte("who"), addr); err != nil {
			return err
		}
		buf := make([]byte, 256)
		n, src, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		name, from = string(buf[:n]), netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		return nil
	})
	return name, from, err
}

// httpName must run on a thread in the client's namespace.
func httpName(addr netip.AddrPort, port int, path string) (string, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	if port != 0 {
		d.LocalAddr = &net.TCPAddr{Port: port}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
		}
	}
	conn, err := d.DialContext(context.Background(), "tcp", addr.String())
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: web\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read body after %d bytes: %w", len(body), err)
	}
	name, _, _ := strings.Cut(string(body), "\n")
	return name, nil
}

func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("not within %s: %v", timeout, err)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// switchHost is the LAN's switch namespace.
func (l *lab) switchHost() *topo.Host { return l.topo.Hosts()[0] }

// httpGet is topo.HTTPGet: one GET dialled from the calling thread.
func httpGet(addr, path string, timeout time.Duration) (int, string, error) {
	return topo.HTTPGet(addr, path, timeout)
}
