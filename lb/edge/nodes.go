package edge

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// fields is a YAML mapping checked against the keys it may hold: the value
// node of each key present, and the mapping itself for errors about keys
// that are missing.
type fields struct {
	node   *yaml.Node
	path   string
	values map[string]*yaml.Node
}

// get returns the value of key, or nil when it is absent or null (a null
// value means "use the default", as an absent key does).
func (f fields) get(key string) *yaml.Node {
	n := f.values[key]
	if n == nil || n.Tag == "!!null" {
		return nil
	}
	return n
}

// sub is the path of key under this mapping.
func (f fields) sub(key string) string {
	if f.path == "" {
		return key
	}
	return f.path + "." + key
}

// resolve follows aliases, so *anchor works wherever its value would.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "empty"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "not a value"
}

// mapping checks that n is a mapping whose keys are all in known, each at
// most once, and returns them.
func (l *errorList) mapping(n *yaml.Node, path string, known ...string) (fields, bool) {
	n = resolve(n)
	f := fields{node: n, path: path, values: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		l.at(n, cmp.Or(path, "(top level)"), "is %s, want a mapping of %s", kindName(n), strings.Join(known, ", "))
		return f, false
	}
	keys := map[string]*yaml.Node{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		switch {
		case k.Kind != yaml.ScalarNode:
			l.at(k, path, "a key is %s, want a name (one of %s)", kindName(k), strings.Join(known, ", "))
			ok = false
		case keys[k.Value] != nil:
			l.at(k, f.sub(k.Value), "repeated; it is already set at %s (keep one)", l.where(keys[k.Value]))
			ok = false
		case !slices.Contains(known, k.Value):
			l.at(k, f.sub(k.Value), "unknown field (want one of %s)", strings.Join(known, ", "))
			keys[k.Value] = k
			ok = false
		default:
			keys[k.Value] = k
			f.values[k.Value] = v
		}
	}
	return f, ok
}

// sequence checks that n is a list and returns its items.
func (l *errorList) sequence(n *yaml.Node, path, want string) ([]*yaml.Node, bool) {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		l.at(n, path, "is %s, want a list of %s", kindName(n), want)
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
	}
	return items, true
}

// scalar checks that n is a single non-empty value.
func (l *errorList) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Value == "" {
		l.at(n, path, "is %s, want %s", kindName(n), want)
		return "", false
	}
	return n.Value, true
}

// integer reads a whole number in [lo, hi].
func (l *errorList) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		l.at(n, path, "is %s, want a whole number from %d to %d", kindName(n), lo, hi)
		return 0, false
	}
	if v < lo || v > hi {
		l.at(n, path, "%d is out of range (use %d-%d)", v, lo, hi)
		return 0, false
	}
	return v, true
}

func (l *errorList) port(n *yaml.Node, path string) (uint16, bool) {
	v, ok := l.integer(n, path, 1, math.MaxUint16)
	return uint16(v), ok
}

func (l *errorList) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := l.scalar(n, path, "a duration such as 2s or 500ms")
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		l.at(n, path, "%q is not a duration (use a number with a unit, such as 2s, 500ms or 3h)", s)
		return 0, false
	}
	return d, true
}

func (l *errorList) addr(n *yaml.Node, path string) (netip.Addr, bool) {
	s, ok := l.scalar(n, path, "an IPv4 or IPv6 address")
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		l.at(n, path, "%q is not an IP address (use an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::10)", s)
		return netip.Addr{}, false
	}
	return a, true
}

func (l *errorList) prefix(n *yaml.Node, path string) (netip.Prefix, bool) {
	s, ok := l.scalar(n, path, "a CIDR prefix")
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		l.at(n, path, "%q is not a CIDR prefix (use address/length, such as 203.0.113.0/24)", s)
		return netip.Prefix{}, false
	}
	return p, true
}

// oneOf reads a value from a fixed set of words.
func (l *errorList) oneOf(n *yaml.Node, path string, words ...string) (string, bool) {
	want := "one of " + strings.Join(words, ", ")
	s, ok := l.scalar(n, path, want)
	if !ok {
		return "", false
	}
	if !slices.Contains(words, s) {
		l.at(n, path, "%q is not known (use %s)", s, want)
		return "", false
	}
	return s, true
}
