package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/weir-lb/weir/bpf"
)

// mapCollector reads the per-CPU counters and map occupancy at scrape
// time, so the datapath does no per-packet work for metrics beyond its
// per-CPU increments, and the agent none at all between scrapes.
type mapCollector struct {
	maps *bpf.Maps

	svcPackets, svcBytes, bePackets, beBytes *prometheus.Desc
	drops, dropBytes, eventsLost             *prometheus.Desc
	ctEntries, ctCapacity, ctServiceEntries  *prometheus.Desc
	entries, capacity                        *prometheus.Desc
	slabSlots, slabUsed                      *prometheus.Desc
	readErrors, scrapeDuration               *prometheus.Desc

	// streamCounters leaves the per-service and per-backend series out
	// of Collect and hands their snapshot over in streamed, for
	// metricsHandler to write.
	streamCounters bool
	streamed       *statsSnapshot
	// lastBackends sizes the next scrape's backend list: grown by
	// appends, it would allocate twice its size.
	lastBackends atomic.Int64
}

// The per-service and per-backend counter families: most of a large
// node's series (metricsHandler writes them itself).
const (
	svcPacketsName = "weir_service_packets_total"
	svcPacketsHelp = "Packets (XDP) and translated connections or datagrams (socket hooks) load-balanced per service view."
	svcBytesName   = "weir_service_bytes_total"
	svcBytesHelp   = "Bytes load-balanced per service view (XDP only: the socket hooks see no bytes)."
	bePacketsName  = "weir_backend_packets_total"
	bePacketsHelp  = "Packets (XDP) and translated connections or datagrams (socket hooks) sent to each backend."
	beBytesName    = "weir_backend_bytes_total"
	beBytesHelp    = "Bytes sent to each backend (XDP only)."
)

func newMapCollector(m *bpf.Maps) *mapCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &mapCollector{
		maps:             m,
		svcPackets:       d(svcPacketsName, svcPacketsHelp, "service", "scope"),
		svcBytes:         d(svcBytesName, svcBytesHelp, "service", "scope"),
		bePackets:        d(bePacketsName, bePacketsHelp, "service", "scope", "backend"),
		beBytes:          d(beBytesName, beBytesHelp, "service", "scope", "backend"),
		drops:            d("weir_drops_total", "Packets dropped or rejected by the datapath (and refused socket connects or sends), by reason.", "reason"),
		dropBytes:        d("weir_drop_bytes_total", "Bytes dropped or rejected by the datapath, by reason.", "reason"),
		eventsLost:       d("weir_events_lost_total", "Drop and flow events not written to the events ring buffer: over the rate bound, or the buffer was full (nobody runs `weir observe`)."),
		ctEntries:        d("weir_conntrack_entries", "Entries in the connection-tracking map (idle ones included until the LRU evicts them)."),
		ctCapacity:       d("weir_conntrack_capacity", "Capacity of the connection-tracking map (--bpf-map-ct)."),
		ctServiceEntries: d("weir_conntrack_service_entries", "Connection-tracking entries per service.", "service"),
		entries:          d("weir_map_entries", "Entries in each BPF hash, LRU, trie and map-of-maps (arrays are always full: see weir_map_capacity).", "map"),
		capacity:         d("weir_map_capacity", "Capacity (max entries) of each BPF map.", "map"),
		slabSlots:        d("weir_maglev_slab_slots", "Slots in the array that holds every Maglev table (it grows when the tables need more)."),
		slabUsed:         d("weir_maglev_slab_used_slots", "Slots of the Maglev slab that tables take."),
		readErrors:       d("weir_map_read_errors", "1 for each map that could not be read during this scrape.", "map"),
		scrapeDuration:   d("weir_map_scrape_duration_seconds", "Time this scrape spent reading the BPF maps."),
	}
}

func (c *mapCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.svcPackets, c.svcBytes, c.bePackets, c.beBytes, c.drops, c.dropBytes, c.eventsLost,
		c.ctEntries, c.ctCapacity, c.ctServiceEntries, c.entries, c.capacity, c.slabSlots, c.slabUsed, c.readErrors, c.scrapeDuration} {
		ch <- d
	}
}

func (c *mapCollector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	failed := map[string]bool{}
	snap, names, errs := readStatsAndNames(c.maps, int(c.lastBackends.Load()))
	c.lastBackends.Store(int64(len(snap.backends)))
	for name := range errs {
		failed[name] = true
	}
	if c.streamCounters {
		c.streamed = snap
		snap = &statsSnapshot{Drops: snap.Drops, EventsLost: snap.EventsLost}
	} else {
		snap.labelBackends()
	}
	// The registry sorts every family's series by their label values,
	// in label-name order (backend, scope, service); handed over in that
	// order, its sort of 100k backends is a linear check instead of the
	// costliest step of a scrape.
	sort.Slice(snap.Services, func(i, j int) bool {
		a, b := snap.Services[i], snap.Services[j]
		return a.Scope < b.Scope || a.Scope == b.Scope && a.Service < b.Service
	})
	for _, s := range snap.Services {
		counter(c.svcPackets, s.Packets, s.Service, s.Scope)
		counter(c.svcBytes, s.Bytes, s.Service, s.Scope)
	}
	sort.Slice(snap.Backends, func(i, j int) bool {
		a, b := snap.Backends[i], snap.Backends[j]
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		return a.Scope < b.Scope || a.Scope == b.Scope && a.Service < b.Service
	})
	for _, b := range snap.Backends {
		// One label set for both series, built without the per-series
		// checks of NewConstMetric: the registry checks them anyway.
		labels := []*dto.LabelPair{
			{Name: proto.String("backend"), Value: proto.String(b.Backend)},
			{Name: proto.String("scope"), Value: proto.String(b.Scope)},
			{Name: proto.String("service"), Value: proto.String(b.Service)},
		}
		ch <- counterSeries{c.bePackets, labels, float64(b.Packets)}
		ch <- counterSeries{c.beBytes, labels, float64(b.Bytes)}
	}
	for _, d := range snap.Drops {
		counter(c.drops, d.Packets, d.Reason)
		counter(c.dropBytes, d.Bytes, d.Reason)
	}
	if _, bad := errs["weir_events_lost"]; !bad && c.maps.EventsLost != nil {
		counter(c.eventsLost, snap.EventsLost)
	}

	ct, ctErr := conntrackSummary(c.maps.CT, names)
	if ctErr != nil {
		failed["weir_ct"] = true
	} else {
		gauge(c.ctEntries, float64(ct.total))
		for svc, n := range ct.perService {
			gauge(c.ctServiceEntries, float64(n), svc)
		}
	}
	for name, m := range c.maps.All() {
		if m == nil {
			continue
		}
		info, err := m.Info()
		if err != nil {
			failed[name] = true
			continue
		}
		if name == "weir_ct" {
			gauge(c.ctCapacity, float64(info.MaxEntries))
		}
		if info.MaxEntries > 0 && m.Type() != ebpf.RingBuf {
			gauge(c.capacity, float64(info.MaxEntries), name)
		}
		if name == "weir_maglev_index" {
			u, err := c.maps.MaglevUsage()
			if err != nil {
				failed[name] = true
				continue
			}
			gauge(c.entries, float64(u.Tables), name)
			gauge(c.slabSlots, float64(u.Slots))
			gauge(c.slabUsed, float64(u.UsedSlots))
			continue
		}
		if !countable(m.Type()) {
			continue
		}
		if name == "weir_ct" {
			if ctErr == nil {
				gauge(c.entries, float64(ct.total), name)
			}
			continue
		}
		n, err := countEntries(m)
		if err != nil {
			failed[name] = true
			continue
		}
		gauge(c.entries, float64(n), name)
	}
	for name := range failed {
		gauge(c.readErrors, 1, name)
	}
	gauge(c.scrapeDuration, time.Since(start).Seconds())
}

// counterSeries is a counter with ready-made label pairs, sorted by
// name as the Desc's variable labels are.
type counterSeries struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	value  float64
}

func (m counterSeries) Desc() *prometheus.Desc { return m.desc }

func (m counterSeries) Write(out *dto.Metric) error {
	out.Label = m.labels
	out.Counter = &dto.Counter{Value: proto.Float64(m.value)}
	return nil
}

// countable reports whether a map's entries can be counted: hashes and
// tries. Arrays are always full, a ring buffer holds bytes, socket
// storage can't be listed.
func countable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.HashOfMaps, ebpf.LPMTrie:
		return true
	}
	return false
}

// serviceName is how a service ID is labelled: the frontend's service
// name ("namespace/name" or the edge name, with ":port" for a named
// port) and the view's scope.
type serviceName struct {
	Name  string
	Scope string
}

// readServiceNames maps service IDs to their names, from the frontend
// map: the one place the datapath keeps names.
func readServiceNames(m *bpf.Maps) (map[uint32]serviceName, error) {
	names := map[uint32]serviceName{}
	err := batchWalk(m.Frontends, func(_ *uint32, fv *bpf.FrontendValue) {
		n := fv.ServiceName()
		if p := fv.PortNameString(); p != "" {
			n += ":" + p
		}
		scope := "external"
		if fv.Scope == bpf.ScopeInternal {
			scope = "internal"
		}
		names[fv.ServiceID] = serviceName{Name: n, Scope: scope}
	})
	if err != nil {
		return names, fmt.Errorf("read map weir_frontends: %w", err)
	}
	return names, nil
}

// statsSnapshot is the datapath's counters summed over CPUs, labelled
// by name. Service IDs sharing a name and scope (the two halves of a
// dual-stack service) are summed.
type statsSnapshot struct {
	Services []serviceStats `json:"services"`
	// Backends is filled by labelBackends from backends.
	Backends   []backendStats `json:"backends"`
	Drops      []dropStats    `json:"drops"`
	EventsLost uint64         `json:"events_lost"`

	backends     []backendCounter // sorted by name, address and port
	backendNames []serviceName
}

// labelBackends fills Backends, sorted by service, scope and address.
func (s *statsSnapshot) labelBackends() {
	s.Backends = make([]backendStats, 0, len(s.backends))
	for i := range s.backends {
		c := &s.backends[i]
		n := s.backendNames[c.name]
		s.Backends = append(s.Backends, backendStats{Service: n.Name, Scope: n.Scope, Backend: c.addrPort().String(), Packets: c.packets, Bytes: c.bytes})
	}
	sortBackendStats(s.Backends)
}

// readBackendCounters reads every backend's counters, labelled by an
// index in the returned names; a map it can't read goes into errs. Backends of service IDs that share a name
// and scope (the halves of a dual-stack service) and an address add up:
// sorted, they are neighbours.
func readBackendCounters(m *bpf.Maps, names map[uint32]serviceName, hint int, errs map[string]error) ([]serviceName, []backendCounter) {
	// The empty name sorts first: index 0 labels a backend whose service
	// has no frontend, as index's zero values do.
	uniq := make([]serviceName, 0, len(names)+1)
	uniq = append(uniq, serviceName{})
	var maxSID uint32
	for id, n := range names {
		uniq = append(uniq, n)
		maxSID = max(maxSID, id)
	}
	cmpNames := func(a, b serviceName) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Scope, b.Scope))
	}
	slices.SortFunc(uniq, cmpNames)
	uniq = slices.Compact(uniq)
	index := make([]uint32, maxSID+1) // by service ID
	for id, n := range names {
		i, _ := slices.BinarySearchFunc(uniq, n, cmpNames)
		index[id] = uint32(i)
	}

	// A backend's ID waits in packets until its counters are read.
	out := make([]backendCounter, 0, hint)
	var maxBID uint32
	err := batchWalk(m.Backends, func(id *uint32, bv *bpf.BackendValue) {
		var n uint32
		if int(bv.ServiceID) < len(index) {
			n = index[bv.ServiceID]
		}
		out = append(out, backendCounter{name: n, addr: bv.Addr, port: bv.Port.Host(), packets: uint64(*id)})
		maxBID = max(maxBID, *id)
	})
	if err != nil {
		errs["weir_backends"] = fmt.Errorf("read map weir_backends: %w", err)
		return uniq, nil
	}
	stats, err := sumStatsUpTo(m.BackendStats, maxBID)
	if err != nil {
		errs["weir_backend_stats"] = err
	}
	for i := range out {
		c := &out[i]
		var st bpf.TrafficStats
		if c.packets < uint64(len(stats)) {
			st = stats[c.packets]
		}
		c.packets, c.bytes = st.Packets, st.Bytes
	}
	slices.SortFunc(out, func(a, b backendCounter) int {
		return cmp.Or(cmp.Compare(a.name, b.name), bytes.Compare(a.addr[:], b.addr[:]), cmp.Compare(a.port, b.port))
	})
	merged := out[:0]
	for _, c := range out {
		if last := len(merged) - 1; last >= 0 && merged[last].name == c.name && merged[last].addr == c.addr && merged[last].port == c.port {
			merged[last].packets += c.packets
			merged[last].bytes += c.bytes
			continue
		}
		merged = append(merged, c)
	}
	return uniq, merged
}

type serviceStats struct {
	Service string `json:"service"`
	Scope   string `json:"scope"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// backendCounter is a backend's counters as a scrape holds them: 40
// bytes and no strings, for 100k backends a tenth of the labelled form.
type backendCounter struct {
	name           uint32 // index in statsSnapshot.backendNames
	port           uint16
	addr           bpf.Addr
	packets, bytes uint64
}

func (c *backendCounter) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(c.addr.IP(), c.port)
}

type backendStats struct {
	Service string `json:"service"`
	Scope   string `json:"scope"`
	Backend string `json:"backend"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

type dropStats struct {
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// readStats reads every counter. A map that can't be read is reported in
// the error map (by map name) and left out; the rest is still returned.
func readStats(m *bpf.Maps) (*statsSnapshot, map[string]error) {
	snap, _, errs := readStatsAndNames(m, 0)
	snap.labelBackends()
	sort.Slice(snap.Services, func(i, j int) bool {
		a, b := snap.Services[i], snap.Services[j]
		return a.Service < b.Service || a.Service == b.Service && a.Scope < b.Scope
	})
	return snap, errs
}

// sortBackendStats orders backends by service, scope and address.
func sortBackendStats(bs []backendStats) {
	slices.SortFunc(bs, func(a, b backendStats) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Scope, b.Scope), strings.Compare(a.Backend, b.Backend))
	})
}

// readStatsAndNames is readStats, services unsorted, that also returns
// the service names it read; backendsHint is how many backends to make
// room for. Maps are read in batches: a scrape at 100k backends makes
// tens of syscalls, not hundreds of thousands.
func readStatsAndNames(m *bpf.Maps, backendsHint int) (*statsSnapshot, map[uint32]serviceName, map[string]error) {
	errs := map[string]error{}
	snap := &statsSnapshot{Services: []serviceStats{}, Backends: []backendStats{}, Drops: []dropStats{}}
	names, err := readServiceNames(m)
	if err != nil {
		errs["weir_frontends"] = err
	}

	svcs := map[serviceName]*serviceStats{}
	var maxID uint32
	for id := range names {
		maxID = max(maxID, id)
	}
	svcStats, err := sumStatsUpTo(m.ServiceStats, maxID)
	if err != nil {
		errs["weir_service_stats"] = err
	}
	for id, n := range names {
		var st bpf.TrafficStats
		if int(id) < len(svcStats) {
			st = svcStats[id]
		}
		s := svcs[n]
		if s == nil {
			s = &serviceStats{Service: n.Name, Scope: n.Scope}
			svcs[n] = s
		}
		s.Packets += st.Packets
		s.Bytes += st.Bytes
	}
	for _, s := range svcs {
		snap.Services = append(snap.Services, *s)
	}

	snap.backendNames, snap.backends = readBackendCounters(m, names, backendsHint, errs)

	for _, r := range bpf.Reasons() {
		if r == bpf.ReasonNone {
			continue
		}
		st, err := sumStats(m.Drops, uint32(r))
		if err != nil {
			errs["weir_drops"] = err
			break
		}
		snap.Drops = append(snap.Drops, dropStats{Reason: r.String(), Packets: st.Packets, Bytes: st.Bytes})
	}

	if m.EventsLost != nil {
		n, err := sumEventsLost(m.EventsLost)
		if err != nil {
			errs["weir_events_lost"] = err
		}
		snap.EventsLost = n
	}
	return snap, names, errs
}

// sumStatsUpTo sums the per-CPU counters of keys 0 to last of a per-CPU
// array, read in batches (key by key where the kernel has no batch
// operations). A key the map doesn't hold reads as zero.
func sumStatsUpTo(m *ebpf.Map, last uint32) ([]bpf.TrafficStats, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	n := int(min(last, m.MaxEntries()-1)) + 1
	out := make([]bpf.TrafficStats, n)
	keys := make([]uint32, min(batchSize, n))
	vals := make([]bpf.TrafficStats, len(keys)*ncpu)
	var cursor ebpf.MapBatchCursor
	for read := 0; read < n; {
		got, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i, k := range keys[:got] {
			if int(k) < n {
				out[k] = sumCPUs(vals[i*ncpu : (i+1)*ncpu])
			}
		}
		read += got
		if errors.Is(err, ebpf.ErrKeyNotExist) || got == 0 && err == nil {
			return out, nil
		}
		if err != nil {
			if read == 0 {
				return sumStatsByKeys(m, out)
			}
			return out, fmt.Errorf("read map %s: %w", mapName(m), err)
		}
	}
	return out, nil
}

// sumStatsByKeys fills out key by key.
func sumStatsByKeys(m *ebpf.Map, out []bpf.TrafficStats) ([]bpf.TrafficStats, error) {
	for k := range out {
		st, err := sumStats(m, uint32(k))
		if err != nil {
			return out, fmt.Errorf("read map %s: %w", mapName(m), err)
		}
		out[k] = st
	}
	return out, nil
}

func sumCPUs(per []bpf.TrafficStats) bpf.TrafficStats {
	var sum bpf.TrafficStats
	for _, s := range per {
		sum.Packets += s.Packets
		sum.Bytes += s.Bytes
	}
	return sum
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return m.String()
}

// sumStats sums one per-CPU counter over the CPUs.
func sumStats(m *ebpf.Map, key uint32) (bpf.TrafficStats, error) {
	var per []bpf.TrafficStats
	var sum bpf.TrafficStats
	if err := m.Lookup(&key, &per); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return sum, nil
		}
		return sum, err
	}
	for _, s := range per {
		sum.Packets += s.Packets
		sum.Bytes += s.Bytes
	}
	return sum, nil
}

// sumEventsLost sums weir_events_lost over the CPUs.
func sumEventsLost(m *ebpf.Map) (uint64, error) {
	var per []uint64
	if err := m.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read map weir_events_lost: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// batchSize is how many entries one batch syscall reads. Hash maps fail
// a batch smaller than their fullest bucket; 4096 is far above that.
const batchSize = 4096

// countEntries counts a hash-like map's entries in batches (about 130
// syscalls for 512k entries rather than 512k), or key by key where the
// map type has no batch operations (LPM tries).
func countEntries(m *ebpf.Map) (int, error) {
	byteArrays := func(size uint32) any {
		t := reflect.SliceOf(reflect.ArrayOf(int(size), reflect.TypeFor[byte]()))
		return reflect.MakeSlice(t, batchSize, batchSize).Interface()
	}
	keys, vals := byteArrays(m.KeySize()), byteArrays(m.ValueSize())
	var cursor ebpf.MapBatchCursor
	n := 0
	for {
		got, err := m.BatchLookup(&cursor, keys, vals, nil)
		n += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			if n == 0 {
				return countByKeys(m)
			}
			return n, err
		}
	}
}

// countByKeys counts entries one key at a time.
func countByKeys(m *ebpf.Map) (int, error) {
	n := 0
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil: start from the first key
	for {
		if err := m.NextKey(cur, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, err
		}
		n++
		copy(key, next)
		cur = key
	}
}

// walkCT calls visit for every conntrack entry, read in batches (with a
// fallback to key-by-key iteration where batches are not supported).
// The map changes while it is read: an entry may be missed or seen twice,
// each entry is whole. visit must not keep its pointers.
func walkCT(m *ebpf.Map, visit func(*bpf.CTKey, *bpf.CTValue)) error {
	if err := batchWalk(m, visit); err != nil {
		return fmt.Errorf("read map weir_ct: %w", err)
	}
	return nil
}

// batchWalk calls visit for every entry of a hash-like map, read in
// batches of batchSize, or key by key where the map has no batch
// operations. visit must not keep its pointers.
func batchWalk[K, V any](m *ebpf.Map, visit func(*K, *V)) error {
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	seen := false
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			visit(&keys[i], &vals[i])
		}
		seen = seen || n > 0
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			if !seen {
				return walkByKeys(m, visit)
			}
			return err
		}
	}
}

func walkByKeys[K, V any](m *ebpf.Map, visit func(*K, *V)) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		visit(&k, &v)
	}
	return it.Err()
}

// ctSummary counts conntrack entries, in all and per service name.
type ctSummary struct {
	total      int
	perService map[string]int
}

func conntrackSummary(m *ebpf.Map, names map[uint32]serviceName) (ctSummary, error) {
	s := ctSummary{perService: map[string]int{}}
	if m == nil {
		return s, errors.New("map weir_ct is not pinned")
	}
	err := walkCT(m, func(_ *bpf.CTKey, v *bpf.CTValue) {
		s.total++
		if n, ok := names[v.ServiceID]; ok {
			s.perService[n.Name]++
		}
	})
	return s, err
}
