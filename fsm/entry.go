package fsm

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// Entry is a key's value with its version and expiry.
type Entry struct {
	Value    []byte
	Version  uint64 // the write that last wrote it: its range's ownership epoch and write sequence (version.go)
	ExpireAt int64  // unix nanoseconds; 0 = never
}

// Expired reports whether the entry has expired at now (unix nanoseconds).
func (e Entry) Expired(now int64) bool { return e.ExpireAt != 0 && e.ExpireAt <= now }

// ReadMode says which range states a read may be served from.
type ReadMode uint8

const (
	// ReadOwned serves Owned ranges only: lease, sole and local reads, and
	// Lookup, Peek and Get. A Frozen range answers ErrMoving.
	ReadOwned ReadMode = iota
	// ReadIndexed serves Owned and Frozen ranges: for a read whose
	// ReadIndex was taken after it was invoked and has applied here. If the
	// handoff's Release committed before that index, the read finds the
	// range Gone (ErrNotOwned); otherwise what it reads predates every
	// write at the target.
	ReadIndexed
)

// find returns key's entry in range r, or ErrMoving when r is Frozen and
// mode is ReadOwned, or ErrNotOwned when mode does not serve r's state.
func (f *FSM) find(r int, key string, mode ReadMode) (entry, bool, error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return entry{}, false, ErrNotOwned
	}
	rs.mu.RLock()
	switch st := rs.rec.State; {
	case st == Owned, st == Frozen && mode == ReadIndexed:
	case st == Frozen:
		rs.mu.RUnlock()
		return entry{}, false, ErrMoving
	default:
		rs.mu.RUnlock()
		return entry{}, false, ErrNotOwned
	}
	e, found := rs.tab.get(key)
	rs.mu.RUnlock()
	return e, found, nil
}

// Lookup returns key's entry in range r, expired or not: the caller
// decides expiry with a clock reading taken after the lookup. As with
// Peek, e.Value is the stored value, not a copy: it must not be modified,
// and it stays as it is. err is ErrNotOwned when r is not Owned here
// (ErrMoving when it is Frozen: see LookupMode).
func (f *FSM) Lookup(r int, key string) (e Entry, found bool, err error) {
	return f.LookupMode(r, key, ReadOwned)
}

// LookupMode is Lookup from the range states mode serves: with
// ReadIndexed, a Frozen range answers too.
func (f *FSM) LookupMode(r int, key string, mode ReadMode) (e Entry, found bool, err error) {
	x, found, err := f.find(r, key, mode)
	if !found {
		return Entry{}, false, err
	}
	h := x.header()
	return Entry{Value: x.value(h), Version: h.version, ExpireAt: h.expireAt}, true, nil
}

// Peek returns key's value in range r and its version, without a copy:
// value is the stored one, which must not be modified. It stays as it is (a
// stored value is never mutated, only replaced). ok is false when the key
// is absent or expired at now (unix nanoseconds); err is ErrNotOwned when r
// is not Owned here (ErrMoving when it is Frozen).
func (f *FSM) Peek(r int, key string, now int64) (value []byte, version uint64, ok bool, err error) {
	x, found, err := f.find(r, key, ReadOwned)
	if !found {
		return nil, 0, false, err
	}
	if h := x.header(); !h.expired(now) {
		return x.value(h), h.version, true, nil
	}
	return nil, 0, false, nil
}

// Get is Peek with a copy of the value.
func (f *FSM) Get(r int, key string, now int64) (value []byte, version uint64, ok bool, err error) {
	value, version, ok, err = f.Peek(r, key, now)
	if !ok {
		return nil, 0, false, err
	}
	return append(make([]byte, 0, len(value)), value...), version, true, nil
}

// Digest is an order-independent hash of every entry of every range (key,
// value, version and expiry), and how many entries it covers: the sum of
// RangeDigest over the ranges. Replicas that applied the same log have the
// same digest; the Jepsen-style suite compares them after healing. Each
// range is read under its lock, so concurrent applies make the result a
// mix of moments: call it on a quiet group.
func (f *FSM) Digest() (digest uint64, entries int) {
	for _, rs := range f.table.Load().ranges {
		if rs != nil {
			d, n := rs.digest()
			digest += d
			entries += n
		}
	}
	return digest, entries
}

// RangeDigest is Digest over range r's entries alone, in whatever state r
// is here.
func (f *FSM) RangeDigest(r int) (digest uint64, entries int) {
	if rs := f.table.Load().at(r); rs != nil {
		return rs.digest()
	}
	return 0, 0
}

func (rs *rangeState) digest() (digest uint64, entries int) {
	var buf []byte
	var d uint64
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	rs.tab.all(func(e entry) {
		d, buf = entryDigest(e, buf)
		digest += d // a sum: table order must not matter
		entries++
	})
	return digest, entries
}

// entryDigest hashes e's key, version, expiry and value, using buf as
// scratch (returned for reuse).
func entryDigest(e entry, buf []byte) (uint64, []byte) {
	h := e.header()
	buf = binary.AppendUvarint(buf[:0], uint64(h.klen))
	buf = append(buf, e.key(h)...)
	buf = binary.AppendUvarint(buf, h.version)
	buf = binary.AppendVarint(buf, h.expireAt)
	buf = append(buf, e.value(h)...)
	return xxhash.Sum64(buf), buf
}
