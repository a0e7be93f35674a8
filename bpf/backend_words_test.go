package bpf

import (
	"net/netip"
	"testing"

	"github.com/weir-lb/weir/lb"
)

// A backend's word carries its state in the low bits and changes with
// anything the datapath copies of it, not with its weight.
func TestBackendWord(t *testing.T) {
	base := lb.BackendEntry{ServiceID: 7, Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Tunnel: netip.MustParseAddr("10.1.0.1"), Weight: 1}
	word := func(e lb.BackendEntry) uint32 {
		v, err := BackendValueFrom(1, e)
		if err != nil {
			t.Fatal(err)
		}
		return backendWord(&v)
	}
	w := word(base)
	if w == 0 || w&wordState != uint32(lb.BackendActive) {
		t.Fatalf("word %#x: want non-zero, state active", w)
	}
	quarantined := base
	quarantined.State = lb.BackendQuarantined
	if q := word(quarantined); q&^wordState != w&^wordState || q&wordState != uint32(lb.BackendQuarantined) {
		t.Errorf("quarantined: word %#x from %#x, want the same identity and state %d", q, w, lb.BackendQuarantined)
	}
	heavier := base
	heavier.Weight = 5
	if word(heavier) != w {
		t.Error("the weight changed the word")
	}
	for name, e := range map[string]lb.BackendEntry{
		"service": {ServiceID: 8, Addr: base.Addr, Port: base.Port, Tunnel: base.Tunnel},
		"address": {ServiceID: 7, Addr: netip.MustParseAddr("10.0.0.2"), Port: base.Port, Tunnel: base.Tunnel},
		"port":    {ServiceID: 7, Addr: base.Addr, Port: 81, Tunnel: base.Tunnel},
		"tunnel":  {ServiceID: 7, Addr: base.Addr, Port: base.Port, Tunnel: netip.MustParseAddr("10.1.0.2")},
	} {
		if word(e)&^wordState == w&^wordState {
			t.Errorf("another %s kept the word", name)
		}
	}
}
