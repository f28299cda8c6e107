package gridkv

import "time"

// Entry is a key with its value, version and expiry, as GetEntry and Scan
// return it.
//
// Version names the write that gave the key this value. Versions order
// the writes of one range (the keys hashing to it), and so of one key,
// even across moves of the range between replica groups: a later write of
// a key always has a greater version, and no two writes of one range share
// one. Versions of keys in different ranges are not comparable. A version
// packs the range's ownership epoch (high 16 bits: it grows with each
// move) and the write's sequence number within that ownership (low 48
// bits); it is never 0 for a stored key.
type Entry struct {
	Key      string
	Value    []byte
	Version  uint64
	ExpireAt time.Time // zero: the key does not expire
}
