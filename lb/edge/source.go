package edge

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"syscall"
	"time"

	"github.com/weir-lb/weir/lb"
)

// Source feeds the services of an edge config file to the agent and keeps
// them current. Its methods are safe for concurrent use.
type Source struct {
	path     string
	defaults Defaults
	apply    func([]*lb.Service)
	log      *slog.Logger

	// Knobs the tests turn; NewSource sets the production values.
	debounce     time.Duration // quiet time after a file event before reloading
	pollInterval time.Duration // how often the fallback poller stats the file
	noInotify    bool          // poll even where inotify works
	afterReload  func(error)   // called after every load attempt, when set

	reloadMu sync.Mutex // serializes loads, so applies happen in order

	mu       sync.Mutex
	applied  bool
	current  []*lb.Service // as parsed; apply gets copies
	lastData []byte        // the content of the last load attempt
	lastErr  error
}

// NewSource returns a Source for the file at path. apply receives the full
// set of services after the first load and after every reload that
// changed it; it owns the slice it gets. apply calls never overlap. A nil
// logger discards logs.
func NewSource(path string, defaults Defaults, apply func([]*lb.Service), logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{
		path:         path,
		defaults:     defaults,
		apply:        apply,
		log:          logger.With("config", path),
		debounce:     100 * time.Millisecond,
		pollInterval: time.Second,
	}
}

// Run loads the file and applies it, then reloads on SIGHUP and when the
// file changes, until ctx is done. It returns the first load's error (the
// agent must not start on a broken config) and nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	// Catch SIGHUP before the first load, so a signal sent once the
	// services are applied can't fall through to the default action and
	// kill the agent.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := s.Reload(); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	changed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { s.watch(ctx, changed) })
	defer wg.Wait()
	defer cancel()

	var quiet *time.Timer
	var quietC <-chan time.Time
	defer func() {
		if quiet != nil {
			quiet.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			s.log.Info("SIGHUP: reloading the edge config")
			_ = s.Reload()
		case <-changed:
			// Editors and ConfigMap updates touch the directory several
			// times per save; reload once they have settled.
			if quiet == nil {
				quiet = time.NewTimer(s.debounce)
				quietC = quiet.C
			} else {
				quiet.Reset(s.debounce)
			}
		case <-quietC:
			s.reloadIfChanged()
		}
	}
}

// Reload reads and applies the file now. On failure it keeps the services
// applied before, records the error for LastError and returns it.
func (s *Source) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	data, err := os.ReadFile(s.path)
	return s.load(data, err)
}

// reloadIfChanged reloads unless the file's content is what was last
// loaded: the directory watch also fires for unrelated files (editor swap
// files, other configs), and a broken config should be reported once, not
// on every event.
func (s *Source) reloadIfChanged() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	data, err := os.ReadFile(s.path)
	s.mu.Lock()
	same := err == nil && s.lastData != nil && bytes.Equal(data, s.lastData)
	s.mu.Unlock()
	if same {
		return
	}
	_ = s.load(data, err)
}

// load parses data (or reports readErr) and applies the result if it
// changed. The caller holds reloadMu.
func (s *Source) load(data []byte, readErr error) error {
	var services []*lb.Service
	err := readErr
	if err == nil {
		services, err = Parse(s.path, data, s.defaults)
	}
	s.mu.Lock()
	s.lastData = data
	if err != nil {
		s.lastErr = err
		s.mu.Unlock()
		s.log.Error("edge config rejected; the previous services stay in place", "error", err)
		s.notify(err)
		return err
	}
	s.lastErr = nil
	changed := !s.applied || !reflect.DeepEqual(services, s.current)
	if changed {
		s.current, s.applied = services, true
	}
	s.mu.Unlock()

	if changed {
		s.log.Info("edge config applied", "services", len(services))
		s.apply(cloneServices(services))
	} else {
		s.log.Debug("edge config reloaded; no change")
	}
	s.notify(nil)
	return nil
}

func (s *Source) notify(err error) {
	if s.afterReload != nil {
		s.afterReload(err)
	}
}

// LastError is the error of the last load attempt, nil if it succeeded.
func (s *Source) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Services returns a copy of the services last applied.
func (s *Source) Services() []*lb.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneServices(s.current)
}

// cloneServices deep-copies services, so what apply keeps can't alias
// what the Source compares against.
func cloneServices(in []*lb.Service) []*lb.Service {
	if in == nil {
		return nil
	}
	out := make([]*lb.Service, len(in))
	for i, s := range in {
		out[i] = s.Clone()
	}
	return out
}
