package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// TestObserveDropEvents: `weir observe -o json` shows each drop with its
// reason, 5-tuple, device and service, through its filters; the drops
// are in the ring buffer before it starts, so --backlog makes this
// deterministic.
func TestObserveDropEvents(t *testing.T) {
	l := newLab(t, 1)
	l.startBackendAgents("generic")
	l.startLB(obsConfig(l, ""), "generic", "--new-flow-sample", "1")
	l.sendUDP(dnsVIP, portRange(obsClientPortMin, 3), true) // new flows: not drops
	const m = 6
	ports := portRange(obsClientPortMin+100, m)
	l.sendUDP(blockedVIP, ports, false)

	o := l.startObserve("--backlog", "--reason", "source_range", "--service", "blocked",
		"--address", "10.202.0.0/24", "--count", fmt.Sprint(m), "--timeout", "20s")
	o.wait(t, 30*time.Second)
	evs := o.events(t)
	if len(evs) != m {
		t.Fatalf("%d events, want %d: %+v", len(evs), m, evs)
	}
	var gotSrc, wantSrc []string
	for _, p := range ports {
		wantSrc = append(wantSrc, fmt.Sprintf("%s:%d", clientAddr(false), p))
	}
	for _, e := range evs {
		gotSrc = append(gotSrc, e.Src)
		if e.Type != "drop" || e.Reason != "source_range" || e.Proto != "UDP" || e.Dst != blockedVIP.String() ||
			e.Device != "eth0" || e.Service != "blocked" || e.Backend != "" {
			t.Errorf("event %+v", e)
		}
		if time.Since(e.Time) > time.Minute || time.Until(e.Time) > time.Second {
			t.Errorf("event time %v is not about now", e.Time)
		}
	}
	sort.Strings(gotSrc)
	if fmt.Sprint(gotSrc) != fmt.Sprint(wantSrc) {
		t.Errorf("sources %v, want %v", gotSrc, wantSrc)
	}
}

// TestObserveNewFlows: without --backlog only events after the start
// are shown; sampled new flows carry the chosen backend.
func TestObserveNewFlows(t *testing.T) {
	l := newLab(t, 1)
	l.startBackendAgents("generic")
	l.startLB(obsConfig(l, ""), "generic", "--new-flow-sample", "1")
	l.sendUDP(dnsVIP, portRange(obsClientPortMin, 5), true) // before: not shown

	const want = 3
	o := l.startObserve("--type", "new-flow", "--count", fmt.Sprint(want), "--timeout", "20s")
	// The observer's start is not signalled: send new flows until it has
	// seen enough of them.
	first := obsClientPortMin + 1000
	sent := 0
	for done := false; !done; {
		select {
		case <-o.done:
			done = true
		case <-time.After(200 * time.Millisecond):
			if sent > 100 {
				t.Fatal("weir observe saw too few of 100 new flows")
			}
			l.sendUDP(dnsVIP, []int{first + sent}, true)
			sent++
		}
	}
	o.wait(t, time.Second)
	evs := o.events(t)
	if len(evs) != want {
		t.Fatalf("%d events, want %d: %+v", len(evs), want, evs)
	}
	for _, e := range evs {
		var port int
		if _, err := fmt.Sscanf(e.Src, clientAddr(false).String()+":%d", &port); err != nil || port < first {
			t.Errorf("event %+v: not one of the flows sent after the start", e)
		}
		if e.Type != "new_flow" || e.Reason != "" || e.Service != "dns" || e.Dst != dnsVIP.String() ||
			e.Backend != backendAddr(0, false).String()+":5353" || e.Device != "eth0" {
			t.Errorf("event %+v", e)
		}
	}
}
