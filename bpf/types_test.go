package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"
)

// TestMirrorsMatchBTF checks every Go mirror against its C struct as the
// compiled object describes it: same size, and the same offset for each
// field in order (zero-size markers like structs.HostLayout aside).
func TestMirrorsMatchBTF(t *testing.T) {
	mirrors := map[string]any{
		"service_key":       ServiceKey{},
		"service_value":     ServiceValue{},
		"backend_value":     BackendValue{},
		"frontend_value":    FrontendValue{},
		"source_range_key":  SourceRangeKey{},
		"affinity_key":      AffinityKey{},
		"affinity_value":    AffinityValue{},
		"traffic_stats":     TrafficStats{},
		"ct_key":            CTKey{},
		"ct_value":          CTValue{},
		"fib_cache":         FIBCache{},
		"snat_key":          SNATKey{},
		"snat_value":        SNATValue{},
		"sock_revnat_key":   SockRevNatKey{},
		"sock_revnat_value": SockRevNatValue{},
		"event":             Event{},
	}
	spec := mustMapsSpecTypes(t)
	for name, mirror := range mirrors {
		t.Run(name, func(t *testing.T) {
			var st *btf.Struct
			if err := spec.TypeByName(name, &st); err != nil {
				t.Fatalf("struct %s not in the object's BTF: %v", name, err)
			}
			typ := reflect.TypeOf(mirror)
			if got := int(typ.Size()); got != int(st.Size) {
				t.Errorf("%s: Go size %d, C size %d", typ.Name(), got, st.Size)
			}
			// binary.Size equal to the memory size means no implicit
			// padding, which is what lets cilium/ebpf skip encoding.
			if got := binary.Size(mirror); got != int(st.Size) {
				t.Errorf("%s: binary.Size %d, C size %d (implicit padding?)", typ.Name(), got, st.Size)
			}
			var fields []reflect.StructField
			for i := range typ.NumField() {
				if f := typ.Field(i); f.Type.Size() != 0 {
					fields = append(fields, f)
				}
			}
			if len(fields) != len(st.Members) {
				t.Fatalf("%s has %d fields, struct %s has %d members", typ.Name(), len(fields), name, len(st.Members))
			}
			for i, f := range fields {
				m := st.Members[i]
				if want := int(m.Offset.Bytes()); int(f.Offset) != want {
					t.Errorf("%s.%s at offset %d, %s.%s at %d", typ.Name(), f.Name, f.Offset, name, m.Name, want)
				}
				if want, err := btf.Sizeof(m.Type); err != nil {
					t.Errorf("size of %s.%s: %v", name, m.Name, err)
				} else if int(f.Type.Size()) != want {
					t.Errorf("%s.%s is %d bytes, %s.%s %d", typ.Name(), f.Name, f.Type.Size(), name, m.Name, want)
				}
			}
		})
	}
}

func mustMapsSpecTypes(tb testing.TB) *btf.Spec {
	tb.Helper()
	spec, err := loadWeirMaps()
	if err != nil {
		tb.Fatalf("load the embedded maps object: %v", err)
	}
	if spec.Types == nil {
		tb.Fatal("the embedded maps object has no BTF; rebuild it with -g (go generate ./bpf)")
	}
	return spec.Types
}

func TestAddrRoundTrip(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "fe80::1"} {
		a := netip.MustParseAddr(s)
		if got := AddrFrom(a).IP(); got != a {
			t.Errorf("AddrFrom(%v).IP() = %v", a, got)
		}
	}
	v4 := AddrFrom(netip.MustParseAddr("192.0.2.7"))
	want := Addr{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 7}
	if v4 != want {
		t.Errorf("IPv4 stored as %x, want IPv4-mapped %x", v4, want)
	}
	if got := AddrFrom(netip.Addr{}).IP(); got.IsValid() {
		t.Errorf("unset address reads back as %v, want unset", got)
	}
}

func TestPortIsNetworkOrder(t *testing.T) {
	p := PortFrom(8080)
	if p != (Port{0x1f, 0x90}) {
		t.Errorf("PortFrom(8080) = %x, want 1f90", p)
	}
	if p.Host() != 8080 {
		t.Errorf("Host() = %d", p.Host())
	}
}

func TestUnmarshalEvent(t *testing.T) {
	want := Event{Timestamp: 42, Ifindex: 3, ServiceID: 7, BackendID: 9, Type: EventDrop, Reason: uint8(ReasonNoBackend), Proto: 6,
		Saddr: AddrFrom(netip.MustParseAddr("10.0.0.1")), Sport: PortFrom(1234), Dport: PortFrom(80)}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&want)), unsafe.Sizeof(want))
	got, err := UnmarshalEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("UnmarshalEvent = %+v, want %+v", got, want)
	}
	if _, err := UnmarshalEvent(raw[:10]); err == nil {
		t.Error("a short record decoded without error")
	}
}

func TestSourceRangeKey(t *testing.T) {
	for _, tc := range []struct {
		prefix    string
		prefixlen uint32
		readBack  string
	}{
		{"10.1.2.3/8", 32 + 96 + 8, "10.0.0.0/8"},
		{"0.0.0.0/0", 32 + 96, "0.0.0.0/0"},
		{"192.0.2.1/32", 32 + 128, "192.0.2.1/32"},
		{"2001:db8::/32", 32 + 32, "2001:db8::/32"},
		{"::/0", 32, "::/0"},
		// Same trie entry as 10.0.0.0/8, so it reads back as IPv4.
		{"::ffff:10.0.0.0/104", 32 + 104, "10.0.0.0/8"},
	} {
		k, err := SourceRangeKeyFor(5, netip.MustParsePrefix(tc.prefix))
		if err != nil {
			t.Fatal(err)
		}
		if k.Prefixlen != tc.prefixlen || k.ServiceID != 5 {
			t.Errorf("%s: prefixlen %d service %d, want %d and 5", tc.prefix, k.Prefixlen, k.ServiceID, tc.prefixlen)
		}
		id, p, err := k.Prefix()
		if err != nil {
			t.Fatal(err)
		}
		if id != 5 || p != netip.MustParsePrefix(tc.readBack) {
			t.Errorf("%s reads back as service %d %v, want 5 %s", tc.prefix, id, p, tc.readBack)
		}
	}
	if _, err := SourceRangeKeyFor(5, netip.Prefix{}); err == nil {
		t.Error("an invalid prefix was accepted")
	}
}

func TestMapFullErrorNamesFlag(t *testing.T) {
	err := error(&MapFullError{Map: "weir_backends", MaxEntries: 262144, Flag: sizeFlag("weir_backends")})
	if got, want := err.Error(), "map weir_backends is full (262144 entries): raise --bpf-map-backends"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	var full *MapFullError
	if !errors.As(err, &full) {
		t.Error("errors.As failed")
	}
}
