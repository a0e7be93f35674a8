package kube

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCacheDirHonoursEnv(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k8s")
	t.Setenv("WEIR_K8S_CACHE", dir)
	got, err := CacheDir()
	if err != nil || got != dir {
		t.Fatalf("CacheDir() = %q, %v; want %q", got, err, dir)
	}
}

func TestCacheDirDefaultIsKeyedOnVersion(t *testing.T) {
	t.Setenv("WEIR_K8S_CACHE", "")
	got, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join("weir", "k8s-"+Version); !strings.HasSuffix(got, want) {
		t.Fatalf("CacheDir() = %q, want it to end in %q", got, want)
	}
}

func TestLdflagsStampBothVersionPackages(t *testing.T) {
	f := ldflags()
	for _, want := range []string{
		"-X k8s.io/component-base/version.gitVersion=" + Version,
		"-X k8s.io/component-base/version.gitMinor=37",
		"-X k8s.io/client-go/pkg/version.gitVersion=" + Version,
		"-X k8s.io/client-go/pkg/version.gitMajor=1",
	} {
		if !strings.Contains(f, want) {
			t.Errorf("ldflags %q lack %q", f, want)
		}
	}
}

func TestFindToolsModule(t *testing.T) {
	dir, err := findToolsModule()
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "tools" {
		t.Fatalf("findToolsModule() = %q", dir)
	}
}

// fakeCache makes dir look like a complete cache: Build must return at once
// without looking for a Go toolchain or the tools module.
func fakeCache(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range buildOrder {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBuildUsesCompleteCache(t *testing.T) {
	dir := fakeCache(t)
	t.Setenv("PATH", "") // no go command: building would fail
	p, err := Build(context.Background(), dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p.APIServer != filepath.Join(dir, APIServerBin) || p.KubeProxy != filepath.Join(dir, KubeProxyBin) || p.Kubectl != filepath.Join(dir, KubectlBin) {
		t.Fatalf("Build paths %+v, want the three binaries in %s", p, dir)
	}
}

// A missing binary and a lock held elsewhere: Build waits for the lock and
// gives up with the context rather than building alongside the holder.
func TestBuildWaitsForLock(t *testing.T) {
	dir := fakeCache(t)
	if err := os.Remove(filepath.Join(dir, KubectlBin)); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockDir(context.Background(), dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	t.Cleanup(cancel)
	var log strings.Builder
	if _, err := Build(ctx, dir, &log); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Build with the lock held elsewhere: %v, want a deadline error", err)
	}
	if !strings.Contains(log.String(), "waiting for another process") {
		t.Fatalf("Build did not say it was waiting: %q", log.String())
	}
}
