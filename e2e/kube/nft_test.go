package kube

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The fixtures are `nft -j list table ip|ip6 kube-proxy` from a real
// kube-proxy v1.37.2 (nftables mode, node IP 10.250.14.42, apiserver on
// 10.250.14.41:33599) with these services in namespace cap:
//
//	web    LoadBalancer tcp 80->8080, externalIP 192.0.2.10, ingress
//	       198.51.100.10, NodePort 30815, endpoints .10 .11 (dnat ... numgen map)
//	dns    ClusterIP udp 53->5353, one endpoint (the single `dnat to` form)
//	sticky ClusterIP tcp 443->8443, sessionAffinity ClientIP, three
//	       endpoints (numgen vmap to per-endpoint chains)
//	np     NodePort sctp 9000, NodePort 31786, one endpoint
//	empty  ClusterIP tcp 81, no endpoints (only in no-endpoint-services)
func TestParseNftServicesRealKubeProxy(t *testing.T) {
	got, err := ParseNftServices(readTestdata(t, "nft-ip-kube-proxy.json"), readTestdata(t, "nft-ip6-kube-proxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	web := []string{"10.244.1.10:8080", "10.244.1.11:8080"}
	want := map[string][]string{
		"10.96.0.1:443/TCP":       {"10.250.14.41:33599"},
		"10.96.116.27:80/TCP":     web,
		"192.0.2.10:80/TCP":       web,
		"198.51.100.10:80/TCP":    web,
		"10.250.14.42:30815/TCP":  web,
		"10.96.111.135:53/UDP":    {"10.244.1.10:5353"},
		"10.96.86.200:443/TCP":    {"10.244.1.10:8443", "10.244.1.11:8443", "10.244.1.12:8443"},
		"10.96.89.36:9000/SCTP":   {"10.244.1.12:9000"},
		"10.250.14.42:31786/SCTP": {"10.244.1.12:9000"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseNftServices:\n got %v\nwant %v", got, want)
	}
}

// Forms kube-proxy does not produce in the fixture: IPv6, a NodePort map
// without a nodeport-ips set (--nodeport-addresses matching everything),
// a named verdict map, elements with comments and a chain cycle.
func TestParseNftServicesHandWritten(t *testing.T) {
	doc := []byte(`{"nftables": [
 {"table": {"family": "ip6", "name": "kube-proxy"}},
 {"map": {"family": "ip6", "name": "service-ips", "elem": [
   [{"elem": {"val": {"concat": ["fd00::10", "tcp", 80]}, "comment": "ns/a:http"}}, {"goto": {"target": "svc-a"}}]
 ]}},
 {"map": {"family": "ip6", "name": "service-nodeports", "elem": [
   [{"concat": ["udp", 30053]}, {"goto": {"target": "ext-b"}}]
 ]}},
 {"map": {"family": "ip6", "name": "eps-a", "elem": [
   [0, {"goto": {"target": "ep-1"}}], [1, {"goto": {"target": "ep-2"}}]
 ]}},
 {"chain": {"family": "ip6", "name": "svc-a"}},
 {"rule": {"chain": "svc-a", "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2}}, "data": "@eps-a"}}]}},
 {"rule": {"chain": "ep-1", "expr": [{"dnat": {"addr": "fd00:244::1", "port": 8080}}]}},
 {"rule": {"chain": "ep-2", "expr": [{"jump": {"target": "svc-a"}}, {"dnat": {"addr": "fd00:244::2", "port": 8080}}]}},
 {"rule": {"chain": "ext-b", "expr": [{"goto": {"target": "svc-b"}}]}},
 {"rule": {"chain": "svc-b", "expr": [{"dnat": {"family": "ip6", "addr": {"map": {"key": {"numgen": {"mode": "random", "mod": 1}},
   "data": {"set": [[0, {"concat": ["fd00:244::3", 53]}]]}}}}}]}}
]}`)
	got, err := ParseNftServices(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"[fd00::10]:80/TCP": {"[fd00:244::1]:8080", "[fd00:244::2]:8080"},
		"[::]:30053/UDP":    {"[fd00:244::3]:53"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseNftServices:\n got %v\nwant %v", got, want)
	}
}

func TestParseNftServicesRejectsGarbage(t *testing.T) {
	if _, err := ParseNftServices([]byte("table ip kube-proxy {")); err == nil {
		t.Fatal("ParseNftServices accepted text output; want a JSON error")
	}
}
