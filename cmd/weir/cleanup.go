package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"github.com/spf13/pflag"
)

func runCleanup(_ context.Context, args []string) error {
	fs := pflag.NewFlagSet("cleanup", pflag.ContinueOnError)
	root := fs.String("bpf-root", "/sys/fs/bpf/weir", "the agent's --bpf-root")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return cleanupRoot(*root)
}

// cleanupRoot detaches every pinned link under root (the XDP and socket
// hooks of a stopped agent), then removes the pinned maps. Stop the agent
// first: this takes Weir off the node.
func cleanupRoot(root string) error {
	if _, err := os.Stat(root); os.IsNotExist(err) {
		return nil
	}
	linkDir := filepath.Join(root, "links")
	entries, err := os.ReadDir(linkDir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(linkDir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			return fmt.Errorf("open pinned link %s: %w", p, err)
		}
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin %s: %w", p, err)
		}
		l.Close()
	}
	return os.RemoveAll(root)
}
