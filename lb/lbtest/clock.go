package lbtest

import (
	"sync"
	"time"

	"github.com/weir-lb/weir/lb"
)

// Clock is a manual lb.Clock. Time stands still until Advance. Every arm
// of a timer (NewTimer or Reset) is counted, so a test can wait until the
// code under test has computed its next deadline and is blocked on it
// before moving time: steps stay deterministic without sleeping.
type Clock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    time.Time
	arms   int
	timers []*clockTimer
}

var _ lb.Clock = (*Clock)(nil)

// NewClock returns a Clock reading start.
func NewClock(start time.Time) *Clock {
	c := &Clock{now: start}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Clock) NewTimer(d time.Duration) lb.Timer {
	t := &clockTimer{clock: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

// Advance moves time forward by d and fires the timers that came due. It
// returns how many fired.
func (c *Clock) Advance(d time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	fired := 0
	for _, t := range c.timers {
		if t.active && !t.deadline.After(c.now) {
			t.fireLocked(c.now)
			fired++
		}
	}
	return fired
}

// Arms returns how many times a timer was armed so far.
func (c *Clock) Arms() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.arms
}

// WaitArms blocks until timers were armed at least n times in total, or
// until timeout of real time passed (a hung test, not a timing
// assertion); it reports whether the count was reached.
func (c *Clock) WaitArms(n int, timeout time.Duration) bool {
	stop := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.cond.Broadcast()
	})
	defer stop.Stop()
	deadline := time.Now().Add(timeout)
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.arms < n {
		if !time.Now().Before(deadline) {
			return false
		}
		c.cond.Wait()
	}
	return true
}

// Pending returns the deadlines of the armed timers.
func (c *Clock) Pending() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Time
	for _, t := range c.timers {
		if t.active {
			out = append(out, t.deadline)
		}
	}
	return out
}

type clockTimer struct {
	clock    *Clock
	ch       chan time.Time
	deadline time.Time // guarded by clock.mu
	active   bool      // guarded by clock.mu
}

func (t *clockTimer) C() <-chan time.Time { return t.ch }

// Reset re-arms the timer, discarding an expiry not yet received.
func (t *clockTimer) Reset(d time.Duration) bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	was := t.active
	t.drain()
	t.deadline, t.active = c.now.Add(d), true
	c.arms++
	c.cond.Broadcast()
	if d <= 0 {
		t.fireLocked(c.now)
	}
	return was
}

func (t *clockTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	was := t.active
	t.active = false
	t.drain()
	return was
}

func (t *clockTimer) fireLocked(now time.Time) {
	t.active = false
	select {
	case t.ch <- now:
	default:
	}
}

func (t *clockTimer) drain() {
	select {
	case <-t.ch:
	default:
	}
}
