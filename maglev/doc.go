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
// its permutation that is still empty, until the table is full. A backend
// of weight w takes turns at a rate proportional to w (see fill), and a
// backend of weight 0 takes none.
//
// # Contract
//
//   - Determinism: the table depends only on the set of backends (Key, ID,
//     Weight) and on M. Input order does not matter, and the result is the
//     same on every machine, architecture and Go version: the hashes are
//     implemented here and never use per-process seeds.
//   - Balance: a backend of weight w gets within a couple of slots of
//     M*w/sum(weights), so the imbalance is well under 1% when M is at
//     least 100 times the number of backends. Every slot holds the ID of a
//     backend with a positive weight. A backend whose share is below one
//     slot (for example more backends than slots) may get no slot at all.
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
// is materialized), which costs about M*ln(M/sqrt(M)) slot probes, and
// claims the last sqrt(M) slots by direct computation in O(M) time, so a
// build takes O(N log N + M log M) time for equal weights and
// O(N log N + M log M + N*M*maxWeight/sumWeights) for unequal weights
// (the last term counts weighted turns that are skipped). Memory is O(N)
// plus a 16 KiB bitmap; BuildInto reuses pooled scratch space and does
// not allocate in steady state.
package maglev
