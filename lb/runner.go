package lb

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Runner calls a function (typically a Reconciler's Sync) on request,
// with bounded frequency, like kube-proxy's BoundedFrequencyRunner:
//   - requests collapse: any number of Requests before a run cause one run;
//   - two runs start at least minInterval apart, so a burst of changes is
//     batched instead of hammering the datapath;
//   - a run happens at least every maxInterval even without requests (the
//     periodic safety net);
//   - after a failed run it retries on its own with exponential backoff
//     (never sooner than minInterval, never later than maxInterval);
//     requests don't cut a backoff short, so a failing datapath isn't
//     retried in a tight loop by a stream of changes.
type Runner struct {
	fn           func() error
	min, max     time.Duration
	clock        Clock
	backoffStart time.Duration
	backoffMax   time.Duration
	log          *slog.Logger
	requests     chan struct{}
}

// RunnerOption configures a Runner.
type RunnerOption func(*Runner)

// WithClock replaces the wall clock (tests).
func WithClock(c Clock) RunnerOption { return func(r *Runner) { r.clock = c } }

// WithBackoff sets the first retry delay after a failure and its cap; the
// delay doubles with every consecutive failure. The default is 1s to 30s.
func WithBackoff(initial, max time.Duration) RunnerOption {
	return func(r *Runner) { r.backoffStart, r.backoffMax = initial, max }
}

// WithLogger receives a warning for every failed run; the default
// discards them (the function usually reports its own errors).
func WithLogger(l *slog.Logger) RunnerOption { return func(r *Runner) { r.log = l } }

// NewRunner returns a Runner calling fn. It panics on arguments no caller
// can mean: a nil fn, a negative minInterval, or a maxInterval not above
// zero and not at least minInterval.
func NewRunner(fn func() error, minInterval, maxInterval time.Duration, opts ...RunnerOption) *Runner {
	if fn == nil {
		panic("lb.NewRunner: fn is nil (pass the function to run, e.g. a wrapper of Reconciler.Sync)")
	}
	if minInterval < 0 || maxInterval <= 0 || maxInterval < minInterval {
		panic(fmt.Sprintf("lb.NewRunner: want 0 <= minInterval <= maxInterval and maxInterval > 0, got %s and %s", minInterval, maxInterval))
	}
	r := &Runner{
		fn:           fn,
		min:          minInterval,
		max:          maxInterval,
		clock:        RealClock{},
		backoffStart: time.Second,
		backoffMax:   30 * time.Second,
		log:          slog.New(slog.DiscardHandler),
		requests:     make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(r)
	}
	if r.backoffStart <= 0 || r.backoffMax < r.backoffStart {
		panic(fmt.Sprintf("lb.NewRunner: want 0 < backoff initial <= max, got %s and %s", r.backoffStart, r.backoffMax))
	}
	return r
}

// Request asks for a run as soon as the limits allow. It never blocks;
// requests made before Run starts are kept.
func (r *Runner) Request() {
	select {
	case r.requests <- struct{}{}:
	default: // a request is already pending; this one collapses into it
	}
}

// Run calls fn as requested and as the intervals say until ctx is done.
// The first run happens on the first Request, or maxInterval after Run
// started. Run must not be called concurrently with itself.
func (r *Runner) Run(ctx context.Context) {
	var (
		start    = r.clock.Now()
		last     time.Time // start of the last run
		ran      bool
		pending  bool
		failures int
		timer    Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for ctx.Err() == nil {
		select {
		case <-r.requests:
			pending = true
		default:
		}
		now := r.clock.Now()
		at := r.next(start, last, ran, pending, failures, now)
		if !at.After(now) {
			last, ran, pending = now, true, false
			if err := r.fn(); err != nil {
				failures++
				r.log.Warn("run failed, retrying with backoff", "failures", failures,
					"retry in", r.retryDelay(failures), "err", err)
			} else {
				failures = 0
			}
			continue
		}
		if timer == nil {
			timer = r.clock.NewTimer(at.Sub(now))
		} else {
			timer.Reset(at.Sub(now))
		}
		select {
		case <-ctx.Done():
		case <-r.requests:
			pending = true
		case <-timer.C():
		}
	}
}

// next is when the next run is due.
func (r *Runner) next(start, last time.Time, ran, pending bool, failures int, now time.Time) time.Time {
	switch {
	case !ran && pending:
		return now
	case !ran:
		return start.Add(r.max)
	case failures > 0:
		return last.Add(r.retryDelay(failures))
	case pending:
		return last.Add(r.min)
	}
	return last.Add(r.max)
}

// retryDelay is the wait after the given number of consecutive failures.
func (r *Runner) retryDelay(failures int) time.Duration {
	d := r.backoffStart
	for i := 1; i < failures && d < r.backoffMax; i++ {
		d *= 2
	}
	return max(r.min, min(d, r.backoffMax, r.max))
}
