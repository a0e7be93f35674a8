package k8s

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/weir-lb/weir/lb"
)

// fullService sets every field of an lb.Service to a non-zero value.
func fullService() *lb.Service {
	return &lb.Service{
		Name:            lb.ServiceName{Namespace: "ns", Name: "web", Port: "http", IPv6: false},
		Frontends:       []lb.Frontend{{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: lb.TCP, Scope: lb.ScopeExternal, Kind: lb.KindNodePort}},
		Backends:        []lb.Backend{{Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080, Tunnel: netip.MustParseAddr("192.168.0.2"), Weight: 1, State: lb.BackendTerminating, Zone: "z1", NodeName: "node-b", Local: true}},
		Mode:            lb.ModeSNAT,
		SessionAffinity: time.Minute,
		ExternalLocal:   true,
		InternalLocal:   true,
		SourceRanges:    []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		MaglevTableSize: 16381,
		HealthCheck:     &lb.HealthCheck{Type: "http", Path: "/", Port: 1, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1},
	}
}

// TestFingerprintCoversEveryField changes every field of a service, one
// at a time (found by reflection, so a field added to lb.Service is
// covered here at once), and wants a different fingerprint each time.
func TestFingerprintCoversEveryField(t *testing.T) {
	base := fingerprintOf(fullService())
	if fingerprintOf(fullService()) != base {
		t.Fatal("fingerprint not deterministic")
	}
	var paths []string
	var walk func(v reflect.Value, path string, change func())
	walk = func(v reflect.Value, path string, change func()) {
		switch v.Kind() {
		case reflect.Struct:
			if v.Type() == reflect.TypeFor[netip.Addr]() || v.Type() == reflect.TypeFor[netip.Prefix]() {
				paths = append(paths, path)
				return
			}
			for i := range v.NumField() {
				walk(v.Field(i), path+"."+v.Type().Field(i).Name, nil)
			}
		case reflect.Slice:
			walk(v.Index(0), path+"[0]", nil)
		case reflect.Pointer:
			walk(v.Elem(), path, nil)
		default:
			paths = append(paths, path)
		}
	}
	walk(reflect.ValueOf(fullService()).Elem(), "Service", nil)
	for _, path := range paths {
		svc := fullService()
		if !mutate(reflect.ValueOf(svc).Elem(), path[len("Service"):]) {
			t.Errorf("%s: can't change it in this test: teach mutate its kind", path)
			continue
		}
		if fingerprintOf(svc) == base {
			t.Errorf("%s: changing it leaves the fingerprint: hash it in serviceEncoder.service", path)
		}
	}
	if len(paths) < 30 {
		t.Errorf("walked only %d fields: %v", len(paths), paths)
	}
	// Moving a value between neighbouring strings is a change too.
	a, b := fullService(), fullService()
	a.Name.Namespace, a.Name.Name = "nsw", "eb"
	b.Name.Namespace, b.Name.Name = "ns", "web"
	if fingerprintOf(a) == fingerprintOf(b) {
		t.Error("strings are not length-prefixed")
	}
}

// mutate changes the field at path (".A.B[0].C") and says if it could.
func mutate(v reflect.Value, path string) bool {
	for path != "" {
		switch {
		case path[0] == '.':
			end := len(path)
			for i := 1; i < len(path); i++ {
				if path[i] == '.' || path[i] == '[' {
					end = i
					break
				}
			}
			if v.Kind() == reflect.Pointer {
				v = v.Elem()
			}
			v = v.FieldByName(path[1:end])
			path = path[end:]
		case len(path) >= 3 && path[:3] == "[0]":
			v = v.Index(0)
			path = path[3:]
		default:
			return false
		}
	}
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(v.Uint() + 1)
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Struct:
		switch a := v.Addr().Interface().(type) {
		case *netip.Addr:
			*a = a.Next()
		case *netip.Prefix:
			*a = netip.PrefixFrom(a.Addr(), a.Bits()+1)
		default:
			return false
		}
	default:
		return false
	}
	return true
}
