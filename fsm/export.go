package fsm

import "container/heap"

// RangeEntry is one entry of a range with its key: what Export pages out
// and a Chunk carries. Value, Version and ExpireAt are copied verbatim from
// source to target.
type RangeEntry struct {
	Key string
	Entry
}

// Export returns a page of range r's entries for the target of a handoff
// to pull: those with keys after after (all of them for ""), in increasing
// key order, as many as fit in maxBytes of keys plus values but at least
// one; last reports that no entry follows the page. r must be Frozen at
// epoch here (else ErrPrecondition): its content then changes only by
// Release dropping it, so every replica showing Frozen(epoch) pages out the
// same bytes, and a page resumed after any key is the same.
//
// Keys and values are the stored ones, not copies: they must not be
// modified, and they stay as they are.
//
// Cost: the range keeps no key order, so each call walks the range's whole
// table, O(n) for n entries, and heap-selects the page, O(k log n) for k
// entries returned; paging a range out in p pages costs O(n·p). With
// 1024 ranges a range is about 1/1024 of the data: 100 MB of 100-byte
// values in 1 MiB pages is ~1M entries walked ~100 times. The walk holds
// the range's read lock; the selection runs after it is released.
func (f *FSM) Export(r int, epoch uint64, after string, maxBytes int) (entries []RangeEntry, last bool, err error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return nil, false, ErrPrecondition
	}
	rs.mu.RLock()
	if rs.rec.State != Frozen || rs.rec.Epoch != epoch {
		rs.mu.RUnlock()
		return nil, false, ErrPrecondition
	}
	var rest keyHeap
	rs.tab.all(func(e entry) {
		if e.storedKey() > after {
			rest = append(rest, e)
		}
	})
	rs.mu.RUnlock()

	heap.Init(&rest)
	size := 0
	for len(rest) > 0 {
		e := rest[0]
		h := e.header()
		n := h.klen + h.vlen
		if len(entries) > 0 && size+n > maxBytes {
			break
		}
		size += n
		heap.Pop(&rest)
		entries = append(entries, RangeEntry{Key: e.key(h), Entry: Entry{Value: e.value(h), Version: h.version, ExpireAt: h.expireAt}})
	}
	return entries, len(rest) == 0, nil
}

// keyHeap orders entries by key.
type keyHeap []entry

func (h keyHeap) Len() int           { return len(h) }
func (h keyHeap) Less(i, j int) bool { return h[i].storedKey() < h[j].storedKey() }
func (h keyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// RangeTally is range r's entry count, bytes of keys plus values and digest
// (RangeDigest's), read at one moment, in whatever state r is here: on a
// Frozen range, the trailer the last Chunk of its handoff carries.
func (f *FSM) RangeTally(r int) Tally {
	rs := f.table.Load().at(r)
	if rs == nil {
		return Tally{}
	}
	var t Tally
	var buf []byte
	var d uint64
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	rs.tab.all(func(e entry) {
		d, buf = entryDigest(e, buf)
		t.Digest += d
	})
	t.Count, t.Bytes = rs.count, rs.used
	return t
}
