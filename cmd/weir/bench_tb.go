package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// benchTB lets `weir bench kube-proxy` use the test-support helpers that
// build its topology and cluster (e2e/kube, internal/testutil) outside
// `go test`: they take a testing.TB for logging, failing and cleaning
// up. Fatal and FailNow unwind to runTB, which turns them into an error;
// cleanups run last-in first-out when runTB returns, also on failure and
// on panics. The embedded interface is nil and only satisfies TB's
// unexported method: every method a helper can call is defined below.
type benchTB struct {
	testing.TB
	name string
	ctx  context.Context
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	skipped  bool
	errs     []error
}

// tbStop is the panic value of Fatal, FailNow and Skip.
type tbStop struct{}

// runTB runs f with a fresh benchTB, then its cleanups, and returns the
// first failure as an error.
func runTB(ctx context.Context, name string, log io.Writer, f func(tb *benchTB)) (err error) {
	tb := &benchTB{name: name, ctx: ctx, log: log}
	defer func() {
		r := recover()
		tb.runCleanups()
		if r != nil {
			if _, ok := r.(tbStop); !ok {
				panic(r)
			}
		}
		err = tb.err()
	}()
	f(tb)
	return nil
}

func (t *benchTB) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.skipped && len(t.errs) == 0 {
		return errors.New(t.name + ": a prerequisite is missing (see the log)")
	}
	return errors.Join(t.errs...)
}

func (t *benchTB) runCleanups() {
	for {
		t.mu.Lock()
		if len(t.cleanups) == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		t.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(tbStop); !ok {
						t.Errorf("cleanup panicked: %v", r)
					}
				}
			}()
			f()
		}()
	}
}

func (t *benchTB) Helper()                  {}
func (t *benchTB) Name() string             { return t.name }
func (t *benchTB) Context() context.Context { return t.ctx }
func (t *benchTB) Output() io.Writer        { return t.log }
func (t *benchTB) Attr(key, value string)   {}
func (t *benchTB) Log(args ...any)          { fmt.Fprintln(t.log, args...) }
func (t *benchTB) Logf(format string, args ...any) {
	fmt.Fprintf(t.log, format+"\n", args...)
}

func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *benchTB) Error(args ...any) { t.record(fmt.Sprint(args...)) }
func (t *benchTB) Errorf(format string, args ...any) {
	t.record(fmt.Sprintf(format, args...))
}

func (t *benchTB) record(msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
	t.errs = append(t.errs, errors.New(msg))
}

func (t *benchTB) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}

func (t *benchTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *benchTB) FailNow() {
	t.Fail()
	panic(tbStop{})
}

func (t *benchTB) Fatal(args ...any) {
	t.Error(args...)
	panic(tbStop{})
}

func (t *benchTB) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	panic(tbStop{})
}

func (t *benchTB) Skip(args ...any) {
	t.Log(args...)
	t.SkipNow()
}

func (t *benchTB) Skipf(format string, args ...any) {
	t.Logf(format, args...)
	t.SkipNow()
}

func (t *benchTB) SkipNow() {
	t.mu.Lock()
	t.skipped = true
	t.mu.Unlock()
	panic(tbStop{})
}

func (t *benchTB) Skipped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.skipped
}

// TempDir returns a fresh directory removed with the cleanups.
func (t *benchTB) TempDir() string {
	dir, err := os.MkdirTemp("", "weir-bench-")
	if err != nil {
		t.Fatalf("temporary directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (t *benchTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		t.Fatalf("setenv %s: %v", key, err)
	}
	t.Cleanup(func() {
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	})
}

func (t *benchTB) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatalf("chdir %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = os.Chdir(old) })
}

func (t *benchTB) ArtifactDir() string { return t.TempDir() }
