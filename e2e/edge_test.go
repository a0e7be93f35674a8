package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// edgeConfig returns two services (one per family's VIP: a service has
// one VIP) with the given backends of the matching family.
func edgeConfig(mode string, port, backendPort int, proto string, backends []netip.Addr, extra string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, v6 := range []bool{false, true} {
		fam := "v4"
		if v6 {
			fam = "v6"
		}
		fmt.Fprintf(&b, "  - name: web-%s-%s\n    vip: %s\n    port: %d\n    protocol: %s\n    mode: %s\n%s    backends:\n",
			fam, strings.ToLower(proto), vip(v6), port, proto, mode, extra)
		for _, a := range backends {
			if a.Is6() == v6 {
				fmt.Fprintf(&b, "      - {address: %s, port: %d}\n", a, backendPort)
			}
		}
	}
	return b.String()
}

func allBackends(l *lab) []netip.Addr {
	var out []netip.Addr
	for i := range l.backends {
		out = append(out, backendAddr(i, false), backendAddr(i, true))
	}
	return out
}

// spread makes n requests from distinct client ports and counts answers
// per backend.
func spread(t *testing.T, l *lab, addr netip.AddrPort, n, basePort int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		name, err := l.request(addr, basePort+i, "/")
		if err != nil {
			t.Fatalf("request %d to %s: %v", i, addr, err)
		}
		got[name]++
	}
	return got
}

func TestEdgeDSR(t *testing.T) {
	for _, mode := range []string{"generic", "native"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 3)
			l.startBackendAgents(mode)
			if mode == "native" {
				// Native XDP_TX on a veth delivers only when the peer runs
				// XDP too: give the switch's port a pass-through one.
				l.start("sw-agent", l.switchHost(), "agent", "--devices", "p-lb", "--xdp-mode", "native",
					"--bpf-root", l.bpfRoot("sw"), "--metrics-bind-address", "", "--healthz-bind-address", "")
				time.Sleep(time.Second)
			}
			cfg := edgeConfig("dsr", 80, 80, "TCP", allBackends(l), "") +
				strings.TrimPrefix(edgeConfig("dsr", 5353, 5353, "UDP", allBackends(l), ""), "services:\n")
			l.startLB(cfg, mode)

			for _, v6 := range []bool{false, true} {
				addr := netip.AddrPortFrom(vip(v6), 80)
				_, lbTx0, _ := l.lb.LinkStats("eth0")
				clRx0, _, _ := l.client.LinkStats("eth0")
				got := spread(t, l, addr, 60, 41000)
				if len(got) != 3 {
					t.Errorf("%s: answers came from %v, want all 3 backends", addr, got)
				}
				_, lbTx1, _ := l.lb.LinkStats("eth0")
				clRx1, _, _ := l.client.LinkStats("eth0")
				// Replies (4 KiB each) go backend -> client; the LB only
				// forwards the client's small packets.
				if lbTx := lbTx1 - lbTx0; lbTx*2 > clRx1-clRx0 {
					t.Errorf("%s: the LB sent %d bytes while the client received %d: replies went through the LB", addr, lbTx, clRx1-clRx0)
				}

				uaddr := netip.AddrPortFrom(vip(v6), 5353)
				name, from, err := l.udpRequest(uaddr)
				if err != nil {
					t.Fatalf("UDP %s: %v", uaddr, err)
				}
				if from != uaddr || !strings.HasPrefix(name, "b") {
					t.Errorf("UDP %s: answer %q from %s, want a backend's name from the VIP", uaddr, name, from)
				}
			}
		})
	}
}

func TestEdgeSNAT(t *testing.T) {
	l := newLab(t, 2)
	// No decap on the backends: SNAT needs nothing there, and the backend
	// port differs from the VIP's.
	cfg := edgeConfig("snat", 80, 8080, "TCP", allBackends(l), "") +
		strings.TrimPrefix(edgeConfig("snat", 53, 5354, "UDP", allBackends(l), ""), "services:\n")
	l.startLB(cfg, "generic")
	for _, v6 := range []bool{false, true} {
		got := spread(t, l, netip.AddrPortFrom(vip(v6), 80), 40, 42000)
		if len(got) != 2 {
			t.Errorf("v6=%v: answers from %v, want both backends", v6, got)
		}
		uaddr := netip.AddrPortFrom(vip(v6), 53)
		name, from, err := l.udpRequest(uaddr)
		if err != nil {
			t.Fatalf("UDP %s: %v", uaddr, err)
		}
		if from != uaddr || !strings.HasPrefix(name, "b") {
			t.Errorf("UDP %s: answer %q from %s, want a backend's name from the VIP", uaddr, name, from)
		}
	}

	// The SNAT ports stay out of the node's ephemeral ports (the agent's
	// --snat-port-range auto), so no flow shares a source port with a
	// connection of the node's own.
	var eph []byte
	must(t, l.lb.Do(func() error {
		var err error
		eph, err = os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
		return err
	}))
	var lo, hi int
	if _, err := fmt.Sscan(string(eph), &lo, &hi); err != nil {
		t.Fatalf("ip_local_port_range %q: %v", eph, err)
	}
	var entries []struct {
		Mode     string `json:"mode"`
		SNATPort int    `json:"snat_port"`
	}
	must(t, json.Unmarshal([]byte(l.weir("inspect", "conntrack", "--bpf-root", l.bpfRoot("lb"), "-o", "json")), &entries))
	snat := 0
	for _, e := range entries {
		if e.Mode != "snat" {
			continue
		}
		snat++
		if e.SNATPort >= lo && e.SNATPort <= hi || e.SNATPort < 1024 {
			t.Errorf("SNAT port %d: inside the node's ephemeral ports %d-%d or below 1024", e.SNATPort, lo, hi)
		}
	}
	if snat == 0 {
		t.Error("no SNAT flow in weir inspect conntrack")
	}
}

func TestEdgeHybrid(t *testing.T) {
	l := newLab(t, 2)
	l.startBackendAgents("generic")
	cfg := edgeConfig("hybrid", 80, 80, "TCP", allBackends(l), "") +
		strings.TrimPrefix(edgeConfig("hybrid", 53, 5354, "UDP", allBackends(l), ""), "services:\n")
	l.startLB(cfg, "generic")
	addr := netip.AddrPortFrom(vip4, 80)
	if got := spread(t, l, addr, 20, 43000); len(got) != 2 {
		t.Errorf("TCP answers from %v, want both backends", got)
	}
	uaddr := netip.AddrPortFrom(vip4, 53)
	if _, from, err := l.udpRequest(uaddr); err != nil || from != uaddr {
		t.Errorf("UDP through SNAT: from %s, err %v", from, err)
	}
}

// TestEdgeLifecycle covers what an operator does to a running edge LB:
// inspection, a config change, a broken config, a failing backend, a
// backend change under a long connection, and an agent restart under
// traffic.
func TestEdgeLifecycle(t *testing.T) {
	l := newLab(t, 3)
	l.startBackendAgents("generic")
	two := []netip.Addr{backendAddr(0, false), backendAddr(1, false)}
	hc := "    health_check: {type: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}\n"
	l.startLB(edgeConfig("dsr", 80, 80, "TCP", two, hc), "generic")
	addr := netip.AddrPortFrom(vip4, 80)

	views := l.inspect()
	if len(views) != 2 {
		t.Fatalf("inspect: %d frontends, want 2: %+v", len(views), views)
	}
	v := views[0]
	if v.Service != "web-v4-tcp" || v.Frontend != "10.202.100.1:80/TCP" || v.Type != "EdgeVIP" || v.Scope != "external" || len(v.Backends) != 2 {
		t.Errorf("inspect: %+v", v)
	}

	t.Run("config change", func(t *testing.T) {
		l.writeConfig(edgeConfig("dsr", 80, 80, "TCP", []netip.Addr{backendAddr(0, false), backendAddr(1, false), backendAddr(2, false)}, hc))
		eventually(t, 10*time.Second, func() error {
			if n := len(l.inspect()[0].Backends); n != 3 {
				return fmt.Errorf("%d backends", n)
			}
			return nil
		})
		if got := spread(t, l, addr, 60, 44000); len(got) != 3 {
			t.Errorf("after adding b3, answers from %v", got)
		}
	})

	t.Run("broken config keeps serving", func(t *testing.T) {
		l.writeConfig("services:\n  - name: web-v4-tcp\n    vip: 10.202.100.1\n    port: 80\n    porto: TCP\n")
		eventually(t, 10*time.Second, func() error {
			code, body, err := l.healthz(l.lb)
			if err != nil {
				return err
			}
			if code != 503 || !strings.Contains(body, "porto") {
				return fmt.Errorf("healthz %d %s", code, body)
			}
			return nil
		})
		if n := len(l.inspect()[0].Backends); n != 3 {
			t.Errorf("a broken config changed the maps: %d backends", n)
		}
		if _, err := l.request(addr, 0, "/"); err != nil {
			t.Errorf("traffic after a broken config: %v", err)
		}
		l.writeConfig(edgeConfig("dsr", 80, 80, "TCP", []netip.Addr{backendAddr(0, false), backendAddr(1, false), backendAddr(2, false)}, hc))
		l.waitHealthy(l.lb)
	})

	t.Run("health check failover moves only the failed backend's flows", func(t *testing.T) {
		before := map[int]string{}
		for p := 45000; p < 45060; p++ {
			name, err := l.request(addr, p, "/")
			must(t, err)
			before[p] = name
		}
		l.stop("b2-http", syscall.SIGTERM)
		eventually(t, 10*time.Second, func() error {
			for _, b := range l.inspect()[0].Backends {
				if b.Address == backendAddr(1, false).String()+":80" && b.State == "quarantined" {
					return nil
				}
			}
			return fmt.Errorf("b2 not quarantined")
		})
		for p := 45000; p < 45060; p++ {
			name, err := l.request(addr, p, "/")
			if err != nil {
				t.Fatalf("flow from port %d (was on %s): %v", p, before[p], err)
			}
			if before[p] != "b2" && name != before[p] {
				t.Errorf("flow from port %d moved from %s to %s", p, before[p], name)
			}
			if name == "b2" {
				t.Errorf("flow from port %d still on the failed b2", p)
			}
		}
		l.startBackendServer(1)
		eventually(t, 10*time.Second, func() error {
			for _, b := range l.inspect()[0].Backends {
				if b.State != "active" {
					return fmt.Errorf("%s is %s", b.Address, b.State)
				}
			}
			return nil
		})
	})

	t.Run("backend change mid-stream", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := l.request(addr, 46000, "/slow?ms=2000")
			done <- err
		}()
		time.Sleep(300 * time.Millisecond)
		l.writeConfig(edgeConfig("dsr", 80, 80, "TCP", []netip.Addr{backendAddr(0, false), backendAddr(1, false), backendAddr(2, false), backendAddr(2, false).Next()}, hc))
		if err := <-done; err != nil {
			t.Errorf("long connection broken by a backend change: %v", err)
		}
		l.writeConfig(edgeConfig("dsr", 80, 80, "TCP", []netip.Addr{backendAddr(0, false), backendAddr(1, false), backendAddr(2, false)}, hc))
	})

	t.Run("restart under traffic", func(t *testing.T) {
		stopTraffic := make(chan struct{})
		failures := make(chan error, 1000)
		go func() {
			for p := 47000; ; p++ {
				select {
				case <-stopTraffic:
					close(failures)
					return
				default:
				}
				if _, err := l.request(addr, p, "/"); err != nil {
					failures <- fmt.Errorf("port %d: %w", p, err)
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		l.stop("lb-agent", syscall.SIGKILL)
		time.Sleep(500 * time.Millisecond) // traffic flows with no agent at all
		logPath := l.dir + "/lb-agent.log"
		l.start("lb-agent", l.lb, "agent", "--config", l.configPath(), "--devices", "eth0", "--xdp-mode", "generic",
			"--bpf-root", l.bpfRoot("lb"), "--metrics-bind-address", "", "--healthz-bind-address", "127.0.0.1:10256")
		l.waitHealthy(l.lb)
		time.Sleep(300 * time.Millisecond)
		close(stopTraffic)
		for err := range failures {
			t.Errorf("request failed across the restart: %v", err)
		}
		log, _ := os.ReadFile(logPath)
		if strings.Contains(string(log), "msg=synced") {
			t.Errorf("the restarted agent rewrote entries although nothing changed:\n%s", log)
		}
	})
}
