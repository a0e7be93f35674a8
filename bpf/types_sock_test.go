package bpf

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestSockMirrorsMatchBTF checks the socket load balancer's mirrors the
// way TestMirrorsMatchBTF checks the others: size and field offsets.
func TestSockMirrorsMatchBTF(t *testing.T) {
	spec := mustMapsSpecTypes(t)
	for name, mirror := range map[string]any{"sock_peer": SockPeer{}} {
		var st *btf.Struct
		if err := spec.TypeByName(name, &st); err != nil {
			t.Fatalf("struct %s not in the object's BTF: %v", name, err)
		}
		typ := reflect.TypeOf(mirror)
		if int(typ.Size()) != int(st.Size) {
			t.Errorf("%s: Go size %d, C size %d", typ.Name(), typ.Size(), st.Size)
		}
		var offsets []uint32
		for i := range typ.NumField() {
			if f := typ.Field(i); f.Type.Size() != 0 {
				offsets = append(offsets, uint32(f.Offset))
			}
		}
		if len(offsets) != len(st.Members) {
			t.Fatalf("%s has %d fields, struct %s has %d members", typ.Name(), len(offsets), name, len(st.Members))
		}
		for i, m := range st.Members {
			if offsets[i] != m.Offset.Bytes() {
				t.Errorf("%s field %d at offset %d, %s.%s at %d", typ.Name(), i, offsets[i], name, m.Name, m.Offset.Bytes())
			}
		}
	}
}
