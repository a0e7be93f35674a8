package main

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/testutil"
)

// TestNodeAddrsFollowNetlink checks the NodeAddrs and Refresh wiring in a
// network namespace of its own: the list includes loopback, and adding an
// address triggers a refresh that lists it.
func TestNodeAddrsFollowNetlink(t *testing.T) {
	ns := testutil.NewNetns(t, "weir-addrs-")
	ctx, cancel := context.WithCancel(context.Background())
	refreshed := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() {
		done <- ns.Do(func() error {
			watchNodeAddrs(ctx, slog.New(slog.DiscardHandler), func() {
				select {
				case refreshed <- struct{}{}:
				default:
				}
			})
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch in %s: %v", ns.Name, err)
		}
	})
	waitRefresh := func(what string) {
		t.Helper()
		select {
		case <-refreshed:
		case <-time.After(10 * time.Second):
			t.Fatalf("no refresh %s", what)
		}
	}
	waitRefresh("after subscribing")

	lo, err := ns.Link.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	testutil.AddAddr(t, ns.Link, lo, netip.MustParsePrefix("192.0.2.77/32"))
	waitRefresh("after adding 192.0.2.77")

	var got []netip.Addr
	ns.MustDo(t, func() error {
		got = (&netlinkAddrs{log: slog.New(slog.DiscardHandler)}).list()
		return nil
	})
	for _, want := range []string{"127.0.0.1", "192.0.2.77"} {
		if !slices.Contains(got, netip.MustParseAddr(want)) {
			t.Errorf("node addresses %v lack %s", got, want)
		}
	}
}
