package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/xdp"
)

func TestInspectStages(t *testing.T) {
	m := mustTestMaps(t)
	var out bytes.Buffer
	obsMust(t, inspectStages(&out, m.Root(), false))
	if !strings.Contains(out.String(), "no XDP links") {
		t.Errorf("without links: %q", out.String())
	}
	if err := inspectStages(&out, filepath.Join(m.Root(), "nosuch"), false); err == nil {
		t.Error("a missing root is no error")
	}

	ns := testutil.NewNetns(t, "wcmd-stg-")
	peer := testutil.NewNetns(t, "wcmd-stgp-")
	testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
	prog, err := xdp.Load(xdp.Config{Maps: m})
	obsMust(t, err)
	t.Cleanup(func() { prog.Close() })
	ns.MustDo(t, func() error { return prog.Attach("v0", xdp.Generic) })
	t.Cleanup(func() { _ = ns.Do(func() error { return prog.Detach("v0") }) })
	obsMust(t, prog.SetStage(xdp.StageSourceRanges, false))

	out.Reset()
	obsMust(t, inspectStages(&out, m.Root(), true))
	var views []StagesView
	obsMust(t, json.Unmarshal(out.Bytes(), &views))
	if len(views) != 1 {
		t.Fatalf("views %+v", views)
	}
	v := views[0]
	if v.Device != "v0" || !v.Attached || v.Ifindex == 0 || v.ProgramID == 0 || v.LinkID == 0 {
		t.Errorf("view %+v", v)
	}
	want := map[string]bool{"policy": false, "overlay": false, "source-ranges": false}
	for s, on := range want {
		if got, ok := v.Stages[s]; !ok || got != on {
			t.Errorf("stage %s: %v (listed %v), want %v", s, got, ok, on)
		}
	}

	out.Reset()
	obsMust(t, inspectStages(&out, m.Root(), false))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "SOURCE-RANGES") || !strings.HasPrefix(lines[1], "v0") || !strings.Contains(lines[1], "off") {
		t.Errorf("table:\n%s", out.String())
	}
}
