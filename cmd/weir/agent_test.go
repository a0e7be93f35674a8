package main

import (
	"errors"
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
