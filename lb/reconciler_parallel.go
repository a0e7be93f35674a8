package lb

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// parallelMin is the batch size from which pure work (validation,
// flattening, Maglev builds) is spread over the CPUs. Below it goroutines
// cost more than they save, and a one-service change stays on the caller's
// goroutine.
const parallelMin = 128

// parallelChunk is how many items a worker takes at a time.
const parallelChunk = 32

// forEach calls fn(i) for every i in [0, n), concurrently when n is large.
// fn must only touch what belongs to item i.
func forEach(n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n/parallelChunk)
	if n < parallelMin || workers < 2 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				start := int(next.Add(parallelChunk)) - parallelChunk
				if start >= n {
					return
				}
				for i := start; i < min(start+parallelChunk, n); i++ {
					fn(i)
				}
			}
		})
	}
	wg.Wait()
}
