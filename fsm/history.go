package fsm

import (
	"errors"
	"sort"
)

// ErrCompacted: a range's history no longer holds the events after the
// version asked for (they were evicted, or this replica's history began
// later: at a snapshot it installed, or when the range moved here). The
// caller must reload the state and watch again from there.
var ErrCompacted = errors.New("fsm: the range's history no longer reaches back to that version")

// DefaultHistory is the events a group keeps in its ranges' histories
// when Options.History is 0, and DefaultHistoryBytes the bytes of keys and
// values they may hold when Options.HistoryBytes is 0.
const (
	DefaultHistory      = 1 << 16
	DefaultHistoryBytes = 64 << 20
)

// EventKind says how a key changed.
type EventKind uint8

// The kinds of events.
const (
	// EventSet: a write stored a value (Set, a swap, Incr, Expire).
	EventSet EventKind = iota + 1
	// EventDelete: a Delete or a CompareAndDelete removed the key.
	EventDelete
	// EventExpire: the key's TTL ran out and the group removed it.
	EventExpire
)

// Event is one change to a key, as a range's history keeps it. Key and
// Value are the stored bytes: the caller must not modify them, and they
// stay as they are.
type Event struct {
	Kind     EventKind
	Key      string
	Value    []byte // EventSet: the value stored; nil otherwise
	Version  uint64 // the change's own version (version.go)
	ExpireAt int64  // EventSet: the value's expiry, unix nanoseconds; 0 = never
}

// A range's history is its recent changes, in version order, kept in
// memory by every replica as it applies them: the same events in the same
// order everywhere, from the range's Owned writes alone (a Frozen range
// has none). It is not replicated state: snapshots do not carry it. A
// replica that installs a snapshot starts the history of each range at
// the range's current version; a range that moves in starts its history
// at the handoff (every write of the new ownership is in it, none of the
// old). The source keeps its history through Frozen and Gone, so a reader
// can drain the last writes there.
//
// The group keeps at most Options.History events over all its ranges, and
// at most Options.HistoryBytes of keys and values in them, evicting the
// oldest; a range's `from` rises as its events go. A set event shares the
// stored entry (its value is held twice only once overwritten); a delete
// or expire event holds a copy of the key alone. None of it counts in
// Used or against MemoryLimit.

// histEvent is one event: for EventSet e is the stored entry (key, value,
// expiry); otherwise a copy of the key (an entry with no value).
type histEvent struct {
	e       entry
	version uint64
	kind    EventKind // or one of the marks
	peer    int       // markClosed: the group the range went to
}

// A range's history is the sequence of its stays in this group: a range
// can leave and come back. Two marks, which are not events, join them:
//
//	markClosed, at the handoff's closing version (epoch h, sequence 0),
//	logged when the range leaves (Release): the stay's last change came
//	before it, and the range went to group peer.
//	markOpened, at the floor of a new stay (the closing version of the
//	handoff that brought the range back), logged by Activate when the
//	history holds earlier stays: the changes between the previous
//	markClosed and it were made elsewhere.
const (
	markClosed EventKind = 100 + iota
	markOpened
)

// size is the bytes of keys and values x holds.
func (x histEvent) size() int64 {
	if x.e.p == nil { // a mark
		return 0
	}
	return x.e.header().size()
}

// history is a range's events, a ring growing by doubling. Guarded by the
// range's mu: the applier writes it under the write lock.
type history struct {
	ev   []histEvent
	head int // the oldest event's slot
	n    int
	// from: every event of the range with a version above from is held.
	from uint64
}

func (h *history) at(i int) histEvent { return h.ev[(h.head+i)%len(h.ev)] }

func (h *history) push(x histEvent) {
	if h.n == len(h.ev) {
		grown := make([]histEvent, max(8, 2*len(h.ev)))
		for i := 0; i < h.n; i++ {
			grown[i] = h.at(i)
		}
		h.ev, h.head = grown, 0
	}
	h.ev[(h.head+h.n)%len(h.ev)] = x
	h.n++
}

// dropOldest drops the oldest event if its version is v, and returns the
// bytes of keys and values it held.
func (h *history) dropOldest(v uint64) (dropped bool, size int64) {
	if h.n == 0 || h.ev[h.head].version != v {
		return false, 0
	}
	size = h.ev[h.head].size()
	h.from = v
	h.ev[h.head] = histEvent{}
	h.head = (h.head + 1) % len(h.ev)
	h.n--
	if h.n < len(h.ev)/4 && len(h.ev) > 8 {
		shrunk := make([]histEvent, len(h.ev)/2)
		for i := 0; i < h.n; i++ {
			shrunk[i] = h.at(i)
		}
		h.ev, h.head = shrunk, 0
	}
	return true, size
}

// mark adds a mark to rs's history (or, keeping none, moves its start
// past it); the applier calls it holding rs.mu for writing, then
// f.noteEvent outside the lock.
func (rs *rangeState) mark(keep bool, kind EventKind, version uint64, peer int) {
	if !keep {
		rs.hist.from = max(rs.hist.from, version)
		return
	}
	rs.hist.push(histEvent{version: version, kind: kind, peer: peer})
}

// histRef names an event in the group's eviction order.
type histRef struct {
	rng     uint32
	version uint64
}

// histOrder is the group's events in the order they were recorded, for
// eviction: a ring of at most Options.History references. A reference
// whose event is gone already (its range's history was reset) is skipped.
// Only the applier touches it.
type histOrder struct {
	refs      []histRef
	head, n   int
	limit     int
	bytes     int64 // keys and values the events hold
	byteLimit int64
}

// record adds an event to rs's history, or with keep false (the group
// keeps none) moves the history's start past it, and returns the bytes of
// keys and values the event holds. e is the stored entry for EventSet,
// the removed one otherwise (the event keeps a copy of its key). The
// applier calls it holding rs.mu for writing, and then f.noteEvent
// outside the lock.
func (rs *rangeState) record(keep bool, kind EventKind, e entry, version uint64) int64 {
	if !keep {
		rs.hist.from = version
		return 0
	}
	if kind != EventSet {
		e = newEntry([]byte(e.storedKey()), nil, version, 0)
	}
	rs.hist.push(histEvent{e: e, version: version, kind: kind})
	return e.header().size()
}

// noteEvent puts range rng's event at version, holding size bytes, into
// the eviction order, evicting the group's oldest events while it holds
// more than its limits (never the event just added). Only the applier
// calls it, holding no range's lock.
func (f *FSM) noteEvent(rng uint32, version uint64, size int64) {
	o := &f.order
	if o.limit <= 0 {
		return
	}
	if len(o.refs) < o.limit && o.n == len(o.refs) {
		o.refs = append(o.refs, histRef{})
	}
	if o.n == len(o.refs) {
		f.evictOldest()
	}
	o.refs[(o.head+o.n)%len(o.refs)] = histRef{rng: rng, version: version}
	o.n++
	o.bytes += size
	for o.bytes > o.byteLimit && o.n > 1 {
		f.evictOldest()
	}
}

// evictOldest drops the oldest event of the eviction order, if its range
// still holds it.
func (f *FSM) evictOldest() {
	o := &f.order
	old := o.refs[o.head]
	o.head = (o.head + 1) % len(o.refs)
	o.n--
	if rs := f.table.Load().at(int(old.rng)); rs != nil {
		rs.mu.Lock()
		dropped, size := rs.hist.dropOldest(old.version)
		rs.mu.Unlock()
		if dropped {
			o.bytes -= size
		}
	}
}

// historyLimits are the group's event and byte budgets under opts.
func historyLimits(opts Options) (events int, bytes int64) {
	events, bytes = opts.History, opts.HistoryBytes
	if events == 0 {
		events = DefaultHistory
	}
	if bytes == 0 {
		bytes = DefaultHistoryBytes
	}
	if events < 0 || bytes < 0 {
		return 0, 0
	}
	return events, bytes
}

// currentVersion is the version of rs's last write in its current or last
// ownership here (0 when it never had one); the caller holds rs.mu.
func (rs *rangeState) currentVersion() uint64 {
	switch rs.rec.State {
	case Owned:
		if rs.seq == 0 {
			// No write in this ownership yet: the floor it began at, the
			// closing version of the one before (see closedAt).
			v, _ := MakeVersion(rs.rec.Epoch-1, 0)
			return v
		}
		v, _ := MakeVersion(rs.rec.Epoch, rs.seq)
		return v
	case Frozen:
		v, _ := MakeVersion(rs.rec.Epoch-1, rs.seq)
		return v
	case Gone:
		v, _ := MakeVersion(rs.rec.Epoch-2, rs.seq)
		return v
	}
	return 0
}

// closedAt is, for a range Frozen or Gone here, the version every write of
// the range's next ownership (at the target, or here after Unfreeze) is
// above: the handoff's epoch with sequence 0.
func (rs *rangeState) closedAt() uint64 {
	h := rs.rec.Epoch // Frozen(h)
	if rs.rec.State == Gone {
		h-- // Gone(h+1)
	}
	v, _ := MakeVersion(h, 0)
	return v
}

// EventPage is a page of a range's history (see Events).
type EventPage struct {
	// Events are the range's changes after the version asked for, in
	// version order.
	Events []Event
	// Next is where the next page starts: the last event's version, or
	// the version asked for when there was none; once Closed, the
	// handoff's closing version.
	Next uint64
	// More: the page was cut at its size; more events follow.
	More bool
	// Closed: the range is Frozen or Gone here and the page holds its last
	// writes here. Every later write of the range, here or elsewhere, has
	// a version above Next.
	Closed bool
	// Gone: the range left this group, for group Peer.
	Gone bool
	Peer int
}

// Events reads range r's history here: up to max of the changes with a
// version above after, and no more than about maxBytes of keys and values
// (at least one change). The range must be Owned, Frozen or Gone here
// (ErrNotOwned otherwise); ErrCompacted when the history no longer holds
// every change after after.
func (f *FSM) Events(r int, after uint64, max, maxBytes int) (EventPage, error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return EventPage{}, ErrNotOwned
	}
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	st := rs.rec.State
	if st != Owned && st != Frozen && st != Gone {
		return EventPage{}, ErrNotOwned
	}
	h := &rs.hist
	if after < h.from {
		return EventPage{}, ErrCompacted
	}
	page := EventPage{Next: after}
	first := h.n // nothing new: the usual case for a poll, in O(1)
	if h.n > 0 && h.at(h.n-1).version > after {
		first = sort.Search(h.n, func(i int) bool { return h.at(i).version > after })
	}
	if first < h.n && h.at(first).kind == markOpened {
		// after lies between an earlier stay here and this one: the
		// changes in between were made where that stay's range went.
		if first > 0 && h.at(first-1).kind == markClosed {
			m := h.at(first - 1)
			return EventPage{Next: after, Closed: true, Gone: true, Peer: m.peer}, nil
		}
		return EventPage{}, ErrCompacted // that stay's mark was evicted
	}
	bytes := 0
	for i := first; i < h.n; i++ {
		x := h.at(i)
		if x.kind == markClosed { // an earlier stay's end
			page.Closed, page.Gone, page.Peer = true, true, x.peer
			page.Next = maxU64(page.Next, x.version)
			return page, nil
		}
		hd := x.e.header()
		if len(page.Events) == max || len(page.Events) > 0 && bytes+hd.klen+hd.vlen > maxBytes {
			page.More = true
			break
		}
		bytes += hd.klen + hd.vlen
		ev := Event{Kind: x.kind, Version: x.version}
		ev.Key = x.e.key(hd)
		if x.kind == EventSet {
			ev.Value, ev.ExpireAt = x.e.value(hd), hd.expireAt
		}
		page.Events = append(page.Events, ev)
		page.Next = x.version
	}
	if st != Owned && !page.More {
		page.Closed = true
		page.Next = maxU64(page.Next, rs.closedAt())
		page.Gone, page.Peer = st == Gone, rs.rec.Peer
	}
	return page, nil
}

// HistoryHead is range r's current version here: every change the history
// will hold from now on is above it. For a range Frozen or Gone here, it
// is the handoff's closing version (see EventPage.Closed). ErrNotOwned
// when the range is not Owned, Frozen or Gone here.
func (f *FSM) HistoryHead(r int) (uint64, error) {
	rs := f.table.Load().at(r)
	if rs == nil {
		return 0, ErrNotOwned
	}
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	switch rs.rec.State {
	case Owned:
		return rs.currentVersion(), nil
	case Frozen, Gone:
		return rs.closedAt(), nil
	}
	return 0, ErrNotOwned
}

func maxU64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
