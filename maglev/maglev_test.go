package maglev

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// makeBackends returns n backends with IDs 1..n, keys like 10.0.x.y:8080
// and weight 1.
func makeBackends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{ID: uint32(i + 1), Key: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1), Weight: 1}
	}
	return bs
}

func mustBuild(t testing.TB, bs []Backend, m uint32) []uint32 {
	t.Helper()
	table, err := Build(bs, m)
	if err != nil {
		t.Fatalf("Build(%d backends, %d): %v", len(bs), m, err)
	}
	return table
}

func countSlots(table []uint32) map[uint32]int {
	c := make(map[uint32]int)
	for _, id := range table {
		c[id]++
	}
	return c
}

// checkShares asserts that every backend's slot count is within tol (a
// fraction of its ideal count M*w/sum(w)) of that ideal, and less than one
// slot away from it.
func checkShares(t *testing.T, bs []Backend, table []uint32, tol float64) {
	t.Helper()
	var sum float64
	for _, b := range bs {
		sum += float64(b.Weight)
	}
	counts := countSlots(table)
	worst := 0.0
	for _, b := range bs {
		ideal := float64(len(table)) * float64(b.Weight) / sum
		dev := (float64(counts[b.ID]) - ideal) / ideal
		if dev < 0 {
			dev = -dev
		}
		worst = max(worst, dev)
		if d := float64(counts[b.ID]) - ideal; d <= -1 || d >= 1 {
			t.Errorf("backend %q (weight %d): %d slots, ideal %.2f: not within one slot", b.Key, b.Weight, counts[b.ID], ideal)
		}
		if dev > tol {
			t.Errorf("backend %q (weight %d): %d slots, ideal %.1f (deviation %.3f%% > %.3f%%)",
				b.Key, b.Weight, counts[b.ID], ideal, 100*dev, 100*tol)
		}
	}
	t.Logf("N=%d M=%d worst relative deviation %.4f%%", len(bs), len(table), 100*worst)
}

func TestAllowedTableSizes(t *testing.T) {
	if !slices.IsSorted(AllowedTableSizes) || AllowedTableSizes[0] != 251 || AllowedTableSizes[len(AllowedTableSizes)-1] != 131071 {
		t.Fatalf("AllowedTableSizes not ascending from 251 to 131071: %v", AllowedTableSizes)
	}
	for _, m := range AllowedTableSizes {
		for d := uint32(2); d*d <= m; d++ {
			if m%d == 0 {
				t.Errorf("%d is not prime (divisible by %d)", m, d)
			}
		}
		if err := ValidTableSize(m); err != nil {
			t.Errorf("ValidTableSize(%d) = %v", m, err)
		}
	}
	if err := ValidTableSize(DefaultTableSize); err != nil {
		t.Errorf("DefaultTableSize invalid: %v", err)
	}
	for _, m := range []uint32{0, 1, 2, 250, 16384, 65536, 131072} {
		err := ValidTableSize(m)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(m)) || !strings.Contains(err.Error(), "16381") {
			t.Errorf("ValidTableSize(%d) = %v, want error naming %d and the allowed sizes", m, err, m)
		}
	}
}

func TestBalanceEqualWeights(t *testing.T) {
	for _, tc := range []struct {
		n int
		m uint32
	}{{1, 251}, {3, 65537}, {10, 65537}, {100, 65537}, {1000, 131071}} {
		t.Run(fmt.Sprintf("N=%d/M=%d", tc.n, tc.m), func(t *testing.T) {
			bs := makeBackends(tc.n)
			table := mustBuild(t, bs, tc.m)
			checkShares(t, bs, table, 0.01)
			// Equal weights is plain Maglev: counts differ by at most one.
			counts := countSlots(table)
			lo, hi := len(table), 0
			for _, b := range bs {
				lo, hi = min(lo, counts[b.ID]), max(hi, counts[b.ID])
			}
			if hi-lo > 1 {
				t.Errorf("slot counts range over [%d, %d], want a spread of at most 1", lo, hi)
			}
		})
	}
}

func TestBalanceWeighted(t *testing.T) {
	for _, weights := range [][]uint32{
		{1, 2, 3, 4},
		{10, 20, 30, 40},
		{1, 1, 1, 100},
		{5, 7, 11, 13, 17, 19, 23},
		{1 << 31, 1<<32 - 1, 1 << 30},
	} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			bs := makeBackends(len(weights))
			for i, w := range weights {
				bs[i].Weight = w
			}
			checkShares(t, bs, mustBuild(t, bs, 65537), 0.01)
		})
	}
	t.Run("random", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		bs := makeBackends(50)
		for i := range bs {
			bs[i].Weight = 1 + rng.Uint32N(10)
		}
		checkShares(t, bs, mustBuild(t, bs, 131071), 0.01)
	})
}

func TestZeroWeightGetsNoSlots(t *testing.T) {
	bs := makeBackends(10)
	for i := 0; i < len(bs); i += 3 {
		bs[i].Weight = 0
	}
	table := mustBuild(t, bs, 4093)
	valid := map[uint32]bool{}
	for _, b := range bs {
		if b.Weight > 0 {
			valid[b.ID] = true
		}
	}
	for i, id := range table {
		if !valid[id] {
			t.Fatalf("slot %d holds %d, not the ID of a backend with positive weight", i, id)
		}
	}
	counts := countSlots(table)
	for _, b := range bs {
		if b.Weight == 0 && counts[b.ID] != 0 {
			t.Errorf("zero-weight backend %q got %d slots", b.Key, counts[b.ID])
		}
		if b.Weight > 0 && counts[b.ID] == 0 {
			t.Errorf("backend %q got no slots", b.Key)
		}
	}
}

// diff counts the slots whose backend differs between two tables.
func diff(a, b []uint32) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// moved counts the slots that changed owner between two tables, except
// those that had to change: the slots of a removed backend (before) or the
// slots taken by an added one (after), identified by ID.
func moved(before, after []uint32, id uint32) (moved, required int) {
	for i := range before {
		switch {
		case before[i] == id || after[i] == id:
			required++
		case before[i] != after[i]:
			moved++
		}
	}
	return moved, required
}

// TestDisruption measures the extra disruption when one backend of N is
// removed or added: the slots that move between the other backends,
// relative to the share that necessarily moves (M/N for a removed
// backend, M/(N+1) for an added one). A perfect consistent hash would
// score 0; Maglev trades some extra movement for its near-perfect balance,
// and the extra shrinks as M/N grows.
func TestDisruption(t *testing.T) {
	const m = 65537
	for _, n := range []int{10, 100} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			all := makeBackends(n + 1)
			base := all[:n]
			before := mustBuild(t, base, m)
			for _, victim := range []int{0, n / 2, n - 1} {
				rest := slices.Delete(slices.Clone(base), victim, victim+1)
				after := mustBuild(t, rest, m)
				extra, required := moved(before, after, base[victim].ID)
				ratio := float64(extra) / (float64(m) / float64(n))
				t.Logf("remove %q: %d required + %d extra moves; extra/ideal = %.3f, total/ideal = %.3f",
					base[victim].Key, required, extra, ratio, float64(extra+required)/(float64(m)/float64(n)))
				if ratio > 1.2 {
					t.Errorf("removing %q moved %d other slots = %.3f x its share, want <= 1.2", base[victim].Key, extra, ratio)
				}
				// With M >= 1000*N, even the total stays close to the ideal.
				if total := float64(extra+required) / (float64(m) / float64(n)); m >= 1000*n && total > 1.2 {
					t.Errorf("removing %q changed %d slots = %.3f x its share, want <= 1.2", base[victim].Key, extra+required, total)
				}
				for i := range after {
					if after[i] == base[victim].ID {
						t.Fatalf("slot %d still points at the removed backend", i)
					}
				}
			}

			after := mustBuild(t, all, m)
			added := all[n].ID
			extra, required := moved(before, after, added)
			ratio := float64(extra) / (float64(m) / float64(n+1))
			t.Logf("add: %d required + %d extra moves; extra/ideal = %.3f, total/ideal = %.3f",
				required, extra, ratio, float64(extra+required)/(float64(m)/float64(n+1)))
			if ratio > 1.2 {
				t.Errorf("adding a backend moved %d other slots = %.3f x its share, want <= 1.2", extra, ratio)
			}
			if total := float64(extra+required) / (float64(m) / float64(n+1)); m >= 1000*n && total > 1.2 {
				t.Errorf("adding a backend changed %d slots = %.3f x its share, want <= 1.2", extra+required, total)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	bs := makeBackends(100)
	for i := range bs {
		bs[i].Weight = uint32(1 + i%4)
	}
	for _, m := range []uint32{251, 16381, 65537} {
		want := mustBuild(t, bs, m)
		if again := mustBuild(t, bs, m); !slices.Equal(want, again) {
			t.Fatalf("M=%d: two builds of the same input differ", m)
		}
		rng := rand.New(rand.NewPCG(uint64(m), 7))
		for range 5 {
			shuffled := slices.Clone(bs)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			if got := mustBuild(t, shuffled, m); !slices.Equal(want, got) {
				t.Fatalf("M=%d: shuffled input gives a different table", m)
			}
		}
	}
}

// TestGolden pins known tables so that an accidental change to the hash
// or the fill, which would remap most connections during a rolling
// upgrade, is caught. The values were produced by this package.
func TestGolden(t *testing.T) {
	small := []Backend{
		{ID: 1, Key: "10.0.0.1:80", Weight: 1},
		{ID: 2, Key: "10.0.0.2:80", Weight: 1},
		{ID: 3, Key: "10.0.0.3:80", Weight: 2},
	}
	if got, want := fmt.Sprint(mustBuild(t, small, 251)[:16]), "[1 2 3 3 2 1 3 3 3 1 2 3 1 3 2 2]"; got != want {
		t.Errorf("first 16 slots = %s, want %s", got, want)
	}

	digest := func(table []uint32) uint64 {
		h := fnv.New64a()
		for _, id := range table {
			h.Write(binary.LittleEndian.AppendUint32(nil, id))
		}
		return h.Sum64()
	}
	equal := makeBackends(100)
	if got, want := digest(mustBuild(t, equal, 65537)), uint64(0xe1137cb16fa4abcf); got != want {
		t.Errorf("equal weights: table digest = %#x, want %#x", got, want)
	}
	weighted := makeBackends(100)
	for i := range weighted {
		weighted[i].Weight = uint32(1 + i%3)
	}
	if got, want := digest(mustBuild(t, weighted, 65537)), uint64(0x8da54ac34cc68992); got != want {
		t.Errorf("weighted: table digest = %#x, want %#x", got, want)
	}
}

func TestBuildIntoMatchesBuild(t *testing.T) {
	bs := makeBackends(37)
	want := mustBuild(t, bs, 1021)
	dst := make([]uint32, 1021)
	for i := range dst {
		dst[i] = 0xdeadbeef // BuildInto must not depend on dst's old contents
	}
	if err := BuildInto(dst, bs); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dst, want) {
		t.Fatal("BuildInto differs from Build")
	}
	if err := BuildInto(make([]uint32, 1000), bs); err == nil || !strings.Contains(err.Error(), "1000") {
		t.Errorf("BuildInto with len 1000: err = %v, want invalid size error", err)
	}
}

func TestBuildIntoNoAllocs(t *testing.T) {
	bs := makeBackends(100)
	dst := make([]uint32, 16381)
	_ = BuildInto(dst, bs) // warm the scratch pool
	allocs := testing.AllocsPerRun(20, func() {
		if err := BuildInto(dst, bs); err != nil {
			t.Fatal(err)
		}
	})
	// sync.Pool may drop its contents on GC, so allow a small average.
	if allocs > 1 {
		t.Errorf("BuildInto allocates %.1f times per call, want ~0", allocs)
	}
}

func TestErrors(t *testing.T) {
	ok := makeBackends(3)
	with := func(f func(bs []Backend) []Backend) []Backend { return f(slices.Clone(ok)) }
	for _, tc := range []struct {
		name     string
		bs       []Backend
		m        uint32
		mentions []string
	}{
		{"bad size", ok, 1000, []string{"1000", "16381"}},
		{"empty", nil, 251, []string{"no backends"}},
		{"zero ID", with(func(bs []Backend) []Backend { bs[1].ID = 0; return bs }), 251, []string{ok[1].Key, "ID 0"}},
		{"duplicate key", with(func(bs []Backend) []Backend { bs[2].Key = bs[0].Key; return bs }), 251, []string{ok[0].Key, "duplicate"}},
		{"duplicate ID", with(func(bs []Backend) []Backend { bs[2].ID = bs[0].ID; return bs }), 251, []string{"ID 1", ok[0].Key, ok[2].Key}},
		{"all weights 0", with(func(bs []Backend) []Backend {
			for i := range bs {
				bs[i].Weight = 0
			}
			return bs
		}), 251, []string{"weight 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := Build(tc.bs, tc.m)
			if err == nil {
				t.Fatalf("Build succeeded, want error")
			}
			if table != nil {
				t.Errorf("Build returned a table with an error")
			}
			for _, s := range tc.mentions {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// FuzzBuild checks invariants that must hold for every input: every slot is
// filled with the ID of a positive-weight backend, reversing the input does
// not change the table, and each backend's slot count is less than one slot
// away from its exact share M*w/sum(w) (see apportion).
func FuzzBuild(f *testing.F) {
	f.Add("10.0.0.", []byte{1, 1, 1}, false)
	f.Add("svc-", []byte{1, 2, 3, 4}, true)
	f.Add("", []byte{0, 0, 7}, false)
	f.Add("x", []byte{255, 1, 0, 128, 3, 3, 3, 3, 3, 3, 3, 3, 9}, true)
	f.Fuzz(func(t *testing.T, prefix string, weights []byte, big bool) {
		if len(weights) == 0 || len(weights) > 64 {
			return
		}
		m := uint32(251)
		if big {
			m = 1021
		}
		bs := make([]Backend, len(weights))
		var sumW uint64
		for i, w := range weights {
			bs[i] = Backend{ID: uint32(1000 + i), Key: fmt.Sprintf("%s%d", prefix, i), Weight: uint32(w)}
			sumW += uint64(w)
		}
		table, err := Build(bs, m)
		if sumW == 0 {
			if err == nil {
				t.Fatal("all-zero weights accepted")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		slices.Reverse(bs)
		again, err := Build(bs, m)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(table, again) {
			t.Fatal("reversed input gives a different table")
		}
		counts := countSlots(table)
		total := 0
		for _, b := range bs {
			c := uint64(counts[b.ID])
			total += counts[b.ID]
			if b.Weight == 0 {
				if c != 0 {
					t.Fatalf("zero-weight %q got %d slots", b.Key, c)
				}
				continue
			}
			// Largest-remainder apportionment: |c - m*w/sumW| < 1.
			w := uint64(b.Weight)
			if (c+1)*sumW <= uint64(m)*w || c*sumW >= uint64(m)*w+sumW {
				t.Fatalf("%q weight %d: %d slots, ideal %.2f (sum %d, M %d)", b.Key, w, c, float64(m)*float64(w)/float64(sumW), sumW, m)
			}
		}
		if total != int(m) {
			t.Fatalf("slots hold %d known IDs, want %d", total, m)
		}
	})
}

var benchSizes = []struct {
	m uint32
	n int
}{{16381, 100}, {65537, 1000}}

// BenchmarkMaglevBuild measures Build, including the allocation of the
// table; BenchmarkMaglevBuildInto measures the allocation-free path.
func BenchmarkMaglevBuild(b *testing.B) {
	for _, tc := range benchSizes {
		b.Run(fmt.Sprintf("M=%d", tc.m), func(b *testing.B) {
			b.Run(fmt.Sprintf("N=%d", tc.n), func(b *testing.B) {
				bs := makeBackends(tc.n)
				_, _ = Build(bs, tc.m) // warm the scratch pool
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Build(bs, tc.m); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

func BenchmarkMaglevBuildInto(b *testing.B) {
	for _, tc := range benchSizes {
		b.Run(fmt.Sprintf("M=%d", tc.m), func(b *testing.B) {
			b.Run(fmt.Sprintf("N=%d", tc.n), func(b *testing.B) {
				bs := makeBackends(tc.n)
				dst := make([]uint32, tc.m)
				_ = BuildInto(dst, bs) // warm the scratch pool
				b.ReportAllocs()
				for b.Loop() {
					if err := BuildInto(dst, bs); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkMaglevBuildWeighted uses weights 1..10.
func BenchmarkMaglevBuildWeighted(b *testing.B) {
	bs := makeBackends(1000)
	for i := range bs {
		bs[i].Weight = uint32(1 + i%10)
	}
	dst := make([]uint32, 65537)
	_ = BuildInto(dst, bs) // warm the scratch pool
	b.ReportAllocs()
	for b.Loop() {
		if err := BuildInto(dst, bs); err != nil {
			b.Fatal(err)
		}
	}
}

func TestModArithmetic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, m := range AllowedTableSizes {
		magic := fastmodMagic(m)
		limit := uint64(m) * uint64(m)
		as := []uint64{0, 1, uint64(m) - 1, uint64(m), uint64(m) + 1, limit - uint64(m), limit - 1}
		for range 10000 {
			as = append(as, rng.Uint64N(limit))
		}
		for _, a := range as {
			if got, want := fastmod(a, m, magic), uint32(a%uint64(m)); got != want {
				t.Fatalf("fastmod(%d, %d) = %d, want %d", a, m, got, want)
			}
		}
		for _, x := range []uint32{1, 2, m / 2, m - 2, m - 1, 1 + rng.Uint32N(m-1)} {
			if inv := modInverse(x, m); uint64(x)*uint64(inv)%uint64(m) != 1 || inv >= m {
				t.Fatalf("modInverse(%d, %d) = %d", x, m, inv)
			}
		}
		for range 1000 {
			pos, skip := rng.Uint32N(m), 1+rng.Uint32N(m-1)
			if got, want := next(pos, skip, m), (pos+skip)%m; got != want {
				t.Fatalf("next(%d, %d, %d) = %d, want %d", pos, skip, m, got, want)
			}
		}
	}
}
