package lb

import (
	"math"
	"testing"
)

func mustAlloc(t *testing.T, a *idAllocator) uint32 {
	t.Helper()
	id, err := a.alloc()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIDAllocatorLowestFree(t *testing.T) {
	a := newIDAllocator("test", math.MaxUint32)
	for want := uint32(1); want <= 5; want++ {
		if got := mustAlloc(t, &a); got != want {
			t.Fatalf("alloc = %d, want %d", got, want)
		}
	}
	a.release(4)
	a.release(2)
	a.release(2) // twice: no effect
	a.release(9) // never allocated: no effect
	if a.inUse != 3 {
		t.Fatalf("inUse = %d, want 3", a.inUse)
	}
	for _, want := range []uint32{2, 4, 6} {
		if got := mustAlloc(t, &a); got != want {
			t.Fatalf("alloc = %d, want %d (lowest free)", got, want)
		}
	}
	// Releasing the top IDs folds them back into next.
	a.release(6)
	a.release(5)
	if a.next != 5 || len(a.free) != 0 {
		t.Errorf("next=%d free=%v, want 5 and none", a.next, a.free)
	}
}

func TestIDAllocatorRestore(t *testing.T) {
	a := newIDAllocator("test", math.MaxUint32)
	a.restore([]uint32{7, 3, 3, 0, 4})
	if a.inUse != 3 {
		t.Fatalf("inUse = %d, want 3", a.inUse)
	}
	for _, want := range []uint32{1, 2, 5, 6, 8} {
		if got := mustAlloc(t, &a); got != want {
			t.Fatalf("alloc = %d, want %d", got, want)
		}
	}
}

func TestIDAllocatorSparseRestoreAndExhaustion(t *testing.T) {
	a := newIDAllocator("test", math.MaxUint32)
	a.restore([]uint32{math.MaxUint32}) // one gap of 2^32-2 IDs, one range
	if len(a.free) != 1 {
		t.Fatalf("free = %v, want one range", a.free)
	}
	if got := mustAlloc(t, &a); got != 1 {
		t.Fatalf("alloc = %d, want 1", got)
	}
	a.release(math.MaxUint32)
	if a.inUse != 1 {
		t.Errorf("inUse = %d after releasing the top ID, want 1", a.inUse)
	}
	full := newIDAllocator("test", math.MaxUint32)
	full.next = math.MaxUint32 + 1
	if _, err := full.alloc(); err == nil {
		t.Error("alloc past 2^32-1 succeeded")
	}
}
