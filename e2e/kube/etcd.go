package kube

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EtcdBin is Debian's etcd (package etcd-server). 3.4 is old but the
// apiserver only needs the v3 API from it.
const EtcdBin = "/usr/bin/etcd"

const etcdReadyTimeout = 20 * time.Second

// startEtcd runs a single-member etcd on free 127.0.0.1 ports with its data
// in dir, waits until it reports healthy, and stops it in Cleanup. It
// returns the client URL.
func startEtcd(tb testing.TB, dir string) (*Process, string) {
	tb.Helper()
	if _, err := os.Stat(EtcdBin); err != nil {
		tb.Fatalf("etcd not found at %s: install the Debian package etcd-server (make deps)", EtcdBin)
	}
	var lastErr error
	// The free ports can be taken between the probe and etcd's bind: retry
	// with new ones rather than fail the test.
	for attempt := 0; attempt < 3; attempt++ {
		p, url, err := tryStartEtcd(dir, attempt)
		if err == nil {
			stopInCleanup(tb, p, 10*time.Second)
			return p, url
		}
		lastErr = err
	}
	tb.Fatal(lastErr)
	return nil, ""
}

func tryStartEtcd(dir string, attempt int) (*Process, string, error) {
	clientPort, err := freePort(loopback)
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort(loopback)
	if err != nil {
		return nil, "", err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	dataDir := filepath.Join(dir, fmt.Sprintf("etcd-data-%d", attempt))
	cmd := exec.Command(EtcdBin,
		"--name", "default",
		"--data-dir", dataDir,
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--logger", "zap",
	)
	p, err := startProcess("etcd", filepath.Join(dir, "etcd.log"), cmd)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdReadyTimeout)
	defer cancel()
	if err := waitEtcd(ctx, p, clientURL); err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, "", fmt.Errorf("etcd on %s: %w\n%s", clientURL, err, p.Tail(4<<10))
	}
	return p, clientURL, nil
}

// waitEtcd polls /health until etcd answers {"health":"true"}.
func waitEtcd(ctx context.Context, p *Process, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		if done, err := p.Exited(); done {
			return fmt.Errorf("exited before it was healthy: %v", err)
		}
		resp, err := client.Get(url + "/health")
		if err == nil {
			body := make([]byte, 256)
			n, _ := resp.Body.Read(body)
			_ = resp.Body.Close()
			last = strings.TrimSpace(string(body[:n]))
			if resp.StatusCode == http.StatusOK && strings.Contains(last, `"true"`) {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy after %s (last answer: %s)", etcdReadyTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
