package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"time"

	"github.com/spf13/pflag"
)

// defaultMemoryLimit is the Go runtime's soft memory limit unless
// --memory-limit or GOMEMLIMIT says otherwise. It is not a cap: the heap
// may grow past it (the runtime then collects more often, never fails an
// allocation). It only stops the default GOGC=100 from letting the heap
// reach twice the live data when that is more than the agent needs at
// 10k services x 10 endpoints.
const defaultMemoryLimit = 0

// steadyGCPercent is the garbage collector's target once the agent has
// programmed its source's state, unless GOGC says otherwise. The Go
// default (100) lets the heap grow to twice the live data between
// collections; after the first sync the agent allocates little (a change,
// a scrape), so collecting at 1.5x costs little CPU and keeps ~60 MB of
// resident memory off a node with 10k services x 10 endpoints. The
// first sync runs at a looser target (firstSyncGCPercent).
const steadyGCPercent = 25

// firstSyncGCPercent is the garbage collector's target while the agent
// programs its source's whole state for the first time, unless GOGC says
// otherwise. That sync allocates in one burst most of what the agent
// keeps; at the default target the collector ran through it several
// times, 10-25 % of its time at 10k services. A looser target costs a
// higher start-up peak, which settleRuntime returns right after.
const firstSyncGCPercent = 400

// relaxGCForFirstSync sets firstSyncGCPercent and returns what puts the
// previous target back; it does nothing when GOGC is set.
func relaxGCForFirstSync(env func(string) string) (restore func()) {
	if env("GOGC") != "" {
		return func() {}
	}
	prev := debug.SetGCPercent(firstSyncGCPercent)
	return func() { debug.SetGCPercent(prev) }
}

// settleRuntime runs once, after the first complete programming: it
// returns the memory that start-up needed and the agent no longer does
// (decoded lists, translation scratch) to the kernel, and tightens the
// GC target. Without it, resident memory stays near the start-up peak.
func settleRuntime(env func(string) string) {
	if env("GOGC") == "" {
		debug.SetGCPercent(steadyGCPercent)
	}
	debug.FreeOSMemory()
}

// runtimeOptions are the agent's Go runtime and debugging flags.
type runtimeOptions struct {
	memoryLimit  int64
	pprofAddress string
}

// runtimeFlags adds --memory-limit and the hidden --pprof-address.
func runtimeFlags(fs *pflag.FlagSet, o *runtimeOptions) {
	fs.Int64Var(&o.memoryLimit, "memory-limit", defaultMemoryLimit,
		"Go soft memory limit in bytes (debug.SetMemoryLimit): above it the garbage collector runs more often; 0 turns it off. GOMEMLIMIT, when set, wins")
	fs.StringVar(&o.pprofAddress, "pprof-address", "", "address of a net/http/pprof server (debugging: heap and CPU profiles); empty disables it")
	_ = fs.MarkHidden("pprof-address")
}

// apply sets the memory limit and starts the pprof server. The server
// lives as long as the process: it is a debugging aid.
func (o runtimeOptions) apply(log *slog.Logger, env func(string) string) error {
	if o.memoryLimit < 0 {
		return fmt.Errorf("--memory-limit %d: want bytes, or 0 for none", o.memoryLimit)
	}
	if env("GOMEMLIMIT") == "" {
		limit := o.memoryLimit
		if limit == 0 {
			limit = math.MaxInt64 // the runtime's "no limit"
		}
		debug.SetMemoryLimit(limit)
	}
	if o.pprofAddress == "" {
		return nil
	}
	ln, err := net.Listen("tcp", o.pprofAddress)
	if err != nil {
		return fmt.Errorf("--pprof-address %s: %w", o.pprofAddress, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "err", err)
		}
	}()
	log.Info("pprof server started", "address", ln.Addr().String())
	return nil
}
