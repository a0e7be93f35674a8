// Package maglev builds Maglev consistent-hashing lookup tables, as
// described in section 3.4 of Eisenbud et al., "Maglev: A Fast and
// Reliable Software Network Load Balancer" (NSDI 2016), extended with
// backend weights.
//
// A table has M slots (M one of AllowedTableSizes, all prime) and each
// slot holds the ID of a backend. The datapath picks a backend with
// table[hash(flow) % M].
//
// # Algorithm
//
// Every backend has a permutation of the slots,
// permutation[j] = (offset + j*skip) mod M, with offset = h1(Key) mod M and
// skip = h2(Key) mod (M-1) + 1, where h1 and h2 are two fixed, seeded
// 64-bit hashes. Because M is prime, every permutation visits every slot.
// Backends then take turns, in Key order, each claiming the first slot of
// its permutation that is still empty, until the table is full. With equal
// weights every backend takes one turn per round, exactly as in the paper.
// Otherwise the M slots are first apportioned to the backends in
// proportion to their weights (largest remainder method), and each backend
// takes its quota of turns spread evenly over the rounds. A backend of
// weight 0 takes no turns.
//
// # Contract
//
//   - Determinism: the table depends only on the set of backends (Key, ID,
//     Weight) and on M. Input order does not matter, and the result is the
//     same on every machine, architecture and Go version: the hashes are
//     implemented here and never use per-process seeds.
//   - Balance: a backend of weight w gets floor(M*w/W) or floor(M*w/W)+1
//     slots, where W is the sum of the weights: less than one slot away
//     from its exact share, so the imbalance is under 1% when every share
//     is at least 100 slots. Every slot holds the ID of a backend with a
//     positive weight. A backend whose share is below one slot (for
//     example when there are more backends than slots) may get none.
//   - Minimal disruption: adding or removing one backend of N moves about
//     M/N slots to or from it, plus a smaller number of slots shuffled
//     between the others; the larger M is relative to N, the smaller that
//     extra disruption.
//   - Errors: Build and BuildInto reject a table size that is not allowed,
//     an empty backend set, duplicate Keys, duplicate IDs, ID 0 and a set in
//     which every weight is 0. Error messages name the offending key or
//     value. The destination table is not modified on error.
//
// # Complexity
//
// Validation sorts the backends by key: O(N log N). Filling the table
// walks the permutations incrementally (no per-backend permutation array
// is materialized), which costs about M*ln(sqrt(M)) slot probes, and
// claims the last sqrt(M) slots by direct computation in O(M) time. A
// build therefore takes O(N log N + M log M) time with equal weights.
// Unequal weights add one cheap step per backend per round, O(N*Q) where
// Q <= M is the largest quota: negligible for moderate weight ratios
// (weights 1..10, N=1000, M=65537: Q=119), but with very skewed weights
// such as one backend of weight 1000 among 999 of weight 1 it grows to
// tens of milliseconds. Memory is O(N) plus a 16 KiB bitmap; BuildInto
// reuses pooled scratch space and does not allocate in steady state.
package maglev
