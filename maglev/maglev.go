package maglev

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync"
)

// Backend is one entry of a Maglev table's input.
type Backend struct {
	ID     uint32 // value written into the table slots (datapath backend id); must be non-zero
	Key    string // stable identity hashed for the permutation, e.g. "10.0.1.5:8080"; must be unique in a set
	Weight uint32 // relative weight; 0 means "gets no slots" (but at least one backend must have weight > 0)
}

// DefaultTableSize is the table size used when none is configured.
const DefaultTableSize uint32 = 16381

// allowedSizes is the authoritative list. AllowedTableSizes is an exported
// copy, so that mutating it cannot make Build accept a size that is not
// prime (with a composite M a permutation need not visit every slot).
var allowedSizes = [...]uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071}

// AllowedTableSizes lists the accepted table sizes (all prime), ascending.
var AllowedTableSizes = slices.Clone(allowedSizes[:])

// maxWords is the size of the filled-slot bitmap for the largest table.
const maxWords = (131071 + 63) / 64

// ValidTableSize returns nil if m is one of AllowedTableSizes.
func ValidTableSize(m uint32) error {
	if slices.Contains(allowedSizes[:], m) {
		return nil
	}
	return fmt.Errorf("maglev: invalid table size %d: must be one of %v", m, allowedSizes)
}

// Build returns a table of m slots, each holding the ID of a backend with a
// positive weight. See the package documentation for the contract.
func Build(backends []Backend, m uint32) ([]uint32, error) {
	if err := ValidTableSize(m); err != nil {
		return nil, err
	}
	dst := make([]uint32, m)
	if err := BuildInto(dst, backends); err != nil {
		return nil, err
	}
	return dst, nil
}

// BuildInto is Build writing into dst, whose length is the table size and
// must be one of AllowedTableSizes. dst's previous contents are ignored; on
// error dst is left unmodified. BuildInto retains neither dst nor backends
// and is safe for concurrent use.
func BuildInto(dst []uint32, backends []Backend) error {
	if uint64(len(dst)) > math.MaxUint32 {
		return fmt.Errorf("maglev: invalid table size %d: must be one of %v", len(dst), allowedSizes)
	}
	m := uint32(len(dst))
	if err := ValidTableSize(m); err != nil {
		return err
	}
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	maxRate, err := s.load(backends, m)
	if err != nil {
		return err
	}
	if len(s.members) == 1 {
		// Every slot is the one backend's: no permutation to walk. A
		// service with a single endpoint is common enough to matter.
		id := s.members[0].id
		for i := range dst {
			dst[i] = id
		}
		return nil
	}
	s.fill(dst, maxRate)
	return nil
}

// member is the fill state of one backend that gets slots. Its
// permutation is permutation[j] = (offset + j*skip) mod M; only the next
// candidate is kept, never the whole permutation.
type member struct {
	pos    uint32    // next candidate slot, permutation[next]
	skip   [4]uint32 // 1, 2, 3 and 4 times the stride, mod M (see walk)
	id     uint32
	rate   uint32 // turns per maxRate rounds (see apportion)
	inv    uint32 // inverse of the stride mod M, computed on first use (see pick)
	credit uint64 // turns earned but not yet taken, in units of 1/maxRate
}

// scratch holds the per-call buffers, pooled so that steady-state rebuilds
// do not allocate.
type scratch struct {
	order   []sortKey
	ids     []uint32 // open-addressing set of the IDs seen, 0 = empty
	members []member
	rank    []int32          // member indices, for apportion
	free    []uint32         // empty slots, during the endgame only
	used    [maxWords]uint64 // bitmap of filled slots
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// sortKey orders backends by Key. Comparing the first 16 bytes as two
// big-endian integers is equivalent to comparing them as strings, and much
// faster; only keys that agree there (or are equal after zero-padding)
// fall back to comparing the strings.
type sortKey struct {
	hi, lo uint64 // bytes 0-7 and 8-15 of the key, zero-padded
	i      int    // index into the input
}

func newSortKey(key string, i int) sortKey {
	var b [16]byte
	copy(b[:], key)
	return sortKey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), i}
}

// load validates backends and fills s.members, in key order, with the
// permutation and turn rate of every backend that gets slots in a table of
// m slots. It returns the largest rate. Checks run in key order, so the
// error reported for an invalid set does not depend on the input order.
func (s *scratch) load(backends []Backend, m uint32) (maxRate uint32, err error) {
	if len(backends) == 0 {
		return 0, fmt.Errorf("maglev: no backends")
	}
	s.order = s.order[:0]
	for i, b := range backends {
		s.order = append(s.order, newSortKey(b.Key, i))
	}
	slices.SortFunc(s.order, func(x, y sortKey) int {
		if x.hi != y.hi {
			return cmp.Compare(x.hi, y.hi)
		}
		if x.lo != y.lo {
			return cmp.Compare(x.lo, y.lo)
		}
		return strings.Compare(backends[x.i].Key, backends[y.i].Key)
	})

	// The ID set is a power-of-two table at most half full.
	bitsN := bits.Len(uint(2*len(backends) - 1))
	s.ids = slices.Grow(s.ids[:0], 1<<bitsN)[:1<<bitsN]
	clear(s.ids)
	mask := uint32(len(s.ids) - 1)

	s.members = s.members[:0]
	for k, o := range s.order {
		b := &backends[o.i]
		if k > 0 && b.Key == backends[s.order[k-1].i].Key {
			return 0, fmt.Errorf("maglev: duplicate backend key %q", b.Key)
		}
		if b.ID == 0 {
			return 0, fmt.Errorf("maglev: backend %q has ID 0 (IDs must be non-zero)", b.Key)
		}
		h := (b.ID * 0x9e3779b1) >> (32 - bitsN) // Fibonacci hashing
		for s.ids[h] != 0 && s.ids[h] != b.ID {
			h = (h + 1) & mask
		}
		if s.ids[h] == b.ID {
			return 0, duplicateIDError(backends, b.ID)
		}
		s.ids[h] = b.ID

		if b.Weight == 0 {
			continue
		}
		hOffset, hSkip := hashKey(b.Key)
		var skip [4]uint32
		skip[0] = uint32(hSkip%uint64(m-1)) + 1
		for j := 1; j < len(skip); j++ {
			skip[j] = next(skip[j-1], skip[0], m)
		}
		s.members = append(s.members, member{
			pos:  uint32(hOffset % uint64(m)),
			skip: skip,
			id:   b.ID,
			rate: b.Weight, // for now; see apportion
		})
	}
	if len(s.members) == 0 {
		return 0, fmt.Errorf("maglev: all %d backends have weight 0", len(backends))
	}
	return s.apportion(m), nil
}

// apportion turns the weights of s.members into the turn rates of fill and
// returns the largest. With equal weights every backend takes one turn per
// round, as in the paper, and the last round is cut short when the table
// is full: the first M mod N backends in key order get one slot more.
// Otherwise the M slots are apportioned by largest remainder (ties broken
// in key order): backend i gets floor(M*w_i/W) or one more, so every
// backend is less than one slot away from its exact share. The quotas then
// serve as weights of the turn schedule; after max(quota) rounds every
// backend has taken exactly its quota of turns and the table is full.
// Backends whose quota is 0 are dropped.
func (s *scratch) apportion(m uint32) uint32 {
	ms := s.members
	equal := true
	var sumW uint64
	for i := range ms {
		equal = equal && ms[i].rate == ms[0].rate
		sumW += uint64(ms[i].rate)
	}
	if equal {
		for i := range ms {
			ms[i].rate = 1
		}
		return 1
	}
	s.rank = s.rank[:0]
	left := uint64(m)
	for i := range ms {
		share := uint64(m) * uint64(ms[i].rate) // < 2^49
		ms[i].rate = uint32(share / sumW)
		ms[i].credit = share % sumW // the remainder, for ranking only
		left -= uint64(ms[i].rate)
		s.rank = append(s.rank, int32(i))
	}
	// left < len(ms) slots remain; they go to the largest remainders.
	slices.SortFunc(s.rank, func(a, b int32) int {
		if c := cmp.Compare(ms[b].credit, ms[a].credit); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	for _, i := range s.rank[:left] {
		ms[i].rate++
	}
	var maxQ uint32
	kept := ms[:0]
	for _, b := range ms {
		if b.rate > 0 {
			maxQ = max(maxQ, b.rate)
			kept = append(kept, b)
		}
	}
	for i := range kept {
		kept[i].credit = uint64(maxQ / 2)
	}
	s.members = kept
	return maxQ
}

// duplicateIDError names the keys, in order, of the backends sharing id.
func duplicateIDError(backends []Backend, id uint32) error {
	var keys []string
	for _, b := range backends {
		if b.ID == id {
			keys = append(keys, b.Key)
		}
	}
	slices.Sort(keys)
	return fmt.Errorf("maglev: duplicate backend ID %d (keys %q and %q)", id, keys[0], keys[1])
}

// fill is the population loop of the Maglev paper (section 3.4) with
// weighted turns: backends take turns in key order, and each turn claims
// the backend's next empty slot in its permutation, until the table is
// full. In every round each backend earns credit equal to its rate and
// takes a turn whenever its credit reaches maxRate, so its turns are spread
// evenly over the rounds (see apportion for the rates). With equal weights
// every backend takes a turn every round: exactly the paper's algorithm.
//
// Finding the next empty slot by walking the permutation costs about
// M/(empty slots) probes, so the last few slots would dominate the build
// (the walk costs M*ln(M) probes in total, half of them for the last
// sqrt(M) slots). Once only endgame(M) slots are left, fill switches to
// pick, which finds the same slot by computing each empty slot's position
// in the permutation directly.
func (s *scratch) fill(dst []uint32, maxRate uint32) {
	m := uint32(len(dst))
	used, ms, full := &s.used, s.members, uint64(maxRate)
	clear(used[:(m+63)/64])
	left, last := m, endgame(m)
	i := 0 // the member whose turn is next
	for ; left > last; i++ {
		if i == len(ms) {
			i = 0
		}
		b := &ms[i]
		if b.credit += uint64(b.rate); b.credit < full {
			continue
		}
		b.credit -= full
		slot := b.pos
		if isSet(used, slot) != 0 {
			slot = b.walk(used, m)
		}
		used[slot>>6%maxWords] |= 1 << (slot & 63)
		b.pos = next(slot, b.skip[0], m)
		dst[slot] = b.id
		left--
	}
	s.collectFree(m)
	fm := fastmodMagic(m)
	for ; left > 0; i++ {
		if i == len(ms) {
			i = 0
		}
		b := &ms[i]
		if b.credit += uint64(b.rate); b.credit < full {
			continue
		}
		b.credit -= full
		dst[b.pick(&s.free, m, fm)] = b.id
		left--
	}
}

// endgame is the number of empty slots below which fill stops walking
// permutations. Picking costs a few cycles per empty slot, walking a few
// cycles per probe and M/left probes per slot, so they break even near
// left = sqrt(M).
func endgame(m uint32) uint32 {
	return uint32(math.Sqrt(float64(m)))
}

// collectFree lists the empty slots of a table of m slots in s.free.
func (s *scratch) collectFree(m uint32) {
	s.free = s.free[:0]
	for w, word := range s.used[:(m+63)/64] {
		for free := ^word; free != 0; free &= free - 1 {
			if i := uint32(w*64 + bits.TrailingZeros64(free)); i < m {
				s.free = append(s.free, i)
			}
		}
	}
}

// pick removes from *free and returns the empty slot that comes first in
// b's permutation from b.pos on, i.e. the slot walking would find, and moves
// b.pos past it. Slot e is reached from b.pos after (e-b.pos)/skip steps,
// computed as (e-b.pos)*skip⁻¹ mod M, so each empty slot costs a couple of
// multiplications instead of M/len(free) probes.
func (b *member) pick(free *[]uint32, m uint32, fm uint64) uint32 {
	if b.inv == 0 {
		b.inv = modInverse(b.skip[0], m)
	}
	list := *free
	best, bestSteps := 0, uint32(math.MaxUint32)
	for k, e := range list {
		d := e - b.pos
		d += m & uint32(int32(d)>>31) // (e - pos) mod m
		if steps := fastmod(uint64(d)*uint64(b.inv), m, fm); steps < bestSteps {
			best, bestSteps = k, steps
		}
	}
	slot := list[best]
	list[best] = list[len(list)-1]
	*free = list[:len(list)-1]
	b.pos = next(slot, b.skip[0], m)
	return slot
}

// modInverse returns x⁻¹ mod m for 0 < x < m, m prime (extended Euclid).
func modInverse(x, m uint32) uint32 {
	r0, r1 := int64(m), int64(x)
	t0, t1 := int64(0), int64(1)
	for r1 != 0 {
		q := r0 / r1
		r0, r1 = r1, r0-q*r1
		t0, t1 = t1, t0-q*t1
	}
	if t0 < 0 {
		t0 += int64(m)
	}
	return uint32(t0)
}

// fastmodMagic and fastmod compute a mod m with two multiplications instead
// of a division (Lemire, Kaser and Kurz, "Faster Remainder by Direct
// Computation", 2019). The result is exact when a < 2^(64-bits(m)), which
// holds here: a < m*m and m < 2^17.
func fastmodMagic(m uint32) uint64 { return math.MaxUint64/uint64(m) + 1 }

func fastmod(a uint64, m uint32, magic uint64) uint32 {
	hi, _ := bits.Mul64(magic*a, uint64(m))
	return uint32(hi)
}

// isSet reports bit i of the bitmap as 0 or 1. The index is reduced modulo
// maxWords (a no-op for i < 131072, a mask because maxWords is a power of
// two) only to let the compiler drop the bounds check.
func isSet(used *[maxWords]uint64, i uint32) uint64 {
	var r uint64
	if used[i>>6%maxWords]&(1<<(i&63)) != 0 {
		r = 1
	}
	return r
}

// next advances pos by skip modulo m, for pos, skip < m <= 2^31. It is
// branch-free on purpose: a wrap-around branch is taken with probability
// about skip/m, i.e. unpredictably, and the resulting mispredictions
// dominated the fill time (the compiler turns "if pos >= m { pos -= m }"
// and min() forms back into branches inside loops).
func next(pos, skip, m uint32) uint32 {
	pos += skip - m                       // now in (-m, m) as an int32
	return pos + m&uint32(int32(pos)>>31) // add m back if negative
}

// walk returns the first empty slot of b's permutation after b.pos, which
// is taken. Late in the fill most candidates are taken and this loop
// dominates. Instead of stepping one candidate at a time (a serial chain of
// add-and-wrap steps and a hard-to-predict branch per candidate), it
// computes four consecutive candidates independently from the precomputed
// multiples of the stride, tests them together and branches once per
// four. The slot found is the same as with single steps.
func (b *member) walk(used *[maxWords]uint64, m uint32) uint32 {
	pos := next(b.pos, b.skip[0], m)
	for {
		c1 := next(pos, b.skip[0], m)
		c2 := next(pos, b.skip[1], m)
		c3 := next(pos, b.skip[2], m)
		full := isSet(used, pos) | isSet(used, c1)<<1 | isSet(used, c2)<<2 | isSet(used, c3)<<3
		if full != 15 {
			cand := [4]uint32{pos, c1, c2, c3}
			return cand[bits.TrailingZeros64(^full)&3]
		}
		pos = next(pos, b.skip[3], m)
	}
}
