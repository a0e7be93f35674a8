package lb_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

// BenchmarkReconcile measures a full sync from empty maps and a one-backend
// change among many services, against the fake and (reconcile_bpf_test.go)
// the real maps. The services are ClusterIPs, the common case: one
// internal view each with a table of 251 slots.
func BenchmarkReconcile(b *testing.B) {
	b.Run("fake", func(b *testing.B) {
		b.Run("full/services=10000/backends=10", func(b *testing.B) {
			benchFull(b, func(testing.TB) lb.Datapath { return lbtest.NewFake() }, 10000, 10)
		})
		b.Run("change/services=10000", func(b *testing.B) {
			benchChange(b, lbtest.NewFake(), 10000)
		})
		b.Run("change-latency/services=10000", func(b *testing.B) {
			benchChangeLatency(b, lbtest.NewFake(), 10000, 200)
		})
	})
	b.Run("bpf", benchBPF)
}

func genServices(n, backends int) []*lb.Service {
	all := make([]*lb.Service, n)
	for i := range all {
		all[i] = genService(i, backends)
	}
	return all
}

// benchFull syncs n services into an empty datapath per iteration; fresh
// returns that datapath (empty) outside the timer.
func benchFull(b *testing.B, fresh func(testing.TB) lb.Datapath, n, backends int) {
	all := genServices(n, backends)
	writes := 0
	for b.Loop() {
		b.StopTimer()
		dp := fresh(b)
		r := newReconciler(b, dp)
		b.StartTimer()
		r.Replace(all)
		res := mustSync(b, r)
		b.StopTimer()
		writes = res.Writes
		if len(res.Updated) != n {
			b.Fatalf("updated %d services, want %d", len(res.Updated), n)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(writes), "writes/op")
}

// benchChange syncs n services of 10 backends, then per iteration flips
// one backend of one service between active and terminating (its entry,
// its view's table and its key change) and syncs.
func benchChange(b *testing.B, dp lb.Datapath, n int) {
	all := genServices(n, 10)
	r := newReconciler(b, dp)
	r.Replace(all)
	settle(b, r)
	i, writes := 0, 0
	for b.Loop() {
		s := all[i%n]
		if s.Backends[0].State == lb.BackendActive {
			s.Backends[0].State = lb.BackendTerminating
		} else {
			s.Backends[0].State = lb.BackendActive
		}
		r.Upsert(s)
		res := mustSync(b, r)
		if len(res.Updated) != 1 {
			b.Fatalf("iteration %d: updated %v, want one service", i, res.Updated)
		}
		writes += res.Writes
		i++
	}
	b.ReportMetric(float64(writes)/float64(max(i, 1)), "writes/op")
}

// benchChangeLatency times one-service changes one by one: each
// iteration makes perOp changes as benchChange does (one backend of one
// service flips between active and terminating, then a Sync) and the
// benchmark reports the distribution of the single-change latencies over
// all iterations: p50-ns, p99-ns and max-ns. ns/op is per perOp changes.
func benchChangeLatency(b *testing.B, dp lb.Datapath, n, perOp int) {
	all := genServices(n, 10)
	r := newReconciler(b, dp)
	r.Replace(all)
	settle(b, r)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		for range perOp {
			s := all[i%n]
			if s.Backends[0].State == lb.BackendActive {
				s.Backends[0].State = lb.BackendTerminating
			} else {
				s.Backends[0].State = lb.BackendActive
			}
			start := time.Now()
			r.Upsert(s)
			res := mustSync(b, r)
			lat = append(lat, time.Since(start))
			if len(res.Updated) != 1 {
				b.Fatalf("change %d: updated %v, want one service", i, res.Updated)
			}
			i++
		}
	}
	slices.Sort(lat)
	at := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Nanoseconds())
	}
	b.ReportMetric(at(0.50), "p50-ns")
	b.ReportMetric(at(0.99), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds()), "max-ns")
}

func benchName(what string, n int) string { return fmt.Sprintf("%s/services=%d", what, n) }
