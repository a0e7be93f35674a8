package main

import (
	"errors"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-lb/weir/bpf"
)

// mapCollector reads the per-CPU counters and map occupancy at scrape
// time, so the datapath does no per-packet work for metrics beyond its
// per-CPU increments.
type mapCollector struct {
	maps *bpf.Maps

	svcPackets, svcBytes, bePackets, beBytes *prometheus.Desc
	drops, dropBytes                         *prometheus.Desc
	entries, capacity                        *prometheus.Desc
	scrapeErrors                             *prometheus.Desc
}

func newMapCollector(m *bpf.Maps) *mapCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &mapCollector{
		maps:         m,
		svcPackets:   d("weir_service_packets_total", "Packets load-balanced per service view.", "service", "scope"),
		svcBytes:     d("weir_service_bytes_total", "Bytes load-balanced per service view.", "service", "scope"),
		bePackets:    d("weir_backend_packets_total", "Packets sent to each backend.", "service", "backend"),
		beBytes:      d("weir_backend_bytes_total", "Bytes sent to each backend.", "service", "backend"),
		drops:        d("weir_drops_total", "Packets dropped or rejected by the datapath, by reason.", "reason"),
		dropBytes:    d("weir_drop_bytes_total", "Bytes dropped or rejected by the datapath, by reason.", "reason"),
		entries:      d("weir_map_entries", "Entries in each BPF map.", "map"),
		capacity:     d("weir_map_capacity", "Capacity (max entries) of each BPF map.", "map"),
		scrapeErrors: d("weir_map_read_errors", "Maps that could not be read during this scrape.", "map"),
	}
}

func (c *mapCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.svcPackets, c.svcBytes, c.bePackets, c.beBytes, c.drops, c.dropBytes, c.entries, c.capacity, c.scrapeErrors} {
		ch <- d
	}
}

func (c *mapCollector) Collect(ch chan<- prometheus.Metric) {
	fail := func(m string) { ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.GaugeValue, 1, m) }
	names, scopes, err := c.serviceNames()
	if err != nil {
		fail("weir_frontends")
	}
	for id, name := range names {
		st, err := sumStats(c.maps.ServiceStats, uint32(id))
		if err != nil {
			fail("weir_service_stats")
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.svcPackets, prometheus.CounterValue, float64(st.Packets), name, scopes[id])
		ch <- prometheus.MustNewConstMetric(c.svcBytes, prometheus.CounterValue, float64(st.Bytes), name, scopes[id])
	}
	var (
		bid uint32
		bv  bpf.BackendValue
	)
	it := c.maps.Backends.Iterate()
	for it.Next(&bid, &bv) {
		st, err := sumStats(c.maps.BackendStats, bid)
		if err != nil {
			fail("weir_backend_stats")
			continue
		}
		be := netip.AddrPortFrom(bv.Addr.IP(), bv.Port.Host()).String()
		svc := names[bv.ServiceID]
		ch <- prometheus.MustNewConstMetric(c.bePackets, prometheus.CounterValue, float64(st.Packets), svc, be)
		ch <- prometheus.MustNewConstMetric(c.beBytes, prometheus.CounterValue, float64(st.Bytes), svc, be)
	}
	if it.Err() != nil {
		fail("weir_backends")
	}
	for _, r := range bpf.Reasons() {
		if r == 0 {
			continue
		}
		st, err := sumStats(c.maps.Drops, uint32(r))
		if err != nil {
			fail("weir_drops")
			continue
		}
		name := bpf.ReasonName(uint8(r))
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(st.Packets), name)
		ch <- prometheus.MustNewConstMetric(c.dropBytes, prometheus.CounterValue, float64(st.Bytes), name)
	}
	for name, m := range c.maps.All() {
		if m == nil {
			continue
		}
		info, err := m.Info()
		if err != nil {
			fail(name)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(info.MaxEntries), name)
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.HashOfMaps, ebpf.LPMTrie:
			n, err := countEntries(m)
			if err != nil {
				fail(name)
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(n), name)
		}
	}
}

// serviceNames maps service IDs to "service[:port]" and their scope, from
// the frontend map.
func (c *mapCollector) serviceNames() (map[uint32]string, map[uint32]string, error) {
	names, scopes := map[uint32]string{}, map[uint32]string{}
	var (
		id uint32
		fv bpf.FrontendValue
	)
	it := c.maps.Frontends.Iterate()
	for it.Next(&id, &fv) {
		n := fv.ServiceName()
		if p := fv.PortNameString(); p != "" {
			n += ":" + p
		}
		names[fv.ServiceID] = n
		scope := "external"
		if fv.Scope == 1 {
			scope = "internal"
		}
		scopes[fv.ServiceID] = scope
	}
	return names, scopes, it.Err()
}

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

func countEntries(m *ebpf.Map) (int, error) {
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
