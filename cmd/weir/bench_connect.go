package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
)

// `weir bench connect-probe` is the client side of the ClusterIP connect
// latency of `weir bench kube-proxy`: a separate process, so that the
// benchmark can start it inside the node's network namespace and inside
// the cgroup Weir's socket hooks are attached to (kube-proxy's rules see
// it the same). It reads target addresses (IP:port, one a line) on
// stdin, connects to random ones, and prints the connect times.

// connectProbeResult is what connect-probe prints.
type connectProbeResult struct {
	Connects int       `json:"connects"`
	Failures int       `json:"failures"`
	Seconds  []float64 `json:"seconds"` // each successful connect, sorted
	// FirstError is the first failure, to say why.
	FirstError string `json:"first_error,omitempty"`
}

func runConnectProbe(ctx context.Context, args []string) error {
	return connectProbe(ctx, args, os.Stdin, os.Stdout)
}

func connectProbe(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := pflag.NewFlagSet("bench connect-probe", pflag.ContinueOnError)
	count := fs.Int("count", 1000, "connects to make")
	timeout := fs.Duration("timeout", 2*time.Second, "connect (and request) timeout")
	httpMode := fs.Bool("http", false, "instead: HTTP/1.0 GETs, one connection each, by --workers workers for --duration")
	duration := fs.Duration("duration", 5*time.Second, "with --http: how long to send requests")
	workers := fs.Int("workers", 16, "with --http: concurrent clients")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var targets []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			targets = append(targets, t)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(targets) == 0 {
		return fmt.Errorf("connect-probe: no targets on stdin (IP:port, one a line)")
	}
	if *httpMode {
		return json.NewEncoder(out).Encode(httpProbe(ctx, targets, *workers, *duration, *timeout))
	}
	res := connectProbeResult{Connects: *count}
	d := net.Dialer{Timeout: *timeout}
	for range *count {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := targets[rand.IntN(len(targets))]
		start := time.Now()
		c, err := d.DialContext(ctx, "tcp", t)
		el := time.Since(start)
		if err != nil {
			res.Failures++
			if res.FirstError == "" {
				res.FirstError = err.Error()
			}
			continue
		}
		res.Seconds = append(res.Seconds, el.Seconds())
		_ = c.Close()
	}
	slices.Sort(res.Seconds)
	return json.NewEncoder(out).Encode(res)
}

// httpProbe sends requests, a new connection each, until duration is
// over. Connects counts the attempts; Seconds holds each successful
// request's time, connect to the end of the response.
func httpProbe(ctx context.Context, targets []string, workers int, duration, timeout time.Duration) connectProbeResult {
	// The end is checked on the clock, not through a context deadline:
	// a dial sees a context's deadline pass before the context reports
	// it done, which would count a burst of instant "failures".
	end := time.Now().Add(duration)
	results := make([]connectProbeResult, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := &results[w]
			d := net.Dialer{Timeout: timeout}
			buf := make([]byte, 4096)
			for ctx.Err() == nil && time.Now().Before(end) {
				t := targets[rand.IntN(len(targets))]
				start := time.Now()
				err := oneRequest(ctx, d, t, buf, timeout)
				if time.Now().After(end) {
					return // cut off by the end of the run: not counted
				}
				r.Connects++
				if err != nil {
					r.Failures++
					if r.FirstError == "" {
						r.FirstError = err.Error()
					}
					continue
				}
				r.Seconds = append(r.Seconds, time.Since(start).Seconds())
			}
		})
	}
	wg.Wait()
	var all connectProbeResult
	for _, r := range results {
		all.Connects += r.Connects
		all.Failures += r.Failures
		all.Seconds = append(all.Seconds, r.Seconds...)
		if all.FirstError == "" {
			all.FirstError = r.FirstError
		}
	}
	slices.Sort(all.Seconds)
	return all
}

// oneRequest sends a GET and reads the response of the benchmark's
// backend (which waits for the client to close), then resets the
// connection: a load generator that left TIME_WAIT behind (here, at the
// backend, or in conntrack) would soon measure port reuse, not the path.
func oneRequest(ctx context.Context, d net.Dialer, target string, buf []byte, timeout time.Duration) error {
	c, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	defer func() {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: bench\r\n\r\n"); err != nil {
		return err
	}
	var resp []byte
	for {
		n, err := c.Read(buf)
		resp = append(resp, buf[:n]...)
		if i := bytes.Index(resp, []byte("\r\n\r\n")); i >= 0 && len(resp) >= i+4+3 {
			break // the header and the 3-byte body
		}
		if err != nil {
			return fmt.Errorf("%s: %w after %d bytes", target, err, len(resp))
		}
	}
	if !bytes.HasPrefix(resp, []byte("HTTP/1.0 200")) {
		return fmt.Errorf("%s: not the expected response: %q", target, resp)
	}
	return nil
}
