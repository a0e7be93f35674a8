package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// smallSizes keep the preallocated LRU maps small; tests don't use them.
var smallSizes = MapSizes{CT: 1024, Affinity: 1024, SNAT: 1024, SockRevNat: 1024}

// mustDatapath opens maps pinned under a fresh bpffs root, closed (and the
// root removed) when the test ends.
func mustDatapath(tb testing.TB, sizes MapSizes) (*Datapath, string) {
	tb.Helper()
	root := testutil.BPFRoot(tb)
	return mustReopen(tb, root, sizes), root
}

// mustReopen opens the maps pinned under root, as a restarted agent does.
func mustReopen(tb testing.TB, root string, sizes MapSizes) *Datapath {
	tb.Helper()
	m, err := OpenMaps(root, sizes)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	return NewDatapath(m)
}

func mustDump(tb testing.TB, d *Datapath) *lb.DatapathState {
	tb.Helper()
	s, err := d.Dump()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func mustApply(tb testing.TB, d *Datapath, s *lb.DatapathState) {
	tb.Helper()
	for id, e := range s.Backends {
		if err := d.UpsertBackend(id, e); err != nil {
			tb.Fatal(err)
		}
	}
	for id, t := range s.Maglev {
		if err := d.UpsertMaglev(id, t); err != nil {
			tb.Fatal(err)
		}
	}
	for id, e := range s.Frontends {
		if err := d.UpsertFrontend(id, e); err != nil {
			tb.Fatal(err)
		}
	}
	for id, ps := range s.SourceRanges {
		for _, p := range ps {
			if err := d.UpsertSourceRange(id, p); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for k, e := range s.Services {
		if err := d.UpsertService(k, e); err != nil {
			tb.Fatal(err)
		}
	}
}

func assertState(tb testing.TB, got, want *lb.DatapathState) {
	tb.Helper()
	if !reflect.DeepEqual(got, want) {
		tb.Errorf("dumped state differs\n got: %+v\nwant: %+v", got, want)
	}
}

// sampleState is one IPv4 and one IPv6 service, every field set.
func sampleState() *lb.DatapathState {
	v4, v6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")
	s := lb.NewDatapathState()
	s.Backends[1] = lb.BackendEntry{ServiceID: 1, Addr: netip.MustParseAddr("10.0.1.5"), Port: 8080, Tunnel: netip.MustParseAddr("192.168.1.2"), Weight: 100, State: lb.BackendActive}
	s.Backends[2] = lb.BackendEntry{ServiceID: 1, Addr: netip.MustParseAddr("10.0.2.5"), Port: 8080, Weight: 1, State: lb.BackendTerminating}
	s.Backends[3] = lb.BackendEntry{ServiceID: 2, Addr: netip.MustParseAddr("fd00:1::5"), Port: 443, Tunnel: netip.MustParseAddr("fd00:ff::2"), Weight: 7, State: lb.BackendQuarantined}
	s.Maglev[lb.ServiceID(1).Table(0)] = []lb.BackendID{1, 2, 1, 2, 2, 1, 1}
	s.Maglev[lb.ServiceID(1).Table(1)] = []lb.BackendID{2, 2, 1, 1, 1, 2, 2}
	s.Maglev[lb.ServiceID(2).Table(1)] = []lb.BackendID{3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3}
	s.Frontends[1] = lb.FrontendEntry{ServiceID: 1, Addr: v4, Port: 53, Protocol: lb.UDP, Scope: lb.ScopeInternal, Kind: lb.KindClusterIP, Service: "kube-system/kube-dns", PortName: "dns"}
	s.Frontends[2] = lb.FrontendEntry{ServiceID: 2, Addr: v6, Port: 443, Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindLoadBalancer, Service: "web"}
	s.SourceRanges[2] = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32")}
	s.Services[lb.ServiceKey{Addr: v4, Port: 53, Protocol: lb.UDP, Scope: lb.ScopeInternal}] = lb.ServiceEntry{ServiceID: 1, FrontendID: 1, Backends: 1, TableSize: 7, Mode: lb.ModeSNAT, Flags: lb.FlagAffinity, AffinityTimeout: 3 * time.Hour}
	s.Services[lb.ServiceKey{Addr: v6, Port: 443, Protocol: lb.TCP, Scope: lb.ScopeExternal}] = lb.ServiceEntry{ServiceID: 2, FrontendID: 2, Backends: 0, TableSize: 11, TableGen: 1, Mode: lb.ModeHybrid, Flags: lb.FlagSourceRanges | lb.FlagLocalOnly}
	return s
}

func TestDatapathRoundTrip(t *testing.T) {
	d, root := mustDatapath(t, smallSizes)
	want := sampleState()
	mustApply(t, d, want)
	assertState(t, mustDump(t, d), want)

	// Idempotent: writing everything again changes nothing.
	mustApply(t, d, want)
	assertState(t, mustDump(t, d), want)

	// Restart-safe: a second agent opening the pins sees the same state.
	assertState(t, mustDump(t, mustReopen(t, root, smallSizes)), want)
}

func TestDatapathDeletes(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	s := sampleState()
	deleteAll := func() {
		t.Helper()
		for k := range s.Services {
			if err := d.DeleteService(k); err != nil {
				t.Fatal(err)
			}
		}
		for id, ps := range s.SourceRanges {
			for _, p := range ps {
				if err := d.DeleteSourceRange(id, p); err != nil {
					t.Fatal(err)
				}
			}
		}
		for id := range s.Frontends {
			if err := d.DeleteFrontend(id); err != nil {
				t.Fatal(err)
			}
		}
		for id := range s.Maglev {
			if err := d.DeleteMaglev(id); err != nil {
				t.Fatal(err)
			}
		}
		for id := range s.Backends {
			if err := d.DeleteBackend(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	deleteAll() // every key missing: success
	mustApply(t, d, s)
	deleteAll()
	assertState(t, mustDump(t, d), lb.NewDatapathState())
	deleteAll() // and again
}

// tableAt returns where the index says a table is.
func tableAt(tb testing.TB, d *Datapath, id lb.TableID) tableLoc {
	tb.Helper()
	key, word := uint32(id), uint64(0)
	if err := d.maps.MaglevIndex.Lookup(unsafe.Pointer(&key), unsafe.Pointer(&word)); err != nil {
		tb.Fatalf("maglev table %s: %v", id, err)
	}
	if word == 0 {
		tb.Fatalf("maglev table %s: not in the index", id)
	}
	return locOf(word)
}

func TestDatapathMaglevSwap(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	id := lb.ServiceID(9).Table(1)
	first := []lb.BackendID{1, 2, 3, 1, 2, 3, 1}
	if err := d.UpsertMaglev(id, first); err != nil {
		t.Fatal(err)
	}
	old := tableAt(t, d, id)
	second := []lb.BackendID{4, 4, 5, 5, 4, 5, 4, 5, 4, 5, 4}
	if err := d.UpsertMaglev(id, second); err != nil {
		t.Fatal(err)
	}
	if loc := tableAt(t, d, id); loc.off == old.off || loc.size != 11 {
		t.Errorf("a table of another size is at %+v, was %+v: want a new run of 11 slots", loc, old)
	}
	if got := mustDump(t, d).Maglev[id]; !reflect.DeepEqual(got, second) {
		t.Errorf("table after swap = %v, want %v", got, second)
	}
}

// A table written over one of the same size is rewritten in place: the
// same run, no write to the index.
func TestDatapathMaglevInPlace(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	id := lb.ServiceID(3).Table(0)
	if err := d.UpsertMaglev(id, []lb.BackendID{1, 2, 3, 1, 2}); err != nil {
		t.Fatal(err)
	}
	at := tableAt(t, d, id)
	for _, write := range []func(lb.TableID, []lb.BackendID) error{
		d.UpsertMaglev,
		func(id lb.TableID, t []lb.BackendID) error {
			return d.UpsertMaglevs(map[lb.TableID][]lb.BackendID{id: t})
		},
	} {
		want := []lb.BackendID{4, 4, 5, 5, 4}
		if err := write(id, want); err != nil {
			t.Fatal(err)
		}
		if got := tableAt(t, d, id); got != at {
			t.Errorf("a table of the same size moved from %+v to %+v: not rewritten in place", at, got)
		}
		if got := mustDump(t, d).Maglev[id]; !reflect.DeepEqual(got, want) {
			t.Errorf("table after the rewrite = %v, want %v", got, want)
		}
		want[0] = 6 // the next write differs
	}
}

func TestDatapathMaglevBatch(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	tables := map[lb.TableID][]lb.BackendID{}
	for id := lb.TableID(2); id < 602; id++ {
		tables[id] = []lb.BackendID{lb.BackendID(id), lb.BackendID(id) + 1, lb.BackendID(id)}
	}
	if err := d.UpsertMaglevs(tables); err != nil {
		t.Fatal(err)
	}
	if got := mustDump(t, d).Maglev; !reflect.DeepEqual(got, tables) {
		t.Errorf("dumped %d tables, want the %d written", len(got), len(tables))
	}
	oldAt, keptAt := tableAt(t, d, 2), tableAt(t, d, 3)
	tables[2] = []lb.BackendID{7, 7, 7, 7, 7}
	tables[3] = []lb.BackendID{8, 8, 8}
	if err := d.UpsertMaglevs(map[lb.TableID][]lb.BackendID{2: tables[2], 3: tables[3]}); err != nil {
		t.Fatal(err)
	}
	if tableAt(t, d, 2).off == oldAt.off {
		t.Error("batch upsert of a resized table did not move it to a new run")
	}
	if tableAt(t, d, 3) != keptAt {
		t.Error("batch upsert of a table of the same size did not rewrite it in place")
	}
	if err := d.UpsertMaglevs(map[lb.TableID][]lb.BackendID{4: {1}, 5: nil}); err == nil {
		t.Error("a batch with an empty table was accepted")
	}
	if got := mustDump(t, d).Maglev[4]; !reflect.DeepEqual(got, tables[4]) {
		t.Errorf("a refused batch changed table 4 to %v", got)
	}
	if got := mustDump(t, d).Maglev; !reflect.DeepEqual(got, tables) {
		t.Errorf("dumped %d tables, want the %d written", len(got), len(tables))
	}

	// Delete half, plus IDs that have no table, one beyond the index.
	del := []lb.TableID{1 << 30}
	for id := lb.TableID(2); id < 302; id++ {
		del = append(del, id, id+10000)
		delete(tables, id)
	}
	if err := d.DeleteMaglevs(del); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteMaglevs(del); err != nil {
		t.Fatalf("deleting missing tables: %v", err)
	}
	if got := mustDump(t, d).Maglev; !reflect.DeepEqual(got, tables) {
		t.Errorf("after delete: dumped %d tables, want %d", len(got), len(tables))
	}
}

func TestDatapathMapFull(t *testing.T) {
	sizes := smallSizes
	sizes.Backends, sizes.Services, sizes.Frontends, sizes.SourceRanges = 2, 2, 2, 2
	d, _ := mustDatapath(t, sizes)
	want := lb.NewDatapathState()
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := 1; i <= 2; i++ {
		want.Backends[lb.BackendID(i)] = lb.BackendEntry{ServiceID: 1, Addr: addr(i), Port: 80, Weight: 1}
		want.Maglev[lb.ServiceID(1).Table(uint8(i-1))] = []lb.BackendID{1, 2, 1}
		want.Maglev[lb.ServiceID(2).Table(uint8(i-1))] = []lb.BackendID{1, 2, 1} // two tables per service
		want.Frontends[lb.FrontendID(i)] = lb.FrontendEntry{ServiceID: 1, Addr: addr(i), Port: 80, Protocol: lb.TCP, Service: "a"}
		want.SourceRanges[1] = append(want.SourceRanges[1], netip.PrefixFrom(addr(i), 32))
		want.Services[lb.ServiceKey{Addr: addr(i), Port: 80, Protocol: lb.TCP}] = lb.ServiceEntry{ServiceID: 1, FrontendID: 1, Backends: 2, TableSize: 3}
	}
	mustApply(t, d, want)

	for _, tc := range []struct {
		mapName, flag string
		write         func() error
	}{
		{"weir_backends", "--bpf-map-backends", func() error { return d.UpsertBackend(3, want.Backends[1]) }},
		{"weir_maglev_index", "--bpf-map-services", func() error { return d.UpsertMaglev(lb.ServiceID(3).Table(0), []lb.BackendID{1}) }},
		{"weir_maglev_index", "--bpf-map-services", func() error {
			return d.UpsertMaglevs(map[lb.TableID][]lb.BackendID{lb.ServiceID(3).Table(1): {1}})
		}},
		{"weir_frontends", "--bpf-map-frontends", func() error { return d.UpsertFrontend(3, want.Frontends[1]) }},
		{"weir_source_ranges", "--bpf-map-source-ranges", func() error {
			return d.UpsertSourceRange(1, netip.MustParsePrefix("10.9.0.0/16"))
		}},
		{"weir_services", "--bpf-map-services", func() error {
			return d.UpsertService(lb.ServiceKey{Addr: addr(3), Port: 80, Protocol: lb.TCP}, lb.ServiceEntry{ServiceID: 1})
		}},
	} {
		err := tc.write()
		var full *MapFullError
		if !errors.As(err, &full) {
			t.Errorf("%s: writing a third entry: got %v, want a MapFullError", tc.mapName, err)
			continue
		}
		entries := uint32(2)
		if tc.mapName == "weir_maglev_index" {
			entries = 6 // two tables per service ID, IDs from 1
		}
		if full.Map != tc.mapName || full.MaxEntries != entries || full.Flag != tc.flag {
			t.Errorf("%s: got %+v", tc.mapName, full)
		}
		if msg := fmt.Sprintf("map %s is full (%d entries): raise %s", tc.mapName, entries, tc.flag); !strings.Contains(err.Error(), msg) {
			t.Errorf("error %q does not say %q", err, msg)
		}
	}
	// Entries already there are intact and can still be updated.
	assertState(t, mustDump(t, d), want)
	mustApply(t, d, want)
}

func TestDatapathRejects(t *testing.T) {
	d, _ := mustDatapath(t, smallSizes)
	ok := lb.FrontendEntry{ServiceID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Protocol: lb.TCP,
		Service: strings.Repeat("n", NameLen-1), PortName: strings.Repeat("p", PortNameLen-1)}
	if err := d.UpsertFrontend(1, ok); err != nil {
		t.Fatalf("names that fit with their NUL were refused: %v", err)
	}
	for _, tc := range []struct {
		name, field string
		write       func() error
	}{
		{"service name too long", "frontend_value.name", func() error {
			e := ok
			e.Service = strings.Repeat("n", NameLen)
			return d.UpsertFrontend(2, e)
		}},
		{"port name too long", "frontend_value.port_name", func() error {
			e := ok
			e.PortName = strings.Repeat("p", PortNameLen)
			return d.UpsertFrontend(2, e)
		}},
		{"frontend without address", "no address", func() error {
			e := ok
			e.Addr = netip.Addr{}
			return d.UpsertFrontend(2, e)
		}},
		{"backend without address", "no address", func() error { return d.UpsertBackend(2, lb.BackendEntry{Port: 80}) }},
		{"service key without address", "no address", func() error { return d.UpsertService(lb.ServiceKey{Port: 80}, lb.ServiceEntry{}) }},
		{"empty maglev table", "empty", func() error { return d.UpsertMaglev(2, nil) }},
		{"backend 0 in a slot", "backend ID 0", func() error { return d.UpsertMaglev(2, []lb.BackendID{1, 0}) }},
		{"table generation 2", "table generation 2", func() error {
			return d.UpsertService(lb.ServiceKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80}, lb.ServiceEntry{ServiceID: 1, TableGen: 2})
		}},
		{"invalid source range", "invalid source range", func() error { return d.UpsertSourceRange(2, netip.Prefix{}) }},
	} {
		err := tc.write()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got error %v, want one naming %q", tc.name, err, tc.field)
		}
	}
	want := lb.NewDatapathState()
	want.Frontends[1] = ok
	assertState(t, mustDump(t, d), want)
}

// BenchmarkDatapathUpsert measures single writes. Maglev/251 replaces
// tables by tables of another size: a new run of the slab, and a grace
// period whenever the slab runs out of free runs. Maglev/251/in-place rewrites tables of the
// same size, what a backend change costs. Maglevs writes batches of either
// kind. Every table case reports ns/table.
func BenchmarkDatapathUpsert(b *testing.B) {
	d, _ := mustDatapath(b, smallSizes)
	b.Run("Backend", func(b *testing.B) {
		e := lb.BackendEntry{ServiceID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Weight: 1}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := d.UpsertBackend(lb.BackendID(i%100000+1), e); err != nil {
				b.Fatal(err)
			}
		}
	})
	next := lb.ServiceID(1) // each case has its own services
	for _, tc := range []struct {
		name        string
		size, batch int // batch 0: one table per call, over 1000 services
		inPlace     bool
	}{
		{"Maglev/251", 251, 0, false},
		{"Maglev/251/in-place", 251, 0, true},
		{"Maglevs/251", 251, 1000, false},
		{"Maglevs/251/in-place", 251, 1000, true},
		{"Maglevs/16381", 16381, 100, false},
		{"Maglevs/16381/in-place", 16381, 100, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			n := tc.batch
			if n == 0 {
				n = 1000
			}
			first := next
			next += lb.ServiceID(n)
			// Writes alternate between sized[0] and sized[1], which
			// differ in size unless in place; sized[1] is there first.
			sized := [2][]lb.BackendID{benchTable(tc.size), benchTable(tc.size)}
			if !tc.inPlace {
				sized[1] = benchTable(tc.size - 2)
			}
			var batches [2]map[lb.TableID][]lb.BackendID
			for k := range batches {
				batches[k] = make(map[lb.TableID][]lb.BackendID, n)
				for i := range n {
					batches[k][(first + lb.ServiceID(i)).Table(0)] = sized[k]
				}
			}
			if err := d.UpsertMaglevs(batches[1]); err != nil {
				b.Fatal(err)
			}
			tables := 0
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				var err error
				if tc.batch == 0 {
					err = d.UpsertMaglev((first + lb.ServiceID(i%n)).Table(0), sized[i/n%2])
					tables++
				} else {
					err = d.UpsertMaglevs(batches[i%2])
					tables += tc.batch
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(tables), "ns/table")
		})
	}
}

func benchTable(size int) []lb.BackendID {
	t := make([]lb.BackendID, size)
	for i := range t {
		t[i] = lb.BackendID(i%10 + 1)
	}
	return t
}

// BenchmarkDatapathProgram10k programs what the reconciler must manage in
// a second: 10k services with 10 backends and a 251-slot table each.
func BenchmarkDatapathProgram10k(b *testing.B) {
	d, _ := mustDatapath(b, smallSizes)
	const services, backends = 10000, 10
	tables := make(map[lb.TableID][]lb.BackendID, 2*services)
	for s := range services {
		t := make([]lb.BackendID, 251)
		for i := range t {
			t[i] = lb.BackendID(s*backends + i%backends + 1)
		}
		tables[lb.ServiceID(s+1).Table(0)] = t
		tables[lb.ServiceID(s+1).Table(1)] = t
	}
	for b.Loop() {
		for s := range services {
			for i := range backends {
				id := lb.BackendID(s*backends + i + 1)
				e := lb.BackendEntry{ServiceID: lb.ServiceID(s + 1), Addr: netip.AddrFrom4([4]byte{10, byte(s >> 8), byte(s), byte(i)}), Port: 8080, Weight: 1}
				if err := d.UpsertBackend(id, e); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := d.UpsertMaglevs(tables); err != nil {
			b.Fatal(err)
		}
		for s := range services {
			a := netip.AddrFrom4([4]byte{172, 16, byte(s >> 8), byte(s)})
			if err := d.UpsertFrontend(lb.FrontendID(s+1), lb.FrontendEntry{ServiceID: lb.ServiceID(s + 1), Addr: a, Port: 80, Protocol: lb.TCP, Service: "bench/svc", PortName: "http"}); err != nil {
				b.Fatal(err)
			}
			k := lb.ServiceKey{Addr: a, Port: 80, Protocol: lb.TCP}
			if err := d.UpsertService(k, lb.ServiceEntry{ServiceID: lb.ServiceID(s + 1), FrontendID: lb.FrontendID(s + 1), Backends: backends, TableSize: 251}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkDatapathDump10k reads back 10k services' tables, as a
// restarting agent does.
func BenchmarkDatapathDump10k(b *testing.B) {
	d, _ := mustDatapath(b, smallSizes)
	tables := make(map[lb.TableID][]lb.BackendID, 20000)
	for s := range 10000 {
		tables[lb.ServiceID(s+1).Table(0)] = benchTable(251)
		tables[lb.ServiceID(s+1).Table(1)] = benchTable(251)
	}
	if err := d.UpsertMaglevs(tables); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if s := mustDump(b, d); len(s.Maglev) != len(tables) {
			b.Fatalf("dumped %d tables, want %d", len(s.Maglev), len(tables))
		}
	}
}
