package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-lb/weir/internal/testutil"
)

// What kube-proxy 1.37's nftables mode writes, and what ParseNftServices
// follows (checked against a real kube-proxy, see testdata/ and
// e2e/kube_smoke_test.go):
//
//   - map service-ips, "addr . proto . port : goto CHAIN": one element per
//     ClusterIP, externalIP and load-balancer ingress IP. A ClusterIP goes to
//     service-HASH-ns/name/proto/port, an external address to
//     external-HASH-..., which jumps to mark-for-masquerade and goes to the
//     service chain.
//   - map service-nodeports, "proto . port : goto external-HASH-...": the
//     NodePorts. Their frontend addresses are the elements of set
//     nodeport-ips (the node IPs kube-proxy accepts NodePort traffic on).
//     When that set is absent the services chain matches `fib daddr type
//     local` minus loopback instead (--nodeport-addresses matching
//     everything, or an address family the node has no IP of); the
//     frontend address is then the unspecified address, 0.0.0.0 or ::.
//   - the service chain ends in
//     `meta l4proto tcp dnat ip addr . port to numgen random mod N map { 0 : A . P, ... }`
//     or, for a single endpoint, `meta l4proto tcp dnat to A:P`.
//   - with sessionAffinity ClientIP instead: `ip saddr @affinity-set goto
//     endpoint-CHAIN` rules and `numgen random mod N vmap { 0 : goto
//     endpoint-CHAIN, ... }`, each endpoint chain ending in `dnat to A:P`.
//
// So: start from the two maps, follow every goto/jump (also inside
// anonymous and named verdict maps) and collect every dnat target on the
// way. Services without ready endpoints sit in no-endpoint-services /
// no-endpoint-nodeports instead and do not appear in the result. Local
// traffic policies, firewall chains and masquerading are not modelled: the
// result is "where can a packet to this frontend be DNATed to".

// NftServices reads kube-proxy's `ip kube-proxy` and `ip6 kube-proxy`
// tables inside ns and returns frontend ("10.96.0.10:80/TCP",
// "[fd00::1]:80/UDP") -> sorted, de-duplicated backends ("10.244.1.5:8080").
// A table that does not exist yet reads as empty.
func NftServices(tb testing.TB, ns *testutil.Netns) map[string][]string {
	tb.Helper()
	m, err := readNftServices(ns)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// WaitNft polls NftServices until frontend maps to exactly want (order does
// not matter), or fails the test after 30 s. An empty want waits until the
// frontend is gone.
func WaitNft(tb testing.TB, ns *testutil.Netns, frontend string, want []string) {
	tb.Helper()
	want = slices.Sorted(slices.Values(want))
	want = slices.Compact(want)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := readNftServices(ns)
		if err == nil && slices.Equal(got[frontend], want) {
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				tb.Fatalf("netns %s: frontend %s never became %v: %v", ns.Name, frontend, want, err)
			}
			tb.Fatalf("netns %s: frontend %s never became %v in 30 s; last read %v; all frontends: %v",
				ns.Name, frontend, want, got[frontend], got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readNftServices(ns *testutil.Netns) (map[string][]string, error) {
	var docs [][]byte
	for _, family := range []string{"ip", "ip6"} {
		out, err := ns.Command("nft", "-j", "list", "table", family, "kube-proxy").Output()
		if err != nil {
			if ee := exitStderr(err); strings.Contains(ee, "No such file or directory") {
				continue // kube-proxy has not created this family's table (yet)
			}
			return nil, fmt.Errorf("netns %s: nft -j list table %s kube-proxy: %v %s", ns.Name, family, err, exitStderr(err))
		}
		docs = append(docs, out)
	}
	return ParseNftServices(docs...)
}

// ParseNftServices parses the output of `nft -j list table <family>
// kube-proxy` (any number of tables) into frontend -> sorted backends; see
// the comment at the top of nft.go for the structures it follows.
func ParseNftServices(docs ...[]byte) (map[string][]string, error) {
	res := map[string][]string{}
	for _, d := range docs {
		t, err := parseNftTable(d)
		if err != nil {
			return nil, err
		}
		t.services(res)
	}
	for k, v := range res {
		slices.Sort(v)
		res[k] = slices.Compact(v)
	}
	return res, nil
}

// nftTable is the part of one `nft -j list table` document the parser needs.
type nftTable struct {
	family string
	chains map[string][][]any // chain -> rules -> statements
	maps   map[string][]any   // map -> elements ([key, value])
	sets   map[string][]any   // set -> elements
}

func parseNftTable(doc []byte) (*nftTable, error) {
	var top struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("parse nft JSON: %w", err)
	}
	t := &nftTable{chains: map[string][][]any{}, maps: map[string][]any{}, sets: map[string][]any{}}
	for _, obj := range top.Nftables {
		for kind, raw := range obj {
			var o struct {
				Family string `json:"family"`
				Name   string `json:"name"`
				Chain  string `json:"chain"`
				Expr   []any  `json:"expr"`
				Elem   []any  `json:"elem"`
			}
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			if err := d.Decode(&o); err != nil {
				return nil, fmt.Errorf("parse nft %s object: %w", kind, err)
			}
			switch kind {
			case "table":
				t.family = o.Family
			case "chain":
				if _, ok := t.chains[o.Name]; !ok {
					t.chains[o.Name] = nil
				}
			case "rule":
				t.chains[o.Chain] = append(t.chains[o.Chain], o.Expr)
			case "map":
				t.maps[o.Name] = o.Elem
			case "set":
				t.sets[o.Name] = o.Elem
			}
		}
	}
	return t, nil
}

func (t *nftTable) services(res map[string][]string) {
	for _, e := range t.maps["service-ips"] {
		key, verdict, ok := mapElem(e)
		if !ok {
			continue
		}
		parts := concat(key)
		if len(parts) != 3 {
			continue
		}
		addr, ok := parseAddr(parts[0])
		port, ok2 := parsePort(parts[2])
		if !ok || !ok2 {
			continue
		}
		t.addFrontend(res, frontendKey(addr, port, parts[1]), verdict)
	}

	nodeIPs, haveSet := t.sets["nodeport-ips"]
	var addrs []netip.Addr
	for _, e := range nodeIPs {
		if a, ok := parseAddr(unwrapElem(e)); ok {
			addrs = append(addrs, a)
		}
	}
	if !haveSet {
		if t.family == "ip6" {
			addrs = []netip.Addr{netip.IPv6Unspecified()}
		} else {
			addrs = []netip.Addr{netip.IPv4Unspecified()}
		}
	}
	for _, e := range t.maps["service-nodeports"] {
		key, verdict, ok := mapElem(e)
		if !ok {
			continue
		}
		parts := concat(key)
		if len(parts) != 2 {
			continue
		}
		port, ok := parsePort(parts[1])
		if !ok {
			continue
		}
		for _, a := range addrs {
			t.addFrontend(res, frontendKey(a, port, parts[0]), verdict)
		}
	}
}

func (t *nftTable) addFrontend(res map[string][]string, key string, verdict any) {
	var backends []string
	t.walk(verdict, map[string]bool{}, &backends)
	if len(backends) > 0 {
		res[key] = append(res[key], backends...)
	}
}

// walk collects the dnat targets reachable from v: a statement, a verdict,
// an expression, or a list of them. seen stops chain cycles.
func (t *nftTable) walk(v any, seen map[string]bool, out *[]string) {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			t.walk(e, seen, out)
		}
	case map[string]any:
		if d, ok := x["dnat"].(map[string]any); ok {
			*out = append(*out, t.dnatTargets(d)...)
			return
		}
		for _, verb := range []string{"goto", "jump"} {
			if g, ok := x[verb].(map[string]any); ok {
				if target, ok := g["target"].(string); ok {
					t.followChain(target, seen, out)
				}
				return
			}
		}
		if vm, ok := x["vmap"].(map[string]any); ok {
			t.walk(t.mapData(vm["data"]), seen, out)
			return
		}
		for _, e := range x {
			t.walk(e, seen, out)
		}
	}
}

func (t *nftTable) followChain(name string, seen map[string]bool, out *[]string) {
	if seen[name] {
		return
	}
	seen[name] = true
	for _, rule := range t.chains[name] {
		t.walk(rule, seen, out)
	}
}

// mapData returns the values of a verdict or data map given inline
// ({"set": [[k, v], ...]}) or by name ("@name").
func (t *nftTable) mapData(data any) []any {
	var elems []any
	switch d := data.(type) {
	case string:
		elems = t.maps[strings.TrimPrefix(d, "@")]
	case map[string]any:
		elems, _ = d["set"].([]any)
	}
	var vals []any
	for _, e := range elems {
		if _, v, ok := mapElem(e); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// dnatTargets turns a dnat statement into "addr:port" strings. Forms:
// {"addr": "A", "port": P}, and {"addr": {"map": {"key": numgen, "data":
// {"set": [[i, {"concat": ["A", P]}], ...]}}}} for `addr . port to numgen
// ... map {...}`.
func (t *nftTable) dnatTargets(d map[string]any) []string {
	defPort, hasPort := parsePort(d["port"])
	one := func(v any) (string, bool) {
		v = unwrapElem(v)
		if parts := concat(v); len(parts) == 2 {
			a, ok := parseAddr(parts[0])
			p, ok2 := parsePort(parts[1])
			if ok && ok2 {
				return netip.AddrPortFrom(a, p).String(), true
			}
			return "", false
		}
		a, ok := parseAddr(v)
		if !ok {
			return "", false
		}
		if !hasPort {
			return a.String(), true
		}
		return netip.AddrPortFrom(a, defPort).String(), true
	}
	if m, ok := d["addr"].(map[string]any); ok {
		if inner, ok := m["map"].(map[string]any); ok {
			var out []string
			for _, v := range t.mapData(inner["data"]) {
				if s, ok := one(v); ok {
					out = append(out, s)
				}
			}
			return out
		}
	}
	if s, ok := one(d["addr"]); ok {
		return []string{s}
	}
	return nil
}

// mapElem splits a map element [key, value], unwrapping {"elem": {"val":
// ...}} (how nft writes an element that carries a comment or timeout).
func mapElem(e any) (key, val any, ok bool) {
	pair, ok := e.([]any)
	if !ok || len(pair) != 2 {
		return nil, nil, false
	}
	return unwrapElem(pair[0]), pair[1], true
}

func unwrapElem(v any) any {
	if m, ok := v.(map[string]any); ok {
		if el, ok := m["elem"].(map[string]any); ok {
			return el["val"]
		}
	}
	return v
}

func concat(v any) []any {
	if m, ok := v.(map[string]any); ok {
		if c, ok := m["concat"].([]any); ok {
			return c
		}
	}
	return nil
}

func parseAddr(v any) (netip.Addr, bool) {
	s, ok := v.(string)
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

func parsePort(v any) (uint16, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = x
	default:
		return 0, false
	}
	p, err := strconv.ParseUint(s, 10, 16)
	return uint16(p), err == nil
}

func frontendKey(a netip.Addr, port uint16, proto any) string {
	p, _ := proto.(string)
	return netip.AddrPortFrom(a, port).String() + "/" + strings.ToUpper(p)
}

// exitStderr is the stderr an *exec.ExitError captured, or "".
func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}
