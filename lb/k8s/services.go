package k8s

import (
	"cmp"
	"slices"

	"github.com/weir-lb/weir/lb"
)

func compareNames(a, b lb.ServiceName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Port, b.Port), boolCompare(a.IPv6, b.IPv6))
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func sortServices(ss []*lb.Service) {
	slices.SortFunc(ss, func(a, b *lb.Service) int { return compareNames(a.Name, b.Name) })
}

func sortedNames(m map[lb.ServiceName]*lb.Service) []lb.ServiceName {
	names := make([]lb.ServiceName, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, compareNames)
	return names
}
