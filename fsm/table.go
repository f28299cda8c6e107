package fsm

import (
	"encoding/binary"
	"hash/maphash"
	"unsafe"
)

// The compact layout. A stored entry is one allocation holding no
// pointers, written once and never mutated:
//
//	uvarint key length, key, uvarint value length, uvarint version,
//	varint expireAt, value
//
// (for a 12-byte key, a 100-byte value and a version below 2^21: 118 bytes,
// the 128-byte size class). The key comes first so a probe compares it
// after reading one varint. A range's table is open addressing with linear
// probing over two arrays: one pointer per slot and one tag byte (7 bits of
// the key's hash; 0 = empty). A slot costs 9 bytes, at a load between 3/8
// and 3/4.
//
// Because the bytes never change, a reader may keep a value after
// unlocking, and a snapshot may keep entries without copying them.

// entry is a stored entry: a pointer to its allocation.
type entry struct{ p *byte }

// header is an entry's decoded header; the key starts at koff, the value
// at voff.
type header struct {
	klen, vlen int
	version    uint64 // the write that last wrote it (version.go)
	expireAt   int64  // unix nanoseconds; 0 = never
	koff, voff int
}

// newEntry copies key and value into one allocation with their header.
func newEntry(key, value []byte, version uint64, expireAt int64) entry {
	var kb, mb [binary.MaxVarintLen64]byte
	kh := binary.AppendUvarint(kb[:0], uint64(len(key)))
	mid := appendMid(mb[:0], len(value), version, expireAt)
	buf := make([]byte, 0, len(kh)+len(key)+len(mid)+len(value))
	buf = append(append(append(append(buf, kh...), key...), mid...), value...)
	return entry{p: unsafe.SliceData(buf)}
}

// appendMid appends what sits between the key and the value.
func appendMid(b []byte, vlen int, version uint64, expireAt int64) []byte {
	b = binary.AppendUvarint(b, uint64(vlen))
	b = binary.AppendUvarint(b, version)
	return binary.AppendVarint(b, expireAt)
}

// at is the entry's i-th byte; i is within the allocation.
func (e entry) at(i int) byte { return *(*byte)(unsafe.Add(unsafe.Pointer(e.p), i)) }

// uvarint decodes the varint the entry holds at off (written by
// appendHeader, so well formed) and returns the offset past it.
func (e entry) uvarint(off int) (uint64, int) {
	if b := e.at(off); b < 0x80 { // the usual lengths
		return uint64(b), off + 1
	}
	var v uint64
	for shift := 0; ; shift += 7 {
		b := e.at(off)
		off++
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, off
		}
	}
}

func (e entry) header() header {
	klen, koff := e.uvarint(0)
	vlen, off := e.uvarint(koff + int(klen))
	version, off := e.uvarint(off)
	zz, voff := e.uvarint(off)
	return header{klen: int(klen), vlen: int(vlen), version: version, expireAt: int64(zz>>1) ^ -int64(zz&1),
		koff: koff, voff: voff}
}

// storedKey is the stored key (never empty), read without the rest of the
// header.
func (e entry) storedKey() string {
	klen, koff := e.uvarint(0)
	return unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(e.p), koff)), int(klen))
}

// key is the stored key, given the header.
func (e entry) key(h header) string {
	return unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(e.p), h.koff)), h.klen)
}

// value is the stored value, which must not be modified. An empty value
// is empty, not nil.
func (e entry) value(h header) []byte {
	if h.vlen == 0 {
		return []byte{} // no pointer one past the allocation
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(e.p), h.voff)), h.vlen)
}

func (h header) expired(now int64) bool { return h.expireAt != 0 && h.expireAt <= now }

// size is the bytes of key and value the entry accounts for.
func (h header) size() int64 { return int64(h.klen) + int64(h.vlen) }

// table is one range's entries by key. It is not safe for concurrent use
// by itself: readers hold the range's read lock, the applier its write lock
// to change it.
type table struct {
	seed  maphash.Seed // the layout need not match across replicas
	tags  []uint8
	slots []entry
	n     int
}

const minTableSize = 8

func newTable() table { return table{seed: maphash.MakeSeed()} }

func (t *table) hash(key string) (home int, tag uint8) {
	h := maphash.String(t.seed, key)
	return int(h & uint64(len(t.tags)-1)), uint8(h>>57) | 0x80
}

// find returns the slot holding key, or -1.
func (t *table) find(key string) int {
	if t.n == 0 {
		return -1
	}
	mask := len(t.tags) - 1
	i, tag := t.hash(key)
	for ; t.tags[i] != 0; i = (i + 1) & mask {
		if t.tags[i] == tag {
			if t.slots[i].storedKey() == key {
				return i
			}
		}
	}
	return -1
}

// get returns key's entry.
func (t *table) get(key string) (entry, bool) {
	if i := t.find(key); i >= 0 {
		return t.slots[i], true
	}
	return entry{}, false
}

// set stores e under its key, replacing an entry with that key.
func (t *table) set(e entry) {
	key := e.storedKey()
	if i := t.find(key); i >= 0 {
		t.slots[i] = e
		return
	}
	if (t.n+1)*4 > len(t.tags)*3 {
		t.resize(max(minTableSize, 2*len(t.tags)))
	}
	t.insert(key, e)
	t.n++
}

// insert puts e in the first free slot of key's probe sequence.
func (t *table) insert(key string, e entry) {
	mask := len(t.tags) - 1
	i, tag := t.hash(key)
	for t.tags[i] != 0 {
		i = (i + 1) & mask
	}
	t.tags[i], t.slots[i] = tag, e
}

// delete removes key's entry, if any, closing the gap by shifting later
// entries of the probe run back (no tombstones).
func (t *table) delete(key string) {
	i := t.find(key)
	if i < 0 {
		return
	}
	mask := len(t.tags) - 1
	for j := (i + 1) & mask; t.tags[j] != 0; j = (j + 1) & mask {
		e := t.slots[j]
		home, _ := t.hash(e.storedKey())
		// Move j into the gap at i unless its home lies cyclically in (i, j].
		if (j-home)&mask >= (j-i)&mask {
			t.tags[i], t.slots[i] = t.tags[j], e
			i = j
		}
	}
	t.tags[i], t.slots[i] = 0, entry{}
	t.n--
	if len(t.tags) > minTableSize && t.n*8 < len(t.tags) {
		t.resize(len(t.tags) / 2)
	}
}

func (t *table) resize(size int) {
	old := t.slots
	t.tags, t.slots = make([]uint8, size), make([]entry, size)
	for _, e := range old {
		if e.p != nil {
			t.insert(e.storedKey(), e)
		}
	}
}

// all calls fn for every entry, in no particular order.
func (t *table) all(fn func(entry)) {
	for _, e := range t.slots {
		if e.p != nil {
			fn(e)
		}
	}
}
