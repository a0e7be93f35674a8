package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

func TestInspectStats(t *testing.T) {
	m := mustTestMaps(t)
	ids := obsService(t, m, 1, "web", "", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:80")
	setPerCPU(t, m.ServiceStats, 1, 9, 900)
	setPerCPU(t, m.BackendStats, uint32(ids[0]), 9, 900)
	setPerCPU(t, m.Drops, uint32(bpf.ReasonNoBackend), 2, 120)

	var out bytes.Buffer
	obsMust(t, inspectStats(&out, m, true))
	var snap statsSnapshot
	obsMust(t, json.Unmarshal(out.Bytes(), &snap))
	if len(snap.Services) != 1 || snap.Services[0] != (serviceStats{Service: "web", Scope: "external", Packets: 9, Bytes: 900}) {
		t.Errorf("services %+v", snap.Services)
	}
	if len(snap.Backends) != 1 || snap.Backends[0] != (backendStats{Service: "web", Scope: "external", Backend: "10.1.0.1:80", Packets: 9, Bytes: 900}) {
		t.Errorf("backends %+v", snap.Backends)
	}
	if len(snap.Drops) != len(bpf.Reasons())-1 {
		t.Errorf("%d drop reasons, want every reason but none", len(snap.Drops))
	}
	for _, d := range snap.Drops {
		if want := (d.Reason == "no_backend"); want != (d.Packets == 2 && d.Bytes == 120) {
			t.Errorf("drops %+v", d)
		}
	}

	out.Reset()
	obsMust(t, inspectStats(&out, m, false))
	for _, want := range []string{"SERVICE", "web", "10.1.0.1:80", "no_backend", "events lost: 0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
