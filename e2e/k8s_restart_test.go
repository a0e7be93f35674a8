package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/weir-lb/weir/e2e/kube"
)

// k8sTraffic makes back-to-back HTTP requests (a new connection each) to
// a frontend from the client until stopped, and records every failure.
type k8sTraffic struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	ok    int
	fails []string
	names map[string]int
}

func startK8sTraffic(k *k8sLab, addr netip.AddrPort) *k8sTraffic {
	tr := &k8sTraffic{stopc: make(chan struct{}), done: make(chan struct{}), names: map[string]int{}}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stopc:
				return
			default:
			}
			name, err := k.request(addr, 0, "/")
			tr.mu.Lock()
			if err != nil {
				tr.fails = append(tr.fails, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			} else {
				tr.ok++
				tr.names[name]++
			}
			tr.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	k.t.Cleanup(tr.stop)
	return tr
}

func (tr *k8sTraffic) stop() {
	select {
	case <-tr.stopc:
	default:
		close(tr.stopc)
	}
	<-tr.done
}

// snapshot returns the successes and failures so far.
func (tr *k8sTraffic) snapshot() (int, []string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.ok, append([]string(nil), tr.fails...)
}

// waitMore waits until n more requests succeeded (10 s).
func (tr *k8sTraffic) waitMore(t *testing.T, n int) {
	t.Helper()
	ok0, _ := tr.snapshot()
	eventually(t, 10*time.Second, func() error {
		if ok, _ := tr.snapshot(); ok < ok0+n {
			return fmt.Errorf("only %d of %d more requests succeeded", ok-ok0, n)
		}
		return nil
	})
}

// TestK8sAgentRestart kills the agent with SIGKILL under continuous
// NodePort traffic (XDP on the node's uplink) and restarts it: no request
// may fail, and a service deleted while the agent was down must be gone
// after the restart's resync.
//
// Then the API server outage: the apiserver can't be stopped and started
// again mid-test (kube.Cluster has no restart), so the node is cut off
// from it instead, with a blackhole route to its address inside the
// node's namespace. While cut off the agent is killed and restarted (it
// can't sync); traffic must keep flowing on the programmed state, and once
// the route is gone the agent must sync and become healthy.
func TestK8sAgentRestart(t *testing.T) {
	k := newK8sLab(t, 2)
	b1, b2 := backendAddr(0, false), backendAddr(1, false)
	web := kube.Service("e2e", "web", kube.Port(corev1.ProtocolTCP, 80, 8080))
	web.Spec.Type = corev1.ServiceTypeNodePort
	web = k.createService(web)
	k.applySlice(kube.EndpointSlice(web, "web-1", b1, b2))
	gone := k.createService(kube.Service("e2e", "gone", kube.Port(corev1.ProtocolTCP, 80, 8080)))
	k.applySlice(kube.EndpointSlice(gone, "gone-1", b1))
	goneFE := frontendOf(netip.MustParseAddr(gone.Spec.ClusterIP), 80, corev1.ProtocolTCP)

	k.startAgent()
	k.waitInspect(func(m map[string]serviceView) error {
		if _, ok := m[goneFE]; !ok {
			return fmt.Errorf("%s not programmed yet", goneFE)
		}
		return nil
	})

	tr := startK8sTraffic(k, netip.AddrPortFrom(k.nodeIP, uint16(web.Spec.Ports[0].NodePort)))
	tr.waitMore(t, 20)

	// kill -9; change the cluster while the agent is down; restart.
	k.stop("agent", syscall.SIGKILL)
	k.deleteService("e2e", "gone")
	tr.waitMore(t, 20)
	k.startAgent()
	k.waitInspect(func(m map[string]serviceView) error {
		if v, ok := m[goneFE]; ok {
			return fmt.Errorf("stale frontend %s of deleted %s after the restart", goneFE, v.Service)
		}
		return nil
	})
	tr.waitMore(t, 20)
	if ok, fails := tr.snapshot(); len(fails) > 0 {
		t.Errorf("agent restart: %d requests failed (of %d): %v", len(fails), ok+len(fails), fails)
	}

	// API server outage.
	api := k.c.Addr.Addr()
	route := &netlink.Route{
		Dst:  &net.IPNet{IP: api.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Type: syscall.RTN_BLACKHOLE,
	}
	must(t, k.lb.Link.RouteAdd(route))
	cut := true
	restore := func() {
		if cut {
			cut = false
			must(t, k.lb.Link.RouteDel(route))
		}
	}
	t.Cleanup(restore)
	tr.waitMore(t, 20)
	k.stop("agent", syscall.SIGKILL)
	k.start("agent", k.lb, k.agentArgs()...)
	// Unhealthy (it can't list anything), but serving.
	time.Sleep(2 * time.Second)
	if code, body, err := k.healthz(k.lb); err == nil && code == 200 {
		t.Errorf("agent cut off from the apiserver reports healthy: %s", body)
	}
	tr.waitMore(t, 50)
	restore()
	k.waitHealthy(k.lb)
	tr.waitMore(t, 20)
	tr.stop()
	ok, fails := tr.snapshot()
	if len(fails) > 0 {
		t.Errorf("%d requests failed (of %d): %v", len(fails), ok+len(fails), fails)
	}
	if len(tr.names) != 2 {
		t.Errorf("answers came from %v, want b1 and b2", tr.names)
	}
	t.Logf("%d requests, all answered: %v", ok, tr.names)
}
