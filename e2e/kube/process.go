package kube

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Process is a child process started by the harness (etcd, kube-apiserver,
// kube-proxy) with its output in a log file. It is ended only through its
// own PID.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// startProcess starts cmd with stdout and stderr going to logPath.
func startProcess(name, logPath string, cmd *exec.Cmd) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file for %s: %w", name, err)
	}
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so a ^C to `go test` reaches the test
		// binary (which then runs its cleanups) rather than every child at
		// once.
		Setpgid: true,
		// A test binary killed by -timeout runs no cleanups: take the
		// children with it instead of leaving an apiserver holding ports.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, cmd.Path, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID of the child.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// String names the process for messages.
func (p *Process) String() string { return fmt.Sprintf("%s (pid %d)", p.Name, p.PID()) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, and its exit error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then sends
// SIGKILL. It returns nil when the process ended on SIGTERM with a clean or
// signal exit, and is safe to call more than once.
func (p *Process) Stop(grace time.Duration) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.Name, p.PID(), grace)
}

// Tail returns up to the last n bytes of the log.
func (p *Process) Tail(n int64) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.LogPath, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// logTailLimit bounds how much of a child's log lands in a failed test's
// output: enough for the fatal error and what led to it.
const logTailLimit = 32 << 10

// stopInCleanup registers a cleanup that stops p and, if the test failed,
// logs the end of its output.
func stopInCleanup(tb testing.TB, p *Process, grace time.Duration) {
	tb.Helper()
	tb.Cleanup(func() { stopAndReport(tb, p, grace) })
}

func stopAndReport(tb testing.TB, p *Process, grace time.Duration) {
	// A process killed after its grace is stopped all the same: a slow
	// shutdown (an apiserver draining watches of 10k objects) is noted,
	// not held against the test, whose subject is Weir.
	if err := p.Stop(grace); err != nil {
		tb.Log(err)
	}
	if tb.Failed() {
		tb.Logf("---- %s log (%s), last %d KiB ----\n%s", p.Name, p.LogPath, logTailLimit>>10, p.Tail(logTailLimit))
	}
}

// freePort returns a TCP port that was free on addr a moment ago. Another
// process can take it before the caller binds it; callers that can retry do.
func freePort(addr netip.Addr) (int, error) {
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", addr, err)
	}
	defer l.Close()
	tcpAddr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, fmt.Errorf("listener on %s has no TCP address", addr)
	}
	return tcpAddr.Port, nil
}
