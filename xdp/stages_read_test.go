package xdp

import (
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
)

// TestReadStages: the stage bits read through the pinned link follow
// SetStage, and survive the Program's Close (the agent going away).
func TestReadStages(t *testing.T) {
	maps := mustMaps(t)
	ns := testutil.NewNetns(t, "wx-rst-")
	peer := testutil.NewNetns(t, "wx-rstp-")
	testutil.Veth(t, ns, "v0", netip.Prefix{}, peer, "v1", netip.Prefix{})
	p := mustLoad(t, Config{Maps: maps})
	ns.MustDo(t, func() error { return p.Attach("v0", Generic) })
	t.Cleanup(func() { _ = ns.Do(func() error { return p.Detach("v0") }) })
	pin := LinkPin(maps.Root(), "v0")

	want := map[Stage]bool{StagePolicy: false, StageOverlay: false, StageSourceRanges: true}
	got, err := ReadStages(pin)
	must(t, err)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("default stages %v, want %v", got, want)
	}
	must(t, p.SetStage(StageSourceRanges, false))
	must(t, p.SetStageProgram(StageOverlay, stageProg(t, newCounter(t), nil, -1, xdpPass)))
	must(t, p.SetStage(StageOverlay, true))
	want = map[Stage]bool{StagePolicy: false, StageOverlay: true, StageSourceRanges: false}
	if got, err = ReadStages(pin); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("after SetStage: %v (%v), want %v", got, err, want)
	}
	if !reflect.DeepEqual(p.Stages(), want) {
		t.Errorf("Program.Stages() %v disagrees with ReadStages %v", p.Stages(), want)
	}
	// The link pin holds the program after the agent's Close.
	must(t, p.Close())
	if got, err = ReadStages(pin); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("after Close: %v (%v), want %v", got, err, want)
	}
}

func TestReadStagesNoLink(t *testing.T) {
	root := testutil.BPFRoot(t)
	_, err := ReadStages(filepath.Join(root, "links", "xdp_nosuch0"))
	if err == nil || !strings.Contains(err.Error(), "xdp_nosuch0") {
		t.Errorf("missing pin: %v", err)
	}
}
