package xdp_test

import (
	"context"
	"testing"

	"github.com/weir-lb/weir/internal/testutil"
	"github.com/weir-lb/weir/xdp/xdpbench"
)

// BenchmarkXDP measures weir_xdp with BPF_PROG_TEST_RUN, b.N packets in
// one run, through the harness of package xdpbench (see its doc.go for
// why a harness restores every frame, and `weir bench xdp` for the full
// sweep). ns/pkt is the kernel's time per packet, which leaves out the
// time the thread was preempted; x-noop divides it by the no-op baseline
// (the same harness handing packets to XDP_TX) measured right after, as
// many packets. xdpbench checks that every packet got the scenario's
// verdict and that nothing was dropped.
func BenchmarkXDP(b *testing.B) {
	testutil.RequirePrivileged(b)
	ctx := context.Background()
	s, err := xdpbench.NewSetup(ctx, xdpbench.SetupOptions{Services: 1, IP: 4, Proto: "tcp"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	for _, name := range []string{xdpbench.ScenarioNoop, xdpbench.ScenarioPassNonService, xdpbench.ScenarioEstablished, xdpbench.ScenarioNewFlow} {
		b.Run(name, func(b *testing.B) {
			c, err := s.Case(ctx, name, 64, 1)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			b.ResetTimer()
			ns, err := c.Measure(ctx, b.N)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			base, err := c.MeasureBaseline(ctx, b.N)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(ns, "ns/pkt")
			if base > 0 {
				b.ReportMetric(ns/base, "x-noop")
			}
		})
	}
}
