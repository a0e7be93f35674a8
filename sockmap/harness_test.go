package sockmap

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// testCgroup creates an empty cgroup v2 directory for one test, named
// weir-test-<random> below the cgroup2 mount, and removes it in Cleanup.
// Cleanups run last-in first-out, so hooks attached after this call are
// detached, and children started after it have exited, before the rmdir.
func testCgroup(tb testing.TB) string {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	root, err := ResolveCgroupRoot("auto")
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(root, testutil.RandomName("weir-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("create test cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// A child that just exited may still be counted in the cgroup
		// for a moment: retry briefly.
		var err error
		for range 50 {
			if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		tb.Errorf("remove test cgroup %s: %v", dir, err)
	})
	return dir
}

// loadAttached opens maps under a fresh bpffs root, loads the programs
// with cfg (its Maps filled in) and attaches them to cgroup. Everything
// is detached and closed in Cleanup.
func loadAttached(tb testing.TB, cfg Config, cgroup string) (*bpf.Maps, *Program) {
	tb.Helper()
	maps := openMaps(tb)
	cfg.Maps = maps
	p, err := Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	if err := p.Attach(cgroup); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Detach(cgroup); err != nil {
			tb.Errorf("detach: %v", err)
		}
	})
	return maps, p
}

func openMaps(tb testing.TB) *bpf.Maps {
	tb.Helper()
	root := testutil.BPFRoot(tb)
	maps, err := bpf.OpenMaps(root, bpf.MapSizes{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = maps.Close() })
	return maps
}

// client is a child process running childMain inside a cgroup and a
// network namespace.
type client struct {
	tb  testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startClient starts a client child in cgroup (which must exist) and the
// named network namespace ("" for the test's own). It starts inside the
// cgroup (CLONE_INTO_CGROUP), so no socket of it is ever outside it.
func startClient(tb testing.TB, cgroup string, ns *testutil.Netns) *client {
	tb.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		tb.Fatal(err)
	}
	defer cg.Close()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(self, "-test.run=^$")
	} else {
		cmd = exec.Command(self, "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = &prefixWriter{tb: tb}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start client child: %v", err)
	}
	c := &client{tb: tb, cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	c.out.Buffer(make([]byte, 64*1024), 16*1024*1024)
	tb.Cleanup(c.stop)
	return c
}

func (c *client) stop() {
	if c.cmd == nil {
		return
	}
	c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
}

// do sends one request and waits for its reply.
func (c *client) do(req request) reply {
	c.tb.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		c.tb.Fatal(err)
	}
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		c.tb.Fatalf("client child: %v", err)
	}
	if !c.out.Scan() {
		c.tb.Fatalf("client child exited: %v", c.out.Err())
	}
	var rep reply
	if err := json.Unmarshal(c.out.Bytes(), &rep); err != nil {
		c.tb.Fatalf("client child reply %q: %v", c.out.Text(), err)
	}
	return rep
}

// one runs a request of Count 1 and returns its only result.
func (c *client) one(req request) result {
	c.tb.Helper()
	rep := c.do(req)
	if len(rep.Results) != 1 {
		c.tb.Fatalf("%+v: %d results, want 1", req, len(rep.Results))
	}
	return rep.Results[0]
}

// mustOK is one that fails the test on an error.
func (c *client) mustOK(req request) result {
	c.tb.Helper()
	r := c.one(req)
	if r.Err != "" {
		c.tb.Fatalf("%s %s %s: %s", req.Op, req.Net, req.Addr, r.Err)
	}
	return r
}

// prefixWriter sends a child's stderr to the test log.
type prefixWriter struct{ tb testing.TB }

func (w *prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.tb.Log(fmt.Sprintf("client child: %s", l))
	}
	return len(b), nil
}
