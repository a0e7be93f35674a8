package lb_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	minGap   = 1 * time.Second
	maxGap   = 60 * time.Second
	settleIn = 10 * time.Second // real time; only a hung runner takes it
)

// runnerHarness drives a Runner on a fake clock. Every step waits until
// the runner is blocked on its timer again, so what it did in between is
// settled and the next step is deterministic.
type runnerHarness struct {
	t      *testing.T
	clock  *lbtest.Clock
	r      *lb.Runner
	arms   int
	mu     sync.Mutex
	runs   []time.Time
	errs   []error // returned by the next runs, in order; then nil
	cancel context.CancelFunc
	done   chan struct{}
}

func newRunnerHarness(t *testing.T, opts ...lb.RunnerOption) *runnerHarness {
	t.Helper()
	h := &runnerHarness{t: t, clock: lbtest.NewClock(t0), done: make(chan struct{})}
	opts = append([]lb.RunnerOption{lb.WithClock(h.clock)}, opts...)
	h.r = lb.NewRunner(h.run, minGap, maxGap, opts...)
	return h
}

func (h *runnerHarness) run() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runs = append(h.runs, h.clock.Now())
	if len(h.errs) == 0 {
		return nil
	}
	err := h.errs[0]
	h.errs = h.errs[1:]
	return err
}

// start runs the Runner until the test ends.
func (h *runnerHarness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.r.Run(ctx)
	}()
	h.t.Cleanup(func() {
		cancel()
		<-h.done
	})
	h.settle()
}

// settle waits for the runner to arm its timer once more.
func (h *runnerHarness) settle() {
	h.t.Helper()
	h.arms++
	if !h.clock.WaitArms(h.arms, settleIn) {
		h.t.Fatalf("the runner didn't block on its timer (arm %d)", h.arms)
	}
}

func (h *runnerHarness) request() {
	h.t.Helper()
	h.r.Request()
	h.settle()
}

// advance moves the clock; when a timer fires, it waits for the runner to
// settle again.
func (h *runnerHarness) advance(d time.Duration) {
	h.t.Helper()
	if h.clock.Advance(d) > 0 {
		h.settle()
	}
}

// wantRuns checks the runs so far, as offsets from t0.
func (h *runnerHarness) wantRuns(offsets ...time.Duration) {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var got []time.Duration
	for _, r := range h.runs {
		got = append(got, r.Sub(t0))
	}
	if !slices.Equal(got, offsets) && !(len(got) == 0 && len(offsets) == 0) {
		h.t.Errorf("runs at %v, want %v", got, offsets)
	}
}

// wantNext checks the deadline the runner waits for.
func (h *runnerHarness) wantNext(offset time.Duration) {
	h.t.Helper()
	p := h.clock.Pending()
	if len(p) != 1 || p[0].Sub(t0) != offset {
		h.t.Errorf("runner waits for %v, want t0+%s", p, offset)
	}
}

func TestRunnerRequestsCollapse(t *testing.T) {
	h := newRunnerHarness(t)
	h.r.Request()
	h.r.Request()
	h.r.Request()
	h.start()
	h.wantRuns(0)
	h.wantNext(maxGap)
}

func TestRunnerMinInterval(t *testing.T) {
	h := newRunnerHarness(t)
	h.start()
	h.request()
	h.wantRuns(0)
	for range 5 {
		h.request()
	}
	h.wantNext(minGap)
	h.advance(minGap - time.Nanosecond)
	h.wantRuns(0)
	h.advance(time.Nanosecond)
	h.wantRuns(0, minGap)
	// A request long after the last run runs at once.
	h.advance(10 * time.Second)
	h.request()
	h.wantRuns(0, minGap, minGap+10*time.Second)
}

func TestRunnerMaxInterval(t *testing.T) {
	h := newRunnerHarness(t)
	h.start()
	h.wantNext(maxGap)
	h.advance(maxGap)
	h.wantRuns(maxGap)
	h.advance(maxGap)
	h.wantRuns(maxGap, 2*maxGap)
}

func TestRunnerBackoff(t *testing.T) {
	h := newRunnerHarness(t, lb.WithBackoff(2*time.Second, 5*time.Second))
	boom := errors.New("datapath down")
	h.errs = []error{boom, boom, boom, boom}
	h.start()
	h.request()
	h.wantRuns(0)
	h.wantNext(2 * time.Second)
	// Requests don't cut the backoff short.
	h.request()
	h.wantNext(2 * time.Second)
	h.advance(2 * time.Second)
	h.wantNext(2*time.Second + 4*time.Second)
	h.advance(4 * time.Second)
	h.wantNext(6*time.Second + 5*time.Second) // capped
	h.advance(5 * time.Second)
	h.wantNext(11*time.Second + 5*time.Second)
	h.advance(5 * time.Second) // the fifth run succeeds
	h.wantRuns(0, 2*time.Second, 6*time.Second, 11*time.Second, 16*time.Second)
	h.wantNext(16*time.Second + maxGap)
}

func TestRunnerBackoffNeverBelowMinInterval(t *testing.T) {
	h := newRunnerHarness(t, lb.WithBackoff(time.Millisecond, time.Millisecond))
	h.errs = []error{errors.New("once")}
	h.start()
	h.request()
	h.wantNext(minGap)
}

func TestRunnerStopsWithContext(t *testing.T) {
	h := newRunnerHarness(t)
	h.start()
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(settleIn):
		t.Fatal("Run didn't return after its context was cancelled")
	}
}

func TestRunnerRealClock(t *testing.T) {
	ran := make(chan struct{}, 1)
	r := lb.NewRunner(func() error {
		select {
		case ran <- struct{}{}:
		default:
		}
		return nil
	}, 0, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r.Request()
	select {
	case <-ran:
	case <-time.After(settleIn):
		t.Fatal("a request didn't cause a run")
	}
}

func TestNewRunnerRejectsBadArguments(t *testing.T) {
	ok := func() error { return nil }
	for name, f := range map[string]func(){
		"nil fn":          func() { lb.NewRunner(nil, 0, time.Second) },
		"negative min":    func() { lb.NewRunner(ok, -1, time.Second) },
		"zero max":        func() { lb.NewRunner(ok, 0, 0) },
		"max below min":   func() { lb.NewRunner(ok, 2*time.Second, time.Second) },
		"backoff max < 1": func() { lb.NewRunner(ok, 0, time.Second, lb.WithBackoff(time.Second, time.Millisecond)) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}
