package fsm

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// Entry is a key's value with its version and expiry.
type Entry struct {
	Value    []byte
	Version  uint64 // index of the log entry that last wrote it
	ExpireAt int64  // unix nanoseconds; 0 = never
}

// Expired reports whether the entry has expired at now (unix nanoseconds).
func (e Entry) Expired(now int64) bool { return e.ExpireAt != 0 && e.ExpireAt <= now }

// find returns key's entry in range r, or ErrNotOwned when r is not Owned
// here.
func (f *FSM) find(r int, key string) (entry, bool, error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return entry{}, false, ErrNotOwned
	}
	rs.mu.RLock()
	if rs.rec.State != Owned {
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
// and it stays as it is. err is ErrNotOwned when r is not Owned here.
func (f *FSM) Lookup(r int, key string) (e Entry, found bool, err error) {
	x, found, err := f.find(r, key)
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
// is not Owned here.
func (f *FSM) Peek(r int, key string, now int64) (value []byte, version uint64, ok bool, err error) {
	x, found, err := f.find(r, key)
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
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	rs.tab.all(func(e entry) {
		h := e.header()
		buf = binary.AppendUvarint(buf[:0], uint64(h.klen))
		buf = append(buf, e.key(h)...)
		buf = binary.AppendUvarint(buf, h.version)
		buf = binary.AppendVarint(buf, h.expireAt)
		buf = append(buf, e.value(h)...)
		digest += xxhash.Sum64(buf) // a sum: table order must not matter
		entries++
	})
	return digest, entries
}
