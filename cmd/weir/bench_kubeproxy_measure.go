package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/xdp/xdpbench"
)

// metrics are one scrape of a Prometheus text endpoint: series (name and
// labels as printed) to value.
type metrics map[string]float64

// get returns a metric's IPv4 series when it has one (kube-proxy labels
// its sync metrics by family), else the unlabelled one.
func (m metrics) get(name string) (float64, bool) {
	if v, ok := m[name+`{ip_family="IPv4"}`]; ok {
		return v, true
	}
	v, ok := m[name]
	return v, ok
}

func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// httpIn returns a client whose connections are made inside ns.
func httpIn(ns *testutil.Netns) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

func scrape(c *http.Client, url string) (metrics, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// poll calls f every interval until it reports done, ctx ends or the
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		done, err := f()
		if done {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %s (last error: %v)", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ppsResult is the north-south packet rate through the node.
type ppsResult struct {
	pps, wall float64
	lost      uint64
}

// measurePPS sends UDP frames from the client to the NodePort with the
// live-frames generator and counts them at the backend's b0, where a sink
// is attached for the while.
func (e *kpEnv) measurePPS(o kpOptions) (ppsResult, error) {
	var sink *xdpbench.Sink
	e.backend.MustDo(e.tb, func() error {
		var err error
		sink, err = xdpbench.AttachSink(e.b0Index)
		return err
	})
	defer sink.Close()
	gen, err := xdpbench.NewGenerator(xdpbench.GeneratorConfig{Proto: "udp", SrcMAC: e.c0MAC, DstMAC: e.n0MAC,
		Src: kpClient0.Addr(), Dst: netip.AddrPortFrom(kpNode0.Addr(), kpNodePortUDP), Flows: o.flows})
	if err != nil {
		return ppsResult{}, err
	}
	defer gen.Close()
	send := func(n int) (stats xdpbench.SendStats, got uint64, err error) {
		a0, _, err := sink.Count()
		if err != nil {
			return stats, 0, err
		}
		err = e.client.Do(func() error {
			var err error
			stats, err = gen.Send(e.ctx, e.c0Index, n)
			return err
		})
		if err != nil {
			return stats, 0, err
		}
		a1, _, err := sink.Count()
		return stats, a1 - a0, err
	}
	// Warm up: conntrack entries (kube-proxy), flows (Weir).
	if _, _, err := send(2*o.flows + 64); err != nil {
		return ppsResult{}, err
	}
	var pps, wall, lost []float64
	for range o.runs {
		st, got, err := send(o.packets)
		if err != nil {
			return ppsResult{}, err
		}
		if got == 0 {
			return ppsResult{}, fmt.Errorf("none of %d frames to the NodePort reached the backend\n%s", o.packets, e.diagnostics())
		}
		pps = append(pps, float64(got)/st.CPU.Seconds())
		wall = append(wall, float64(got)/st.Wall.Seconds())
		lost = append(lost, float64(o.packets)-float64(got))
	}
	return ppsResult{pps: medianOf(pps), wall: medianOf(wall), lost: uint64(max(medianOf(lost), 0))}, nil
}

// probe runs `weir bench connect-probe` in ns (and, when cgroup is set,
// in that cgroup) with targets on stdin.
func (e *kpEnv) probe(ns *testutil.Netns, cgroup string, targets []string, args ...string) (*connectProbeResult, error) {
	cmd := exec.CommandContext(e.ctx, "nsenter", append([]string{"--net=" + filepath.Join("/run/netns", ns.Name), "--", e.self, "bench", "connect-probe"}, args...)...)
	cmd.Stdin = strings.NewReader(strings.Join(targets, "\n"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cgroup != "" {
		fd, err := unix.Open(cgroup, unix.O_DIRECTORY|unix.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", cgroup, err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("connect-probe in %s: %w\n%s", ns.Name, err, errb.String())
	}
	var r connectProbeResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("connect-probe output: %w\n%s", err, out.String())
	}
	return &r, nil
}

// measureConnect times connects from the node (in the benchmark's
// cgroup) to random ClusterIPs of all services.
func (e *kpEnv) measureConnect(o kpOptions) (p50, p99 float64, err error) {
	// svc-0 is the one the change gives an endpoint that doesn't exist.
	var targets []string
	for _, ip := range e.clusterIPs[1:] {
		targets = append(targets, ip.String()+":80")
	}
	r, err := e.probe(e.node, e.cgroup, targets, "--count", strconv.Itoa(o.connects))
	if err != nil {
		return 0, 0, err
	}
	if r.Failures > 0 {
		return 0, 0, fmt.Errorf("%d of %d connects to ClusterIPs failed (first: %s)\n%s", r.Failures, r.Connects, r.FirstError, e.diagnostics())
	}
	return percentile(r.Seconds, 0.50), percentile(r.Seconds, 0.99), nil
}

// measureRequests runs HTTP requests, one connection each, from the
// client to the NodePort for o.duration.
func (e *kpEnv) measureRequests(o kpOptions) (float64, error) {
	target := kpNode0.Addr().String() + ":" + strconv.Itoa(kpNodePortTCP)
	r, err := e.probe(e.client, "", []string{target}, "--http", "--duration", o.duration.String(), "--workers", strconv.Itoa(o.workers))
	if err != nil {
		return 0, err
	}
	if r.Failures > r.Connects/100 {
		return 0, fmt.Errorf("%d of %d requests to the NodePort failed (first: %s)\n%s", r.Failures, r.Connects, r.FirstError, e.diagnostics())
	}
	return float64(len(r.Seconds)) / o.duration.Seconds(), nil
}

func medianOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// diagnostics are the counters that say where packets went missing.
func (e *kpEnv) diagnostics() string {
	var b strings.Builder
	for _, ns := range []*testutil.Netns{e.client, e.node, e.backend} {
		out, _ := ns.Command("sh", "-c", "nstat -az 2>/dev/null | grep -E 'IpInReceives|IpForwDatagrams|IpOutNoRoutes|IpInAddrErrors|TcpExtListen|TcpAttemptFails|TcpExtTCPTimeouts|TcpRetransSegs|TcpExtPAWS|TcpExtTW|TcpInErrs|TcpOutRsts|UdpNoPorts|TcpExtTCPSynRetrans' | awk '$2 != 0'; conntrack -S 2>/dev/null | grep -v 'insert_failed=0 drop=0 early_drop=0' ").CombinedOutput()
		fmt.Fprintf(&b, "%s:\n%s", ns.Name, out)
	}
	return b.String()
}
