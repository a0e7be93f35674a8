package maglev

import (
	"fmt"
	"math/big"
	"slices"
	"sort"
	"testing"
)

// referenceBuild is a direct, unoptimized transcription of the algorithm
// (explicit permutation arrays with a multiplication and modulo per entry,
// exact rational shares, turn credits checked one backend at a time), used
// to check that the optimized build picks exactly the same slots.
func referenceBuild(backends []Backend, m uint32) []uint32 {
	var bs []Backend
	for _, b := range backends {
		if b.Weight > 0 {
			bs = append(bs, b)
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].Key < bs[j].Key })

	// Turn rates: 1 each for equal weights, else the largest-remainder
	// apportionment of the m slots.
	rates := make([]uint64, len(bs))
	equal := true
	sum := new(big.Int)
	for i, b := range bs {
		rates[i] = 1
		equal = equal && b.Weight == bs[0].Weight
		sum.Add(sum, big.NewInt(int64(b.Weight)))
	}
	if !equal {
		type share struct {
			i   int
			rem *big.Rat
		}
		var shares []share
		left := int64(m)
		for i, b := range bs {
			exact := new(big.Rat).SetFrac(big.NewInt(int64(m)*int64(b.Weight)), sum)
			floor := new(big.Int).Quo(exact.Num(), exact.Denom())
			rates[i] = floor.Uint64()
			left -= floor.Int64()
			shares = append(shares, share{i, new(big.Rat).Sub(exact, new(big.Rat).SetInt(floor))})
		}
		sort.SliceStable(shares, func(a, b int) bool { return shares[a].rem.Cmp(shares[b].rem) > 0 })
		for _, sh := range shares[:left] {
			rates[sh.i]++
		}
	}
	maxRate := slices.Max(rates)

	perm := make([][]uint32, len(bs))
	for i, b := range bs {
		hOffset, hSkip := hashKey(b.Key)
		offset := hOffset % uint64(m)
		skip := hSkip%uint64(m-1) + 1
		perm[i] = make([]uint32, m)
		for j := range uint64(m) {
			perm[i][j] = uint32((offset + j*skip) % uint64(m))
		}
	}
	nextIdx := make([]int, len(bs))
	credit := make([]uint64, len(bs))
	for i := range credit {
		if !equal {
			credit[i] = maxRate / 2
		}
	}
	table := make([]uint32, m)
	filled := uint32(0)
	for {
		for i, b := range bs {
			credit[i] += rates[i]
			if credit[i] < maxRate {
				continue
			}
			credit[i] -= maxRate
			c := perm[i][nextIdx[i]]
			for table[c] != 0 {
				nextIdx[i]++
				c = perm[i][nextIdx[i]]
			}
			table[c] = b.ID
			nextIdx[i]++
			if filled++; filled == m {
				return table
			}
		}
	}
}

func TestMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		n int
		m uint32
	}{{1, 251}, {2, 251}, {7, 251}, {250, 251}, {300, 251}, {13, 1021}, {100, 4093}, {333, 16381}, {1000, 65537}} {
		for _, weighted := range []bool{false, true} {
			t.Run(fmt.Sprintf("N=%d/M=%d/weighted=%v", tc.n, tc.m, weighted), func(t *testing.T) {
				bs := makeBackends(tc.n)
				if weighted {
					for i := range bs {
						bs[i].Weight = uint32(i*7919) % 5 // includes zeros
					}
					bs[0].Weight = 3
				}
				got := mustBuild(t, bs, tc.m)
				if want := referenceBuild(bs, tc.m); !slices.Equal(got, want) {
					t.Fatalf("table differs from reference in %d slots", diff(got, want))
				}
			})
		}
	}
}
