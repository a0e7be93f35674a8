package bpf

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/weir-lb/weir/lb"
)

// Every backend ID has a word in weir_backend_words: a hash of what the
// datapath uses of the backend (service, address, port, tunnel) with its
// state in the low two bits, 0 for no backend. A conntrack entry copies
// the word with the backend's address, so an established packet reads
// one word of a small array instead of the backend from its hash map;
// a new word (another backend under the ID, a new tunnel) sends it back
// to the hash map once. Words are stored atomically through a mapping:
// a new backend's after its entry is written, a deleted one's zero
// before its entry goes.

// wordState is WEIR_BACKEND_WORD_STATE.
const wordState = 3

// arrayStride is the distance between the values of an array map in
// memory: the kernel rounds the value size up to 8 bytes.
const arrayStride = 8

// backendWord is the word of a backend entry.
func backendWord(v *BackendValue) uint32 {
	h := fnv.New32a()
	_, _ = h.Write(unsafe.Slice((*byte)(unsafe.Pointer(&v.ServiceID)), 4))
	_, _ = h.Write(v.Addr[:])
	_, _ = h.Write(v.Port[:])
	_, _ = h.Write(v.Tunnel[:])
	w := h.Sum32() &^ wordState
	if w == 0 {
		w = wordState + 1
	}
	return w | uint32(v.State)&wordState
}

// checkBackendID refuses an ID that has no word, before the backend's
// entry is written. IDs index the words, which hold one more than
// weir_backends (IDs start at 1), so an ID beyond them means as many
// backends as the map holds: it is reported as that map being full.
func (d *Datapath) checkBackendID(id lb.BackendID) error {
	if uint32(id) >= d.maps.BackendWords.MaxEntries() {
		return fmt.Errorf("backend %d: %w", id, &MapFullError{Map: "weir_backends", MaxEntries: d.maps.Backends.MaxEntries(), Flag: sizeFlag("weir_backends")})
	}
	return nil
}

// storeBackendWords stores words[i] as the word of ids[i], IDs checked.
func (d *Datapath) storeBackendWords(ids []lb.BackendID, words []uint32) error {
	order := make([]int, len(ids))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(ids[a]) - int(ids[b]) })
	// Array values are 8-byte aligned in memory, also 4-byte ones.
	err := storeMapped(d.maps.BackendWords, arrayStride, len(order), func(i int) uint64 { return uint64(ids[order[i]]) },
		func(p unsafe.Pointer, i int) { atomic.StoreUint32((*uint32)(p), words[order[i]]) })
	if err != nil {
		return fmt.Errorf("backend words: %w", err)
	}
	return nil
}
