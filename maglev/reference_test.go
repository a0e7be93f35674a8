package maglev

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// referenceBuild is a direct, unoptimized transcription of the algorithm
// (explicit permutation arrays, multiplication and modulo per entry), used
// to check that the optimized fill picks exactly the same slots.
func referenceBuild(backends []Backend, m uint32) []uint32 {
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return strings.Compare(a.Key, b.Key) })
	var maxW uint64
	for _, b := range bs {
		maxW = max(maxW, uint64(b.Weight))
	}
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
	table := make([]uint32, m)
	filled := uint32(0)
	for {
		for i, b := range bs {
			credit[i] += uint64(b.Weight)
			if b.Weight == 0 || credit[i] < maxW {
				continue
			}
			credit[i] -= maxW
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
