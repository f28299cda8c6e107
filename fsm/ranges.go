package fsm

import (
	"fmt"
	"math"
	"sync"
)

// RangeState is where a range stands in this group. Every replica of the
// group holds the same states (they change only by applying log entries)
// and snapshots carry them.
type RangeState uint8

// The states built so far. The handoff protocol will add Frozen, Gone,
// Incoming and Sealed after these, keeping their numbers (snapshots
// store them).
const (
	// Absent: the group holds nothing of the range and serves none of it.
	// It is the zero value: every range starts Absent at epoch 0.
	Absent RangeState = iota
	// Owned: the group holds the range and serves its reads and writes.
	Owned
)

func (s RangeState) String() string {
	switch s {
	case Absent:
		return "Absent"
	case Owned:
		return "Owned"
	}
	return fmt.Sprintf("RangeState(%d)", uint8(s))
}

// known reports whether s is a state this version understands.
func (s RangeState) known() bool { return s <= Owned }

// holdsData reports whether a range in state s may hold entries.
func (s RangeState) holdsData() bool { return s == Owned }

// RangeRecord is a range's state in this group and the epoch of its
// current ownership: for a range and an epoch, at most one group ever
// reaches Owned (Genesis gives epoch 1; a handoff will give the next one).
type RangeRecord struct {
	State RangeState
	Epoch uint64
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

	// Touched only by the applier.
	expiries expiryHeap // deadlines of the range's entries with a TTL
	dueAt    int        // index in FSM.due; -1 when not there

	_ [24]byte // fill 128 bytes (a size class): neighbouring ranges' locks sit on other cache lines
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
func (f *FSM) OwnedRanges() []int {
	var out []int
	for _, rs := range f.table.Load().ranges {
		if rs == nil {
			continue
		}
		rs.mu.RLock()
		owned := rs.rec.State == Owned
		rs.mu.RUnlock()
		if owned {
			out = append(out, int(rs.num))
		}
	}
	return out
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

func (t *rangeTable) clone() *rangeTable {
	return &rangeTable{ranges: append([]*rangeState(nil), t.ranges...)}
}

func (t *rangeTable) grow(n int) {
	if n > len(t.ranges) {
		t.ranges = append(t.ranges, make([]*rangeState, n-len(t.ranges))...)
	}
}

// setRecord changes rs's record and keeps what depends on it in step: the
// count of Owned ranges, the group's memory share and whether rs is swept.
// Only the applier calls it.
func (f *FSM) setRecord(rs *rangeState, rec RangeRecord) {
	was := rs.rec.State == Owned
	rs.mu.Lock()
	rs.rec = rec
	rs.mu.Unlock()
	if is := rec.State == Owned; is != was {
		if is {
			f.owned++
		} else {
			f.owned--
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
