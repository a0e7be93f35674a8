package bpf

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// batchState is n services' worth of backends, frontends and keys, more
// than one batch chunk of backends.
func batchState(n int) *lb.DatapathState {
	s := lb.NewDatapathState()
	for i := 1; i <= n; i++ {
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		s.Frontends[lb.FrontendID(i)] = lb.FrontendEntry{ServiceID: lb.ServiceID(i), Addr: vip, Port: 80, Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindClusterIP, Service: fmt.Sprintf("ns/svc-%d", i), PortName: "http"}
		s.Services[lb.ServiceKey{Addr: vip, Port: 80, Protocol: lb.TCP, Scope: lb.ScopeInternal}] = lb.ServiceEntry{
			ServiceID: lb.ServiceID(i), FrontendID: lb.FrontendID(i), Backends: 3, TableSize: 251, TableGen: uint8(i & 1)}
		for j := range 3 {
			id := lb.BackendID(3*i + j)
			s.Backends[id] = lb.BackendEntry{ServiceID: lb.ServiceID(i), Addr: netip.AddrFrom4([4]byte{10, 128, byte(i >> 8), byte(i)}),
				Port: uint16(8080 + j), Weight: 1, State: lb.BackendActive}
		}
	}
	return s
}

// upsertAll writes a state's entries with the batch methods.
func upsertAll(d *Datapath, s *lb.DatapathState) error {
	bids, bes := split(s.Backends)
	if n, err := d.UpsertBackends(bids, bes); err != nil || n != len(bids) {
		return fmt.Errorf("UpsertBackends wrote %d of %d: %w", n, len(bids), err)
	}
	fids, fes := split(s.Frontends)
	if n, err := d.UpsertFrontends(fids, fes); err != nil || n != len(fids) {
		return fmt.Errorf("UpsertFrontends wrote %d of %d: %w", n, len(fids), err)
	}
	keys, ses := split(s.Services)
	if n, err := d.UpsertServices(keys, ses); err != nil || n != len(keys) {
		return fmt.Errorf("UpsertServices wrote %d of %d: %w", n, len(keys), err)
	}
	return nil
}

func split[K comparable, V any](m map[K]V) ([]K, []V) {
	ks := make([]K, 0, len(m))
	vs := make([]V, 0, len(m))
	for k, v := range m {
		ks = append(ks, k)
		vs = append(vs, v)
	}
	return ks, vs
}

// TestDatapathBatchRoundTrip: entries written in batches read back as
// written, and writing them again (an update of existing keys) changes
// nothing.
func TestDatapathBatchRoundTrip(t *testing.T) {
	testutil.RequirePrivileged(t)
	d, _ := mustDatapath(t, smallSizes)
	want := batchState(1500) // 4500 backends: three chunks
	for range 2 {
		if err := upsertAll(d, want); err != nil {
			t.Fatal(err)
		}
		got := mustDump(t, d)
		if !maps.Equal(got.Backends, want.Backends) || !maps.Equal(got.Frontends, want.Frontends) || !maps.Equal(got.Services, want.Services) {
			t.Fatalf("dumped %d backends, %d frontends, %d keys; want %d, %d, %d (or they differ)",
				len(got.Backends), len(got.Frontends), len(got.Services), len(want.Backends), len(want.Frontends), len(want.Services))
		}
	}
}

// TestDatapathBatchMapFull: a batch that runs into a full map reports how
// many entries it wrote and a MapFullError naming the first entry that
// did not fit; the entries written and those already there are intact.
func TestDatapathBatchMapFull(t *testing.T) {
	testutil.RequirePrivileged(t)
	sizes := smallSizes
	sizes.Backends = 3000
	d, _ := mustDatapath(t, sizes)
	st := batchState(1500)
	ids, es := split(st.Backends)
	for i := range ids { // dense, as the reconciler allocates them
		ids[i] = lb.BackendID(i + 1)
	}
	// 2500 entries in first: the batch after them crosses a chunk border
	// and fills the map midway.
	if n, err := d.UpsertBackends(ids[:2500], es[:2500]); err != nil || n != 2500 {
		t.Fatalf("first 2500: wrote %d: %v", n, err)
	}
	n, err := d.UpsertBackends(ids[2500:], es[2500:])
	var full *MapFullError
	if !errors.As(err, &full) || full.Map != "weir_backends" || full.Flag != "--bpf-map-backends" {
		t.Fatalf("overfilling: got %v, want a MapFullError for weir_backends", err)
	}
	if n != 500 {
		t.Errorf("the batch reports %d entries written, want the 500 that fit", n)
	}
	if name := fmt.Sprintf("backend %d:", ids[2500+n]); !strings.HasPrefix(err.Error(), name) {
		t.Errorf("error %q does not name the entry that failed (%s)", err, name)
	}
	got := mustDump(t, d).Backends
	for i, id := range ids[:2500+n] {
		if got[id] != es[i] {
			t.Fatalf("backend %d: read %+v, wrote %+v", id, got[id], es[i])
		}
	}
	// Existing entries still update in a full map.
	es[0].State = lb.BackendTerminating
	if n, err := d.UpsertBackends(ids[:1], es[:1]); err != nil || n != 1 {
		t.Errorf("updating an entry of a full map: wrote %d: %v", n, err)
	}
}

// TestDatapathBatchInvalidEntry: an entry that can't be converted stops
// the batch before anything of its chunk is written, and the count says
// where to continue one by one.
func TestDatapathBatchInvalidEntry(t *testing.T) {
	testutil.RequirePrivileged(t)
	d, _ := mustDatapath(t, smallSizes)
	st := batchState(1000)
	ids, es := split(st.Backends)
	es[2100].Addr = netip.Addr{}
	n, err := d.UpsertBackends(ids, es)
	if err == nil || n != batchChunk {
		t.Fatalf("got %d, %v; want the first chunk (%d) written and an error", n, err, batchChunk)
	}
	if got := len(mustDump(t, d).Backends); got != batchChunk {
		t.Errorf("%d backends in the map, want %d", got, batchChunk)
	}
}
