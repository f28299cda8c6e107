package fsm

import (
	"slices"
	"strings"
)

// ScanPage returns a page of range r's entries whose keys start with prefix
// and sort after after (all of them for ""), in increasing key order: at
// most maxEntries entries (at least 1) and, past the first, as many as fit
// in maxBytes of keys plus values. A page holds at least one entry when
// any key matches; more reports that matching keys follow it, to be read
// by a call resuming after its last key.
//
// Expired entries not yet swept are included, with their ExpireAt: as with
// Lookup, the caller judges expiry with a clock reading taken after the
// read, and resumes after the page's last key whatever it kept.
//
// mode says which range states are served, as for LookupMode: err is
// ErrMoving for a Frozen range with ReadOwned, ErrNotOwned for a state
// mode does not serve (or a range this group never knew).
//
// Keys and values are the stored ones, not copies: they must not be
// modified, and they stay as they are.
//
// Cost: the range keeps no key order, so each call walks the range's whole
// table under its read lock, O(n) for n entries, keeping the page's
// candidates in a heap bounded by maxEntries and maxBytes, O(n log k) for
// a page of k; they are sorted after the lock is released. Paging a range
// of n entries in p pages costs O(n·p), as for Export.
func (f *FSM) ScanPage(r int, mode ReadMode, prefix, after string, maxEntries, maxBytes int) (page []RangeEntry, more bool, err error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return nil, false, ErrNotOwned
	}
	sel := pageSelect{maxEntries: max(maxEntries, 1), maxBytes: maxBytes}
	rs.mu.RLock()
	switch st := rs.rec.State; {
	case st == Owned, st == Frozen && mode == ReadIndexed:
	case st == Frozen:
		rs.mu.RUnlock()
		return nil, false, ErrMoving
	default:
		rs.mu.RUnlock()
		return nil, false, ErrNotOwned
	}
	rs.tab.all(func(e entry) {
		if k := e.storedKey(); k > after && strings.HasPrefix(k, prefix) {
			sel.offer(k, e)
		}
	})
	rs.mu.RUnlock()

	slices.SortFunc(sel.items, func(a, b pageItem) int { return strings.Compare(a.key, b.key) })
	page = make([]RangeEntry, len(sel.items))
	for i, it := range sel.items {
		h := it.e.header()
		page[i] = RangeEntry{Key: it.key, Entry: Entry{Value: it.e.value(h), Version: h.version, ExpireAt: h.expireAt}}
	}
	return page, sel.dropped, nil
}

// pageSelect keeps, of the candidates offered in any order, those of the
// page: the longest run of the smallest keys that holds at most maxEntries
// entries and, past the first, at most maxBytes of keys plus values. items
// is a max-heap by key, so the candidate to drop is at its top. A
// candidate dropped never returns (later offers only push it further
// back), and neither does any key after it: the page ends before cut.
type pageSelect struct {
	items      []pageItem
	bytes      int // keys plus values of items
	maxEntries int
	maxBytes   int
	dropped    bool   // a candidate was left out: more follow the page
	cut        string // with dropped: the smallest key left out; every item sorts before it
}

type pageItem struct {
	key  string
	e    entry
	size int
}

func (s *pageSelect) offer(key string, e entry) {
	if s.dropped && key > s.cut {
		return // after a key already left out
	}
	size := len(key) + e.header().vlen
	if n := len(s.items); n > 0 && (n >= s.maxEntries || s.bytes+size > s.maxBytes) && key > s.items[0].key {
		s.dropped, s.cut = true, key // it would come after a full page
		return
	}
	s.items = append(s.items, pageItem{key: key, e: e, size: size})
	s.bytes += size
	s.up(len(s.items) - 1)
	for len(s.items) > s.maxEntries || len(s.items) > 1 && s.bytes > s.maxBytes {
		s.dropped, s.cut = true, s.items[0].key
		s.pop()
	}
}

// pop removes the largest key.
func (s *pageSelect) pop() {
	last := len(s.items) - 1
	s.bytes -= s.items[0].size
	s.items[0] = s.items[last]
	s.items[last] = pageItem{}
	s.items = s.items[:last]
	s.down(0)
}

func (s *pageSelect) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if s.items[parent].key >= s.items[i].key {
			return
		}
		s.items[parent], s.items[i] = s.items[i], s.items[parent]
		i = parent
	}
}

func (s *pageSelect) down(i int) {
	n := len(s.items)
	for {
		big := i
		if l := 2*i + 1; l < n && s.items[l].key > s.items[big].key {
			big = l
		}
		if r := 2*i + 2; r < n && s.items[r].key > s.items[big].key {
			big = r
		}
		if big == i {
			return
		}
		s.items[big], s.items[i] = s.items[i], s.items[big]
		i = big
	}
}
