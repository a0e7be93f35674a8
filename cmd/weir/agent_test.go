package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/weir-lb/weir/lb"
)

func TestRetryable(t *testing.T) {
	bad := &lb.ServiceError{Service: lb.ServiceName{Name: "bad"}, Err: errors.New("invalid")}
	flaky := &lb.ServiceError{Service: lb.ServiceName{Name: "flaky"}, Retry: true, Err: errors.New("map full")}
	if retryable(nil) != nil || retryable(errors.Join(bad)) != nil {
		t.Error("an invalid service counted as a retryable failure")
	}
	got := retryable(errors.Join(bad, flaky))
	var se *lb.ServiceError
	if !errors.As(got, &se) || se != flaky {
		t.Errorf("retryable = %v, want only the datapath failure", got)
	}
	if plain := errors.New("dump failed"); !errors.Is(retryable(plain), plain) {
		t.Error("an error that is no ServiceError was dropped")
	}
}

func TestSNATPortRange(t *testing.T) {
	eph := func(lo, hi uint16) func() (uint16, uint16, error) {
		return func() (uint16, uint16, error) { return lo, hi, nil }
	}
	for _, tc := range []struct {
		spec     string
		lo, hi   uint16
		want     string
		overlaps bool
		err      bool
	}{
		{spec: "auto", lo: 32768, hi: 60999, want: "1024-32767"}, // Linux's default
		{spec: "auto", lo: 10000, hi: 32767, want: "32768-65535"},
		{spec: "auto", lo: 1024, hi: 65535, err: true},
		{spec: "auto", lo: 1, hi: 65000, err: true},
		{spec: "40000-40100", lo: 32768, hi: 60999, want: "40000-40100", overlaps: true},
		{spec: "61000-65535", lo: 32768, hi: 60999, want: "61000-65535"},
		{spec: "0-100", err: true},
		{spec: "200-100", err: true},
		{spec: "100", err: true},
		{spec: "1-70000", err: true},
	} {
		r, err := snatPortRange(tc.spec, eph(tc.lo, tc.hi))
		if (err != nil) != tc.err {
			t.Errorf("%s with ephemeral %d-%d: error %v, want error %v", tc.spec, tc.lo, tc.hi, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if r.String() != tc.want || (r.overlap != "") != tc.overlaps {
			t.Errorf("%s with ephemeral %d-%d: %s (overlap %q), want %s (overlapping %v)", tc.spec, tc.lo, tc.hi, r, r.overlap, tc.want, tc.overlaps)
		}
	}
	if _, err := snatPortRange("auto", func() (uint16, uint16, error) { return 0, 0, errors.New("no procfs") }); err == nil || !strings.Contains(err.Error(), "--snat-port-range") {
		t.Errorf("auto without the ephemeral range: %v, want an error naming the flag", err)
	}
}
