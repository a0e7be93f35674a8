// Package testutil holds helpers shared by Weir's tests: privilege checks,
// temporary bpffs roots, network namespaces and cgroups that clean up
// after themselves.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// RequirePrivileged skips a test that needs root, unless CI=true: there a
// privileged test that cannot run is a failure, so a broken runner can't
// pass by skipping everything.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("privileged test needs root, and CI=true forbids skipping it")
	}
	tb.Skip("needs root (BPF, network namespaces)")
}

// RandomName returns prefix followed by 8 random hex digits.
func RandomName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// BPFRoot returns a fresh directory on a bpffs for pinning, removed with
// everything in it when the test ends.
func BPFRoot(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	const base = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", base, "bpf", 0, ""); err != nil {
			tb.Fatalf("bpffs is not mounted at %s and mounting it failed: %v", base, err)
		}
	}
	dir := filepath.Join(base, RandomName("weir-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
