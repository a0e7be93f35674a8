package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the Kubernetes release the harness builds; e2e/kube/tools/go.mod
// pins the same one. Changing it means a new cache directory.
const Version = "v1.37.2"

// The binaries built from k8s.io/kubernetes/cmd/<name>, in build order:
// the apiserver first because it is the one every test needs and the one
// that warms most of the Go build cache for the other two.
const (
	APIServerBin = "kube-apiserver"
	KubeProxyBin = "kube-proxy"
	KubectlBin   = "kubectl"
)

var buildOrder = []string{APIServerBin, KubeProxyBin, KubectlBin}

// Paths are the absolute paths of the cached binaries.
type Paths struct {
	APIServer, KubeProxy, Kubectl string
}

// CacheDir is where the binaries live: $WEIR_K8S_CACHE if set, otherwise
// ~/.cache/weir/k8s-<Version>. It is outside the repository so that neither
// git nor `go test ./...` ever sees 300 MB of binaries.
func CacheDir() (string, error) {
	if d := os.Getenv("WEIR_K8S_CACHE"); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the Kubernetes binaries (%v): set WEIR_K8S_CACHE", err)
	}
	return filepath.Join(base, "weir", "k8s-"+Version), nil
}

// Binaries returns the paths of kube-apiserver, kube-proxy and kubectl,
// building the missing ones first (about 7 minutes and 2.5 GB of RAM the
// first time; pre-build with `go run ./e2e/kube/cmd/build-k8s`). A build
// failure fails the test: these binaries are part of the test setup, not an
// optional feature.
func Binaries(tb testing.TB) (apiserver, kubeProxy, kubectl string) {
	tb.Helper()
	dir, err := CacheDir()
	if err != nil {
		tb.Fatal(err)
	}
	p, err := Build(context.Background(), dir, tbWriter{tb})
	if err != nil {
		tb.Fatal(err)
	}
	return p.APIServer, p.KubeProxy, p.Kubectl
}

// Build makes sure all three binaries exist in dir, building the missing ones
// from the tools module (e2e/kube/tools, found by walking up from the
// working directory). An exclusive lock on dir/.lock serialises concurrent
// callers (parallel test packages), and each binary is written to a
// temporary name and renamed, so a binary that exists is complete. Progress
// goes to log.
func Build(ctx context.Context, dir string, log io.Writer) (Paths, error) {
	p := Paths{
		APIServer: filepath.Join(dir, APIServerBin),
		KubeProxy: filepath.Join(dir, KubeProxyBin),
		Kubectl:   filepath.Join(dir, KubectlBin),
	}
	if allExist(dir) {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return p, fmt.Errorf("create the Kubernetes binary cache %s: %w (set WEIR_K8S_CACHE to a writable directory)", dir, err)
	}
	unlock, err := lockDir(ctx, dir, log)
	if err != nil {
		return p, err
	}
	defer unlock()
	// Another process may have built them while we waited for the lock.
	if allExist(dir) {
		return p, nil
	}
	tools, err := findToolsModule()
	if err != nil {
		return p, err
	}
	for _, name := range buildOrder {
		if exists(filepath.Join(dir, name)) {
			continue
		}
		if err := buildOne(ctx, tools, dir, name, log); err != nil {
			return p, err
		}
	}
	return p, nil
}

func allExist(dir string) bool {
	for _, name := range buildOrder {
		if !exists(filepath.Join(dir, name)) {
			return false
		}
	}
	return true
}

func exists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// lockDir takes an exclusive flock on dir/.lock. flock is released by the
// kernel when the process dies, so a killed build never leaves a stale lock.
func lockDir(ctx context.Context, dir string, log io.Writer) (func(), error) {
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock %s: %w", path, err)
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !told {
			fmt.Fprintf(log, "waiting for another process building the Kubernetes binaries (lock %s)\n", path)
			told = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for build lock %s: %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// findToolsModule walks up from the working directory to the directory
// holding e2e/kube/tools/go.mod. Tests run in their package directory and
// the build command in the repository root; both are inside the repository.
func findToolsModule() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		cand := filepath.Join(d, "e2e", "kube", "tools")
		if _, err := os.Stat(filepath.Join(cand, "go.mod")); err == nil {
			return cand, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no e2e/kube/tools/go.mod above %s: run from inside the weir repository", wd)
		}
	}
}

// ldflags stamps the version the way the Kubernetes release build does, so
// `kube-apiserver --version` and the /version endpoint report Version.
func ldflags() string {
	major, minor := "1", strings.Split(strings.TrimPrefix(Version, "v"), ".")[1]
	var b strings.Builder
	b.WriteString("-s -w")
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		fmt.Fprintf(&b, " -X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s", pkg, Version, pkg, major, pkg, minor)
	}
	return b.String()
}

func buildOne(ctx context.Context, tools, dir, name string, log io.Writer) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building %s needs the go command on PATH: %w", name, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("temp file for %s in %s: %w", name, dir, err)
	}
	tmpName := tmp.Name()
	_ = tmp.Close()
	defer func() { _ = os.Remove(tmpName) }() // no-op after the rename

	fmt.Fprintf(log, "building %s %s into %s (first build of all three takes ~7 min)\n", name, Version, dir)
	start := time.Now()
	cmd := exec.CommandContext(ctx, goBin, "build", "-p", "2", "-trimpath",
		"-ldflags", ldflags(), "-o", tmpName, "k8s.io/kubernetes/cmd/"+name)
	cmd.Dir = tools
	// Static binaries, one consistent build cache key whatever the caller's
	// environment, and never a go.work from above that would drag in weir.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	cmd.Stdout = log
	cmd.Stderr = log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s in %s: %w (run `go run ./e2e/kube/cmd/build-k8s` to see the whole output)", name, tools, err)
	}
	if err := os.Chmod(tmpName, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmpName, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("install %s into %s: %w", name, dir, err)
	}
	fmt.Fprintf(log, "built %s in %s\n", name, time.Since(start).Round(time.Second))
	return nil
}

// tbWriter sends build progress to the test log, one Log call per write.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
