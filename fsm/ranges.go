package fsm

import (
	"fmt"
	"math"
	"sync"
)

// RangeState is where a range stands in this group. Every replica of the
// group holds the same states (they change only by applying log entries)
// and snapshots carry them.
//
// A handoff moves a range from a source group S to a target group T:
//
//	S: Owned(e) --Freeze--> Frozen(e+1) --Release--> Gone(e+2)
//	                               \--Unfreeze--> Owned(e+2)
//	T: Absent/Gone(<h) --Incoming--> Incoming(h) --Chunk...last--> Sealed(h) --Activate--> Owned(h+1)
//	   Incoming(h) or Sealed(h) --Abort--> Absent(h); a last Chunk that does not match --> Absent(h)
type RangeState uint8

// The states. Their numbers are stored in snapshots: never renumber them.
const (
	// Absent: the group holds nothing of the range and serves none of it.
	// It is the zero value: every range starts Absent at epoch 0. Its
	// epoch fences stale handoff commands.
	Absent RangeState = iota
	// Owned: the group holds the range and serves its reads and writes.
	Owned
	// Frozen: the source of a handoff. The group keeps the data, refuses
	// writes (ErrMoving), serves ReadIndex reads only, and does not sweep
	// expired entries, so the content depends on the freeze index alone.
	Frozen
	// Gone: the source after Release (the commit point): the data is
	// dropped and Peer names the group the range went to.
	Gone
	// Incoming: the target of a handoff, staging the copy chunk by chunk.
	// It serves nothing.
	Incoming
	// Sealed: the target holding a complete, verified copy, waiting for
	// the source's verdict. It serves nothing.
	Sealed
)

func (s RangeState) String() string {
	switch s {
	case Absent:
		return "Absent"
	case Owned:
		return "Owned"
	case Frozen:
		return "Frozen"
	case Gone:
		return "Gone"
	case Incoming:
		return "Incoming"
	case Sealed:
		return "Sealed"
	}
	return fmt.Sprintf("RangeState(%d)", uint8(s))
}

// known reports whether s is a state this version understands.
func (s RangeState) known() bool { return s <= Sealed }

// holdsData reports whether a range in state s may hold entries.
func (s RangeState) holdsData() bool {
	return s == Owned || s == Frozen || s == Incoming || s == Sealed
}

// Tally is a range's entry count, bytes of keys plus values, and
// order-independent digest (as RangeDigest computes it): what a handoff
// checks its copy against.
type Tally struct {
	Count  int64
	Bytes  int64
	Digest uint64
}

// RangeRecord is a range's state in this group and the epoch of its
// current ownership: for a range and an epoch, at most one group ever
// reaches Owned (Genesis gives epoch 1; each handoff the next one). It is
// a comparable value; fields a state does not list are zero.
type RangeRecord struct {
	State RangeState
	Epoch uint64
	// Peer is the other group of a handoff: the target T in Frozen and
	// Gone, the source S in Incoming and Sealed.
	Peer int
	// FreezeIndex is the log index of the Freeze entry (Frozen).
	FreezeIndex uint64
	// Since is the AppendedAt (unix nanoseconds) of the entry that began
	// the state: the Freeze (Frozen) or the Incoming (Incoming, Sealed),
	// for the drivers' timeouts.
	Since int64
	// Count and Bytes are the moving range's size: its entries and bytes
	// of keys plus values at freeze (Frozen), or as the source announced
	// them (Incoming, Sealed: the copy must match them to seal).
	Count, Bytes int64
	// Cursor is the last key staged (Incoming, Sealed): the next Chunk
	// must start after it.
	Cursor string
	// Got is the tally of the entries staged so far (Incoming, Sealed).
	Got Tally
}

// valid reports whether rec holds only the fields its state lists.
func (rec RangeRecord) valid() bool {
	bare := RangeRecord{State: rec.State, Epoch: rec.Epoch}
	switch rec.State {
	case Absent, Owned:
		return rec == bare
	case Gone:
		bare.Peer = rec.Peer
		return rec == bare
	case Frozen:
		return rec.Cursor == "" && rec.Got == Tally{}
	case Incoming, Sealed:
		return rec.FreezeIndex == 0
	}
	return false
}

// rangeState is one range's record and data: everything a handoff will
// move as one piece, apart from its items in the group's due heap (which
// only orders ranges, and is rebuilt from the expiry heaps).
type rangeState struct {
	num uint32

	// mu guards rec, tab, used and count against readers; the applier,
	// the only writer, holds it to write and reads them without it.
	mu    sync.RWMutex
	rec   RangeRecord
	tab   table
	used  int64 // bytes of keys + values in tab
	count int64 // entries in tab
	// seq is the sequence number of the range's last write in its current
	// ownership (version.go); 0 when the range became Owned. Snapshots
	// carry it.
	seq uint64
	// hist is the range's recent changes (history.go).
	hist history

	// Touched only by the applier.
	expiries expiryHeap // deadlines of the range's entries with a TTL
	dueAt    int        // index in FSM.due; -1 when not there

	_ [24]byte // fill 320 bytes (a size class): neighbouring ranges' locks sit on other cache lines
}

func newRangeState(num uint32) *rangeState {
	return &rangeState{num: num, tab: newTable(), dueAt: -1}
}

// rangeTable maps range numbers to states; nil means Absent at epoch 0.
// A table is never modified once published.
type rangeTable struct {
	ranges []*rangeState
}

func (t *rangeTable) at(r int) *rangeState {
	if uint(r) >= uint(len(t.ranges)) {
		return nil
	}
	return t.ranges[r]
}

// Range returns range r's record in this group (Absent at epoch 0 for a
// range it has never known).
func (f *FSM) Range(r int) RangeRecord {
	rs := f.table.Load().at(r)
	if rs == nil {
		return RangeRecord{}
	}
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	return rs.rec
}

// OwnedRanges returns the ranges Owned by this group, in increasing order.
func (f *FSM) OwnedRanges() []int { return f.RangesIn(Owned) }

// RangesIn returns the ranges in state s here, in increasing order (for
// Absent, only the ranges this group has a record of). A new leader finds
// the handoffs it must drive with RangesIn(Frozen), RangesIn(Incoming) and
// RangesIn(Sealed).
func (f *FSM) RangesIn(s RangeState) []int {
	if f.CountIn(s) == 0 {
		return nil
	}
	var out []int
	for _, rs := range f.table.Load().ranges {
		if rs == nil {
			continue
		}
		rs.mu.RLock()
		in := rs.rec.State == s
		rs.mu.RUnlock()
		if in {
			out = append(out, int(rs.num))
		}
	}
	return out
}

// CountIn is how many ranges are in state s here: a few atomic loads, for
// a caller polling whether any range is in a handoff. For Absent it
// counts only the ranges the group has a record of.
func (f *FSM) CountIn(s RangeState) int {
	if !s.known() {
		return 0
	}
	return int(f.inState[s].Load())
}

// RangeUsed is the bytes of keys plus values range r holds here, in any
// state.
func (f *FSM) RangeUsed(r int) int64 {
	rs := f.table.Load().at(r)
	if rs == nil {
		return 0
	}
	rs.mu.RLock()
	defer rs.mu.RUnlock()
	return rs.used
}

// genesis applies a Genesis entry: every listed range still Absent at
// epoch 0 becomes Owned at epoch 1; any other record is left as it is, so
// replaying the entry changes nothing. A range out of bounds rejects the
// whole entry.
func (f *FSM) genesis(ranges []uint32, index uint64) Result {
	for _, r := range ranges {
		if !f.inBounds(int64(r)) {
			return Result{Err: fmt.Errorf("%w: genesis: range %d out of bounds", ErrBadCommand, r)}
		}
	}
	cur := f.table.Load()
	var next *rangeTable // built only if a range is new to the table
	for _, r := range ranges {
		t := cur
		if next != nil {
			t = next
		}
		rs := t.at(int(r))
		if rs == nil {
			if next == nil {
				next = cur.clone()
			}
			next.grow(int(r) + 1)
			rs = newRangeState(r)
			f.inState[Absent].Add(1)
			next.ranges[r] = rs
		}
		if rs.rec == (RangeRecord{}) {
			f.setRecord(rs, RangeRecord{State: Owned, Epoch: 1})
		}
	}
	if next != nil {
		f.table.Store(next)
	}
	return Result{Version: index}
}

// known returns range r's state, first adding r to the table (Absent at
// epoch 0) if the group has no record of it (one copy of the table per
// range added: handoff commands add one range at a time). Only the
// applier calls it; r is in bounds.
func (f *FSM) known(r uint32) *rangeState {
	cur := f.table.Load()
	if rs := cur.at(int(r)); rs != nil {
		return rs
	}
	next := cur.clone()
	next.grow(int(r) + 1)
	rs := newRangeState(r)
	f.inState[Absent].Add(1)
	next.ranges[r] = rs
	f.table.Store(next)
	return rs
}

func (t *rangeTable) clone() *rangeTable {
	return &rangeTable{ranges: append([]*rangeState(nil), t.ranges...)}
}

func (t *rangeTable) grow(n int) {
	if n > len(t.ranges) {
		t.ranges = append(t.ranges, make([]*rangeState, n-len(t.ranges))...)
	}
}

// setRecord changes rs's record and keeps what depends on it in step: the
// count of Owned ranges and their bytes, the group's memory share and
// whether rs is swept. Only the applier calls it.
func (f *FSM) setRecord(rs *rangeState, rec RangeRecord) {
	was := rs.rec.State == Owned
	f.inState[rs.rec.State].Add(-1)
	f.inState[rec.State].Add(1)
	var marked uint64 // the version of a mark added to the history
	rs.mu.Lock()
	if rec.State == Owned && (rs.rec.State != Owned || rs.rec.Epoch != rec.Epoch) {
		rs.seq = 0 // a new ownership: its versions start over at a greater epoch
		if rs.rec.State != Frozen {
			// Genesis or a handoff's Activate: a stay begins (after
			// Unfreeze the stay goes on from the freeze).
			floor, _ := MakeVersion(rec.Epoch-1, 0)
			if rs.hist.n == 0 {
				rs.hist.from = max(rs.hist.from, floor)
			} else {
				rs.mark(f.order.limit > 0, markOpened, floor, 0)
				marked = floor
			}
		}
	}
	if rec.State == Gone && rs.rec.State == Frozen {
		// Release: the stay ends.
		closed, _ := MakeVersion(rec.Epoch-1, 0)
		rs.mark(f.order.limit > 0, markClosed, closed, rec.Peer)
		marked = closed
	}
	rs.rec = rec
	rs.mu.Unlock()
	if marked != 0 && f.order.limit > 0 {
		f.noteEvent(rs.num, marked, 0)
	}
	if is := rec.State == Owned; is != was {
		if is {
			f.owned++
			f.ownedUsed += rs.used
		} else {
			f.owned--
			f.ownedUsed -= rs.used
		}
		f.limit = f.share(f.owned)
		f.requeue(rs)
	}
}

// share is the group's part of the cluster's memory limit when it owns
// owned ranges: MemoryLimit * owned / Ranges, computed without overflow;
// math.MaxInt64 when there is no limit.
func (f *FSM) share(owned int) int64 {
	limit, ranges := f.opts.MemoryLimit, int64(f.opts.Ranges)
	switch {
	case limit <= 0:
		return math.MaxInt64
	case ranges <= 0:
		return limit
	}
	o := int64(owned)
	return limit/ranges*o + limit%ranges*o/ranges
}
