package main

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/lb"
)

// Helpers shared by the tests that read real (pinned) maps.

// testMapSizes keeps test maps small, except conntrack: the tests walk
// more entries than one batch holds.
var testMapSizes = bpf.MapSizes{
	Services: 256, Frontends: 256, Backends: 256, SourceRanges: 256,
	CT: 16384, Affinity: 256, SNAT: 256, SockRevNat: 256,
}

// mustTestMaps opens fresh shared maps under a temporary bpffs root.
func mustTestMaps(tb testing.TB) *bpf.Maps {
	tb.Helper()
	m, err := bpf.OpenMaps(testutil.BPFRoot(tb), testMapSizes)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func obsMust(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// obsService writes a frontend and its backends (IDs first..) for
// service id, the way the reconciler does.
func obsService(tb testing.TB, m *bpf.Maps, id lb.ServiceID, name, port string, scope lb.Scope, vip string, backends ...string) []lb.BackendID {
	tb.Helper()
	dp := bpf.NewDatapath(m)
	obsMust(tb, dp.UpsertFrontend(lb.FrontendID(id), lb.FrontendEntry{
		ServiceID: id, Addr: netip.MustParseAddr(vip), Port: 80, Protocol: lb.TCP, Scope: scope,
		Kind: lb.KindEdgeVIP, Service: name, PortName: port,
	}))
	var ids []lb.BackendID
	for i, b := range backends {
		ap := netip.MustParseAddrPort(b)
		bid := lb.BackendID(uint32(id)*10 + uint32(i) + 1)
		obsMust(tb, dp.UpsertBackend(bid, lb.BackendEntry{ServiceID: id, Addr: ap.Addr(), Port: ap.Port(), Weight: 1}))
		ids = append(ids, bid)
	}
	return ids
}

// setPerCPU sets a per-CPU counter: value i on CPU i spread so the sum
// is packets (and bytes).
func setPerCPU(tb testing.TB, m *ebpf.Map, key uint32, packets, bytes uint64) {
	tb.Helper()
	n, err := ebpf.PossibleCPU()
	obsMust(tb, err)
	per := make([]bpf.TrafficStats, n)
	per[0] = bpf.TrafficStats{Packets: packets, Bytes: bytes}
	if n > 1 { // split across two CPUs, so the sum is tested
		per[0] = bpf.TrafficStats{Packets: packets / 2, Bytes: bytes / 2}
		per[n-1] = bpf.TrafficStats{Packets: packets - packets/2, Bytes: bytes - bytes/2}
	}
	obsMust(tb, m.Update(key, per, ebpf.UpdateAny))
}

// ctEntry builds a conntrack entry of client -> vip:80/TCP.
func ctEntry(client netip.AddrPort, vip string, sid lb.ServiceID, bid lb.BackendID, lastSeen uint64) (bpf.CTKey, bpf.CTValue) {
	k := bpf.CTKey{
		Saddr: bpf.AddrFrom(client.Addr()), Daddr: bpf.AddrFrom(netip.MustParseAddr(vip)),
		Sport: bpf.PortFrom(client.Port()), Dport: bpf.PortFrom(80), Proto: uint8(lb.TCP),
	}
	v := bpf.CTValue{LastSeen: lastSeen, BackendID: uint32(bid), ServiceID: uint32(sid), FrontendID: uint32(sid)}
	return k, v
}

// gathered is a scrape as series -> value, series written as
// name{label="value",...} with labels sorted.
func gathered(tb testing.TB, c prometheus.Collector) map[string]float64 {
	tb.Helper()
	reg := prometheus.NewPedanticRegistry()
	obsMust(tb, reg.Register(c))
	mfs, err := reg.Gather()
	obsMust(tb, err)
	return seriesOf(mfs)
}

// seriesOf flattens families as gathered does.
func seriesOf(mfs []*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func wantSeries(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		g, ok := got[series]
		if !ok {
			t.Errorf("no series %s", series)
		} else if g != v {
			t.Errorf("%s = %v, want %v", series, g, v)
		}
	}
}

// TestMapCollector: counters are summed over CPUs and labelled by name;
// the two halves of a dual-stack service add up; conntrack and map
// occupancy are counted.
func TestMapCollector(t *testing.T) {
	m := mustTestMaps(t)
	web4 := obsService(t, m, 1, "ns/web", "http", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:8080", "10.1.0.2:8080")
	web6 := obsService(t, m, 2, "ns/web", "http", lb.ScopeExternal, "fd00::1", "[fd00:1::1]:8080")
	obsService(t, m, 3, "ns/web", "http", lb.ScopeInternal, "10.96.0.1", "10.1.0.1:8080")
	table := make([]lb.BackendID, 251)
	for i := range table {
		table[i] = web4[i%2]
	}
	obsMust(t, bpf.NewDatapath(m).UpsertMaglev(lb.ServiceID(1).Table(0), table))
	setPerCPU(t, m.ServiceStats, 1, 10, 1000)
	setPerCPU(t, m.ServiceStats, 2, 5, 700)
	setPerCPU(t, m.ServiceStats, 3, 3, 0)
	setPerCPU(t, m.BackendStats, uint32(web4[0]), 7, 700)
	setPerCPU(t, m.BackendStats, uint32(web4[1]), 3, 300)
	setPerCPU(t, m.BackendStats, uint32(web6[0]), 5, 700)
	setPerCPU(t, m.Drops, uint32(bpf.ReasonSourceRange), 4, 240)
	const nCT = batchSize + 100 // more than one batch
	for i := range nCT {
		k, v := ctEntry(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1").Next(), uint16(1024+i)), "10.0.0.1", 1, web4[i%2], 1)
		obsMust(t, m.CT.Update(&k, &v, ebpf.UpdateAny))
	}

	got := gathered(t, newMapCollector(m))
	wantSeries(t, got, map[string]float64{
		`weir_service_packets_total{scope="external",service="ns/web:http"}`:                            15,
		`weir_service_bytes_total{scope="external",service="ns/web:http"}`:                              1700,
		`weir_service_packets_total{scope="internal",service="ns/web:http"}`:                            3,
		`weir_backend_packets_total{backend="10.1.0.1:8080",scope="external",service="ns/web:http"}`:    7,
		`weir_backend_bytes_total{backend="10.1.0.2:8080",scope="external",service="ns/web:http"}`:      300,
		`weir_backend_packets_total{backend="[fd00:1::1]:8080",scope="external",service="ns/web:http"}`: 5,
		`weir_backend_packets_total{backend="10.1.0.1:8080",scope="internal",service="ns/web:http"}`:    0,
		`weir_drops_total{reason="source_range"}`:                                                       4,
		`weir_drop_bytes_total{reason="source_range"}`:                                                  240,
		`weir_drops_total{reason="no_backend"}`:                                                         0,
		`weir_events_lost_total`:                                                                        0,
		`weir_conntrack_entries`:                                                                        nCT,
		`weir_conntrack_capacity`:                                                                       float64(testMapSizes.CT),
		`weir_conntrack_service_entries{service="ns/web:http"}`:                                         nCT,
		`weir_map_entries{map="weir_ct"}`:                                                               nCT,
		`weir_map_capacity{map="weir_ct"}`:                                                              float64(testMapSizes.CT),
		`weir_map_entries{map="weir_frontends"}`:                                                        3,
		`weir_map_entries{map="weir_backends"}`:                                                         4,
		`weir_map_entries{map="weir_source_ranges"}`:                                                    0,
		`weir_map_capacity{map="weir_drops"}`:                                                           float64(bpf.ReasonMax),
		`weir_map_entries{map="weir_maglev_index"}`:                                                     1,
		`weir_maglev_slab_used_slots`:                                                                   251,
		`weir_maglev_slab_slots`:                                                                        65536,
	})
	for series := range got {
		if strings.HasPrefix(series, "weir_map_read_errors") {
			t.Errorf("read error: %s", series)
		}
		if strings.Contains(series, `map="weir_events"`) || strings.Contains(series, `map="weir_sock_peer"`) {
			t.Errorf("%s: a ring buffer or socket storage has no entry count or capacity", series)
		}
		if strings.HasPrefix(series, "weir_map_entries") && strings.Contains(series, "_stats") {
			t.Errorf("%s: arrays are always full", series)
		}
	}
}

// TestCountEntries covers every countable map type, batched or not.
func TestCountEntries(t *testing.T) {
	m := mustTestMaps(t)
	dp := bpf.NewDatapath(m)
	obsMust(t, dp.UpsertSourceRange(1, netip.MustParsePrefix("10.0.0.0/8")))
	obsMust(t, dp.UpsertSourceRange(1, netip.MustParsePrefix("fd00::/8")))
	obsMust(t, dp.UpsertMaglev(lb.ServiceID(1).Table(0), []lb.BackendID{101, 101, 101, 101, 101, 101, 101}))
	for name, want := range map[string]int{"weir_source_ranges": 2, "weir_maglev": 1, "weir_services": 0} {
		n, err := countEntries(m.All()[name])
		if err != nil || n != want {
			t.Errorf("%s: %d entries (%v), want %d", name, n, err, want)
		}
		if k, err := countByKeys(m.All()[name]); err != nil || k != want {
			t.Errorf("%s: %d entries key by key (%v), want %d", name, k, err, want)
		}
	}
}

func TestCTFlagMatchesHeader(t *testing.T) {
	b, err := os.ReadFile("../../bpf/include/conntrack.h")
	obsMust(t, err)
	for name, v := range map[string]int{"WEIR_CT_F_SNAT": ctFlagSNAT, "WEIR_CT_F_CLOSING": ctFlagClosing} {
		if !regexp.MustCompile(`(?m)^#define ` + name + ` ` + fmt.Sprint(v) + `\b`).Match(b) {
			t.Errorf("%d does not match %s in bpf/include/conntrack.h", v, name)
		}
	}
}

// BenchmarkCollectFullConntrack: one scrape with a full default-sized
// conntrack map (524288 entries), the cost the batched walk bounds.
func BenchmarkCollectFullConntrack(b *testing.B) {
	m, err := bpf.OpenMaps(testutil.BPFRoot(b), bpf.MapSizes{})
	obsMust(b, err)
	b.Cleanup(func() { m.Close() })
	obsService(b, m, 1, "web", "", lb.ScopeExternal, "10.0.0.1", "10.1.0.1:80")
	info, err := m.CT.Info()
	obsMust(b, err)
	n := int(info.MaxEntries)
	keys := make([]bpf.CTKey, n)
	vals := make([]bpf.CTValue, n)
	for i := range keys {
		keys[i], vals[i] = ctEntry(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 16), byte(i >> 8)}), uint16(i)), "10.0.0.1", 1, 101, 1)
	}
	_, err = m.CT.BatchUpdate(keys, vals, nil)
	obsMust(b, err)
	c := newMapCollector(m)
	reg := prometheus.NewRegistry()
	obsMust(b, reg.Register(c))
	b.ResetTimer()
	for b.Loop() {
		mfs, err := reg.Gather()
		obsMust(b, err)
		if len(mfs) == 0 {
			b.Fatal("nothing gathered")
		}
	}
	b.StopTimer()
	s, err := conntrackSummary(m.CT, map[uint32]serviceName{1: {Name: "web"}})
	obsMust(b, err)
	if s.total < n*9/10 { // an LRU may evict a few while filling
		b.Errorf("counted %d of %d entries", s.total, n)
	}
}

// BenchmarkScrape100kBackends: one /metrics scrape (gather and text
// encoding) with 10000 services of 10 backends each, the issue #5 scale.
func BenchmarkScrape100kBackends(b *testing.B) {
	m, err := bpf.OpenMaps(testutil.BPFRoot(b), bpf.MapSizes{})
	obsMust(b, err)
	b.Cleanup(func() { m.Close() })
	dp := bpf.NewDatapath(m)
	const nSvc, nBE = 10000, 10
	for s := range nSvc {
		id := lb.ServiceID(s + 1)
		obsMust(b, dp.UpsertFrontend(lb.FrontendID(id), lb.FrontendEntry{
			ServiceID: id, Addr: netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)}), Port: 80, Protocol: lb.TCP,
			Scope: lb.ScopeInternal, Kind: lb.KindClusterIP, Service: fmt.Sprintf("scale/s%d", s),
		}))
		for i := range nBE {
			bid := lb.BackendID(s*nBE + i + 1)
			obsMust(b, dp.UpsertBackend(bid, lb.BackendEntry{ServiceID: id,
				Addr: netip.AddrFrom4([4]byte{10, byte(128 + i), byte(s / 250), byte(s%250 + 1)}), Port: 8080, Weight: 1}))
		}
	}
	setPerCPU(b, m.BackendStats, 1, 7, 700) // one backend with traffic
	reg := prometheus.NewRegistry()
	obsMust(b, reg.Register(newMapCollector(m)))
	var out strings.Builder
	cpu0 := selfCPU(b)
	for b.Loop() {
		mfs, err := reg.Gather()
		obsMust(b, err)
		out.Reset()
		for _, mf := range mfs {
			_, err := expfmt.MetricFamilyToText(&out, mf)
			obsMust(b, err)
		}
	}
	b.ReportMetric(float64(out.Len())/(1<<20), "MiB/scrape")
	b.ReportMetric((selfCPU(b)-cpu0).Seconds()/float64(b.N), "cpu-s/scrape")
}

// selfCPU is the process's user and system CPU time so far: unlike
// wall time, it hardly depends on what else the shared machine runs.
func selfCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	obsMust(tb, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
