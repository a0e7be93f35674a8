package edge

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
)

// wait is how long a test waits for something that should happen at once;
// generous, because it bounds a failure, not a measurement.
const wait = 10 * time.Second

func config(vip string) string { return strings.Replace(baseConfig, "192.0.2.10", vip, 1) }

// testSource is a Source under test with channels observing it.
type testSource struct {
	*Source
	path    string
	applied chan []*lb.Service
	reloads chan error
}

// newTestSource writes text to a fresh config file and returns a Source
// for it, not yet running. tune adjusts the Source before it starts.
func newTestSource(t *testing.T, text string, tune func(*Source)) *testSource {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edge.yaml")
	writeConfig(t, path, text)
	ts := &testSource{path: path, applied: make(chan []*lb.Service, 16), reloads: make(chan error, 64)}
	ts.Source = NewSource(path, testDefaults, func(s []*lb.Service) { ts.applied <- s }, nil)
	ts.debounce = 10 * time.Millisecond
	ts.afterReload = func(err error) {
		select {
		case ts.reloads <- err:
		default: // a test that doesn't read reloads must not block the Source
		}
	}
	if tune != nil {
		tune(ts.Source)
	}
	return ts
}

// start runs the Source until the test ends and waits for its first apply.
func (ts *testSource) start(t *testing.T) []*lb.Service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(wait):
			t.Error("Run did not return after its context ended")
		}
	})
	first := ts.nextApply(t)
	ts.nextReload(t) // the first load's report
	return first
}

func (ts *testSource) nextApply(t *testing.T) []*lb.Service {
	t.Helper()
	select {
	case s := <-ts.applied:
		return s
	case <-time.After(wait):
		t.Fatal("apply was not called")
		return nil
	}
}

func (ts *testSource) nextReload(t *testing.T) error {
	t.Helper()
	select {
	case err := <-ts.reloads:
		return err
	case <-time.After(wait):
		t.Fatal("the config was not reloaded")
		return nil
	}
}

// noApply fails if apply was called; call it after a reload was seen.
func (ts *testSource) noApply(t *testing.T) {
	t.Helper()
	select {
	case s := <-ts.applied:
		t.Fatalf("apply called with %v", s)
	default:
	}
}

// writeConfig replaces the file the way editors do: write a new file, then
// rename it over the old one.
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func vipOf(t *testing.T, svcs []*lb.Service) string {
	t.Helper()
	if len(svcs) != 1 {
		t.Fatalf("got %d services, want 1", len(svcs))
	}
	return svcs[0].Frontends[0].Addr.String()
}

func TestSourceFirstLoadFails(t *testing.T) {
	ts := newTestSource(t, "services: [", nil)
	err := ts.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), ts.path+":1") {
		t.Fatalf("Run: %v; want the parse error naming %s:1", err, ts.path)
	}
	if ts.LastError() == nil {
		t.Error("LastError is nil after a failed load")
	}
}

func TestSourceReloadOnRename(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	if got := vipOf(t, ts.start(t)); got != "192.0.2.10" {
		t.Fatalf("first apply: vip %s", got)
	}
	writeConfig(t, ts.path, config("192.0.2.20"))
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.20" {
		t.Fatalf("after rename: vip %s", got)
	}
}

func TestSourceReloadOnInPlaceWrite(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	ts.start(t)
	if err := os.WriteFile(ts.path, []byte(config("192.0.2.30")), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.30" {
		t.Fatalf("after write: vip %s", got)
	}
}

func TestSourcePolling(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), func(s *Source) {
		s.noInotify = true
		s.pollInterval = 10 * time.Millisecond
	})
	ts.start(t)
	writeConfig(t, ts.path, config("192.0.2.40"))
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.40" {
		t.Fatalf("after polling: vip %s", got)
	}
}

// TestSourceConfigMapSwap updates the file the way the kubelet updates a
// ConfigMap volume: edge.yaml -> ..data/edge.yaml, and each update points
// the ..data symlink at a new directory and deletes the old one.
func TestSourceConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := 0
	publish := func(text string) {
		t.Helper()
		version++
		vdir := filepath.Join(dir, "..v"+string(rune('0'+version)))
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "edge.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if version > 1 {
			if err := os.RemoveAll(filepath.Join(dir, "..v"+string(rune('0'+version-1)))); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(config("192.0.2.10"))
	path := filepath.Join(dir, "edge.yaml")
	if err := os.Symlink("..data/edge.yaml", path); err != nil {
		t.Fatal(err)
	}
	ts := newTestSource(t, "", nil)
	ts.path = path
	ts.Source.path = path
	ts.start(t)
	for _, vip := range []string{"192.0.2.50", "192.0.2.60", "192.0.2.70"} {
		publish(config(vip))
		if got := vipOf(t, ts.nextApply(t)); got != vip {
			t.Fatalf("after ConfigMap update: vip %s, want %s", got, vip)
		}
	}
}

func TestSourceExplicitReload(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	if err := ts.Reload(); err != nil {
		t.Fatal(err)
	}
	ts.nextApply(t)
	if err := os.WriteFile(ts.path, []byte(config("192.0.2.80")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ts.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.80" {
		t.Fatalf("after Reload: vip %s", got)
	}
	if got := vipOf(t, ts.Services()); got != "192.0.2.80" {
		t.Fatalf("Services: vip %s", got)
	}
}

func TestSourceSIGHUP(t *testing.T) {
	// No file watching here: only the signal can cause the reload.
	ts := newTestSource(t, config("192.0.2.10"), func(s *Source) {
		s.noInotify = true
		s.pollInterval = time.Hour
	})
	ts.start(t)
	if err := os.WriteFile(ts.path, []byte(config("192.0.2.90")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.90" {
		t.Fatalf("after SIGHUP: vip %s", got)
	}
}

func TestSourceUnchangedSkipsApply(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	ts.start(t)
	// Different bytes, same services.
	writeConfig(t, ts.path, "# a comment\n"+config("192.0.2.10"))
	if err := ts.nextReload(t); err != nil {
		t.Fatal(err)
	}
	ts.noApply(t)
	if err := ts.Reload(); err != nil {
		t.Fatal(err)
	}
	ts.nextReload(t)
	ts.noApply(t)
}

func TestSourceBrokenReloadKeepsServices(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	ts.start(t)

	writeConfig(t, ts.path, strings.Replace(config("192.0.2.10"), "port: 80\n", "port: 70000\n", 1))
	err := ts.nextReload(t)
	if err == nil || !strings.Contains(err.Error(), ts.path+":4:11: services[0].port: 70000 is out of range") {
		t.Fatalf("broken reload reported %v; want the file:line of the bad port", err)
	}
	if ts.LastError() == nil || ts.LastError().Error() != err.Error() {
		t.Errorf("LastError = %v, want %v", ts.LastError(), err)
	}
	ts.noApply(t)
	if got := vipOf(t, ts.Services()); got != "192.0.2.10" {
		t.Errorf("services after a broken reload: vip %s, want the previous 192.0.2.10", got)
	}

	// A deleted file is a failed reload too, not an empty config.
	if err := os.Remove(ts.path); err != nil {
		t.Fatal(err)
	}
	if err := ts.nextReload(t); err == nil {
		t.Fatal("reload of a deleted file succeeded")
	}
	ts.noApply(t)

	writeConfig(t, ts.path, config("192.0.2.11"))
	if got := vipOf(t, ts.nextApply(t)); got != "192.0.2.11" {
		t.Fatalf("fixed reload: vip %s", got)
	}
	if err := ts.LastError(); err != nil {
		t.Errorf("LastError after a fixed reload: %v", err)
	}
}

func TestSourceApplyGetsCopies(t *testing.T) {
	ts := newTestSource(t, config("192.0.2.10"), nil)
	first := ts.start(t)
	first[0].Backends[0].Weight = 9 // the consumer may do as it likes
	if err := ts.Reload(); err != nil {
		t.Fatal(err)
	}
	ts.noApply(t)
	if w := ts.Services()[0].Backends[0].Weight; w != 1 {
		t.Fatalf("the Source's copy changed: weight %d", w)
	}
}
