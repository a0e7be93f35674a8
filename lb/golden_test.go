package lb_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/lbtest"
)

var update = flag.Bool("update", false, "rewrite the golden sections of lb/testdata/*.txtar")

// archive is a txtar file: a comment, then "-- name --" sections. (The
// format of golang.org/x/tools/txtar, which this module doesn't depend on.)
type archive struct {
	comment []byte
	files   []archiveFile
}

type archiveFile struct {
	name string
	data []byte
}

func parseArchive(data []byte) *archive {
	a := &archive{}
	var cur *archiveFile
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		trimmed := strings.TrimRight(string(line), "\r\n")
		if strings.HasPrefix(trimmed, "-- ") && strings.HasSuffix(trimmed, " --") && len(trimmed) > 6 {
			a.files = append(a.files, archiveFile{name: strings.TrimSpace(trimmed[3 : len(trimmed)-3])})
			cur = &a.files[len(a.files)-1]
			continue
		}
		if cur == nil {
			a.comment = append(a.comment, line...)
		} else {
			cur.data = append(cur.data, line...)
		}
	}
	return a
}

func (a *archive) format() []byte {
	var b bytes.Buffer
	b.Write(a.comment)
	for _, f := range a.files {
		fmt.Fprintf(&b, "-- %s --\n", f.name)
		b.Write(f.data)
		if len(f.data) > 0 && f.data[len(f.data)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// goldenStep is one desired state of a golden case and the dump expected
// after it is synced.
type goldenStep struct {
	name     string
	services []*lb.Service
	golden   *archiveFile // the expected dump's section
}

// loadGolden reads a case: "<step>.json" sections, each followed by its
// "<step>.golden" section (input.json and maps.golden for a one-step case).
func loadGolden(tb testing.TB, path string) (*archive, []goldenStep) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	a := parseArchive(data)
	var steps []goldenStep
	for i := 0; i < len(a.files); i++ {
		f := a.files[i]
		if !strings.HasSuffix(f.name, ".json") {
			tb.Fatalf("%s: section %q: want a .json section here", path, f.name)
		}
		svcs, err := parseServices(f.data)
		if err != nil {
			tb.Fatalf("%s: section %s: %v", path, f.name, err)
		}
		if i+1 >= len(a.files) || !strings.HasSuffix(a.files[i+1].name, ".golden") {
			tb.Fatalf("%s: section %s is not followed by a .golden section", path, f.name)
		}
		i++
		steps = append(steps, goldenStep{name: f.name, services: svcs, golden: &a.files[i]})
	}
	if len(steps) == 0 {
		tb.Fatalf("%s: no steps", path)
	}
	return a, steps
}

func goldenFiles(tb testing.TB) []string {
	tb.Helper()
	files, err := filepath.Glob("testdata/*.txtar")
	if err != nil || len(files) == 0 {
		tb.Fatalf("no golden files in lb/testdata (%v)", err)
	}
	return files
}

// TestGolden syncs each case's steps into a fake, compares the dump with
// the golden text, then deletes everything and expects empty maps. Every
// write is checked for dangling references (make-before-break).
func TestGolden(t *testing.T) {
	for _, path := range goldenFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			a, steps := loadGolden(t, path)
			fake := lbtest.NewFake()
			fake.CheckEveryWrite(true)
			r := newReconciler(t, fake)
			for _, st := range steps {
				r.Replace(st.services)
				syncAll(t, r)
				got := fake.String()
				if *update {
					st.golden.data = []byte(got)
				} else if got != string(st.golden.data) {
					t.Errorf("after %s, the maps differ from %s:\n--- got\n%s--- want\n%s", st.name, st.golden.name, got, st.golden.data)
				}
				checkFake(t, fake)
				checkNoLeaks(t, r, fake)
				if res := mustSync(t, r); res.Writes != 0 {
					t.Errorf("after %s, a second Sync wrote %d times; want 0", st.name, res.Writes)
				}
			}
			r.Replace(nil)
			syncAll(t, r)
			if got := fake.String(); got != "" {
				t.Errorf("after deleting every service the maps still hold:\n%s", got)
			}
			checkFake(t, fake)
			checkNoLeaks(t, r, fake)
			if *update {
				if err := os.WriteFile(path, a.format(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestGoldenRestart replays each case, restarts the reconciler over the
// same maps after every step and expects the restored state to need no
// write at all.
func TestGoldenRestart(t *testing.T) {
	for _, path := range goldenFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			_, steps := loadGolden(t, path)
			fake := lbtest.NewFake()
			r := newReconciler(t, fake)
			for _, st := range steps {
				r.Replace(st.services)
				syncAll(t, r)
				before := fake.String()
				fake.ResetCounts()
				r = newReconciler(t, fake)
				r.Replace(st.services)
				res := mustSync(t, r)
				if n := fake.Writes(); n != 0 || res.Writes != 0 {
					t.Errorf("after %s, a restart with the same desired state wrote %d times (%v)", st.name, n, fake.CallCounts())
				}
				if after := fake.String(); after != before {
					t.Errorf("after %s, the restart changed the maps:\n--- before\n%s--- after\n%s", st.name, before, after)
				}
				checkNoLeaks(t, r, fake)
			}
		})
	}
}
