package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/bpf"
)

// fakeNames resolves a fixed set of IDs.
type fakeNames struct{}

func (fakeNames) service(id uint32) (string, bool) {
	switch id {
	case 1:
		return "web", true
	case 2:
		return "shop/cart:http", true
	}
	return "", false
}

func (fakeNames) backend(id uint32) (netip.AddrPort, bool) {
	if id == 7 {
		return netip.MustParseAddrPort("10.1.0.7:8080"), true
	}
	return netip.AddrPort{}, false
}

func (fakeNames) device(ifindex uint32) string {
	if ifindex == 2 {
		return "eth0"
	}
	return "if99"
}

var obsTime = time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)

func dropEvent(src string, reason bpf.Reason, sid uint32) bpf.Event {
	ap := netip.MustParseAddrPort(src)
	return bpf.Event{
		Type: bpf.EventDrop, Reason: uint8(reason), Proto: 17, Ifindex: 2, ServiceID: sid,
		Saddr: bpf.AddrFrom(ap.Addr()), Sport: bpf.PortFrom(ap.Port()),
		Daddr: bpf.AddrFrom(netip.MustParseAddr("10.0.0.1")), Dport: bpf.PortFrom(53),
	}
}

func flowEvent() bpf.Event {
	return bpf.Event{
		Type: bpf.EventNewFlow, Proto: 6, Ifindex: 2, ServiceID: 2, BackendID: 7,
		Saddr: bpf.AddrFrom(netip.MustParseAddr("fd00::5")), Sport: bpf.PortFrom(40000),
		Daddr: bpf.AddrFrom(netip.MustParseAddr("fd00::1")), Dport: bpf.PortFrom(80),
	}
}

func TestEventView(t *testing.T) {
	ev := dropEvent("192.0.2.1:1234", bpf.ReasonSourceRange, 1)
	v := eventView(&ev, obsTime, fakeNames{})
	b, err := json.Marshal(v)
	obsMust(t, err)
	want := `{"time":"2025-01-02T03:04:05.000006Z","type":"drop","reason":"source_range","proto":"UDP","src":"192.0.2.1:1234","dst":"10.0.0.1:53","device":"eth0","ifindex":2,"service":"web"}`
	if string(b) != want {
		t.Errorf("drop\n got %s\nwant %s", b, want)
	}

	ev = flowEvent()
	v = eventView(&ev, obsTime, fakeNames{})
	b, _ = json.Marshal(v)
	want = `{"time":"2025-01-02T03:04:05.000006Z","type":"new_flow","proto":"TCP","src":"[fd00::5]:40000","dst":"[fd00::1]:80","device":"eth0","ifindex":2,"service":"shop/cart:http","backend":"10.1.0.7:8080"}`
	if string(b) != want {
		t.Errorf("new flow\n got %s\nwant %s", b, want)
	}

	// A malformed packet: nothing parsed, nothing known.
	ev = bpf.Event{Type: bpf.EventDrop, Reason: uint8(bpf.ReasonMalformed), Ifindex: 5, ServiceID: 9, BackendID: 9}
	v = eventView(&ev, obsTime, fakeNames{})
	if v.Src != "" || v.Dst != "" || v.Device != "if99" || v.Service != "service#9" || v.Backend != "backend#9" || v.Reason != "malformed" {
		t.Errorf("malformed: %+v", v)
	}
}

func TestEventFilter(t *testing.T) {
	drop := dropEvent("192.0.2.1:1234", bpf.ReasonSourceRange, 1)
	other := dropEvent("198.51.100.1:1", bpf.ReasonNoBackend, 2)
	flow := flowEvent()
	events := map[string]bpf.Event{"drop": drop, "other": other, "flow": flow}
	for _, tc := range []struct {
		name                                string
		services, reasons, types, addresses []string
		want                                []string
	}{
		{name: "everything", want: []string{"drop", "flow", "other"}},
		{name: "reason", reasons: []string{"source_range"}, want: []string{"drop"}},
		{name: "two reasons", reasons: []string{"source_range", "no_backend"}, want: []string{"drop", "other"}},
		{name: "type drop", types: []string{"drop"}, want: []string{"drop", "other"}},
		{name: "type new-flow", types: []string{"new-flow"}, want: []string{"flow"}},
		{name: "edge service", services: []string{"web"}, want: []string{"drop"}},
		{name: "service without port", services: []string{"shop/cart"}, want: []string{"flow", "other"}},
		{name: "service with port", services: []string{"shop/cart:http"}, want: []string{"flow", "other"}},
		{name: "client address", addresses: []string{"192.0.2.1"}, want: []string{"drop"}},
		{name: "frontend CIDR", addresses: []string{"10.0.0.0/24"}, want: []string{"drop", "other"}},
		{name: "backend address", addresses: []string{"10.1.0.7"}, want: []string{"flow"}},
		{name: "IPv6 CIDR", addresses: []string{"fd00::/64"}, want: []string{"flow"}},
		{name: "all flags", services: []string{"shop/cart"}, types: []string{"drop"}, addresses: []string{"198.51.100.0/24"}, want: []string{"other"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := newEventFilter(tc.services, tc.reasons, tc.types, tc.addresses)
			obsMust(t, err)
			var got []string
			for _, name := range []string{"drop", "flow", "other"} {
				ev := events[name]
				if v := eventView(&ev, obsTime, fakeNames{}); f.match(&v) {
					got = append(got, name)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("matched %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range [][4][]string{{nil, {"nope"}, nil, nil}, {nil, nil, {"flows"}, nil}, {nil, nil, nil, {"10.0.0.300"}}} {
		if _, err := newEventFilter(bad[0], bad[1], bad[2], bad[3]); err == nil {
			t.Errorf("filter %v accepted", bad)
		}
	}
}

func TestEventPrinter(t *testing.T) {
	var out bytes.Buffer
	p := &eventPrinter{w: &out}
	drop := dropEvent("192.0.2.1:1234", bpf.ReasonSourceRange, 1)
	v := eventView(&drop, obsTime, fakeNames{})
	obsMust(t, p.print(&v))
	obsMust(t, p.print(&EventView{Time: obsTime, Type: "lost", Lost: 12}))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, want := range [][]string{
		{"TIME", "TYPE", "REASON", "SOURCE", "DESTINATION", "DEVICE", "SERVICE", "BACKEND"},
		{"03:04:05.000006", "drop", "source_range", "UDP", "192.0.2.1:1234", "10.0.0.1:53", "eth0", "web", "-"},
		{"lost", "12 events"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}

	out.Reset()
	p = &eventPrinter{w: &out, json: true}
	obsMust(t, p.print(&v))
	obsMust(t, p.print(&EventView{Time: obsTime, Type: "lost", Lost: 12}))
	dec := json.NewDecoder(&out)
	var first, second map[string]any
	obsMust(t, dec.Decode(&first))
	obsMust(t, dec.Decode(&second))
	if first["reason"] != "source_range" || second["type"] != "lost" || second["lost"] != float64(12) {
		t.Errorf("JSON lines: %v / %v", first, second)
	}
}
