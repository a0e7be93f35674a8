package maglev

// Two fixed, arbitrary seeds select the two hash functions of the
// permutation: seedOffset for its starting slot and seedSkip for its
// stride. Changing either (or hashKey) changes every table built, which
// would remap connections during a rolling upgrade: never change them.
const (
	seedOffset uint64 = 0x6d61676c65762d6f // "maglev-o"
	seedSkip   uint64 = 0x7765697220736b70 // "weir skp"
)

const (
	fnvOffset64 uint64 = 14695981039346656037
	fnvPrime64  uint64 = 1099511628211
)

// hashKey returns two independent 64-bit hashes of key, for the offset and
// the skip. They are the same on every machine and in every process (unlike
// hash/maphash). Each is FNV-1a over the key from a seed-perturbed basis,
// followed by the 64-bit finalizer of MurmurHash3 (fmix64) so that every
// input bit affects every output bit: FNV-1a alone leaves the last bytes of
// a key poorly mixed (they pass through only one multiplication), and keys
// such as "10.0.0.1:80" and "10.0.0.2:80" differ only there. The two hashes
// are computed in one pass so that their multiplications overlap.
func hashKey(key string) (offset, skip uint64) {
	a, b := fnvOffset64^seedOffset, fnvOffset64^seedSkip
	for i := 0; i < len(key); i++ {
		a = (a ^ uint64(key[i])) * fnvPrime64
		b = (b ^ uint64(key[i])) * fnvPrime64
	}
	n := uint64(len(key))
	return fmix64(a ^ seedOffset ^ n), fmix64(b ^ seedSkip ^ n)
}

// fmix64 is a bijective avalanche finalizer (MurmurHash3's constants).
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb93fe53a87ce
	h ^= h >> 33
	return h
}
