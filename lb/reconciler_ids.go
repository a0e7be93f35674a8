package lb

import (
	"fmt"
	"slices"
	"sort"
)

// idRange is an inclusive range of free IDs.
type idRange struct{ lo, hi uint32 }

// idAllocator hands out the lowest free ID, never 0. Lowest-free keeps IDs
// dense (they index per-CPU stats arrays) and makes a retried sync pick
// the same IDs as an undisturbed one. Free IDs below next are kept as
// sorted ranges rather than one by one, so that restoring a sparse set of
// IDs from the maps costs memory in the number of gaps, not their width.
type idAllocator struct {
	kind  string    // for errors: "service", "frontend", "backend"
	max   uint32    // the highest ID handed out
	next  uint64    // every ID >= next is free; wider than an ID so it can't wrap
	free  []idRange // sorted, disjoint, not adjacent, all below next
	inUse int
}

func newIDAllocator(kind string, max uint32) idAllocator {
	return idAllocator{kind: kind, max: max, next: 1}
}

func (a *idAllocator) alloc() (uint32, error) {
	if len(a.free) > 0 {
		r := &a.free[0]
		id := r.lo
		if r.lo == r.hi {
			a.free = slices.Delete(a.free, 0, 1)
		} else {
			r.lo++
		}
		a.inUse++
		return id, nil
	}
	if a.next > uint64(a.max) {
		return 0, fmt.Errorf("all %d %s IDs are in use", a.max, a.kind)
	}
	id := uint32(a.next)
	a.next++
	a.inUse++
	return id, nil
}

// release returns id to the free set; releasing a free ID does nothing.
func (a *idAllocator) release(id uint32) {
	if id == 0 || uint64(id) >= a.next {
		return
	}
	// i is the first range starting above id.
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].lo > id })
	if i > 0 && a.free[i-1].hi >= id {
		return // already free
	}
	a.inUse--
	joinsLeft := i > 0 && a.free[i-1].hi == id-1
	joinsRight := i < len(a.free) && a.free[i].lo == id+1
	switch {
	case joinsLeft && joinsRight:
		a.free[i-1].hi = a.free[i].hi
		a.free = slices.Delete(a.free, i, i+1)
	case joinsLeft:
		a.free[i-1].hi = id
	case joinsRight:
		a.free[i].lo = id
	default:
		a.free = slices.Insert(a.free, i, idRange{id, id})
	}
	// A free range that reaches next folds back into it.
	if n := len(a.free); n > 0 && uint64(a.free[n-1].hi) == a.next-1 {
		a.next = uint64(a.free[n-1].lo)
		a.free = a.free[:n-1]
	}
}

// restore marks ids (any order, duplicates allowed) as in use on an empty
// allocator.
func (a *idAllocator) restore(ids []uint32) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > 0 && ids[0] == 0 {
		ids = ids[1:]
	}
	a.free, a.inUse, a.next = nil, len(ids), 1
	for _, id := range ids {
		if uint64(id) > a.next {
			a.free = append(a.free, idRange{uint32(a.next), id - 1})
		}
		a.next = uint64(id) + 1
	}
}
