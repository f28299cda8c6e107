package fsm

import (
	"fmt"
	"strings"
)

// Handoff commands: the state-machine half of moving a range from a source
// group S to a target group T (docs/architecture.md, "State machine"). S
// decides: it freezes the range, T pulls the frozen copy through its own
// log, S logs the verdict (Release, the commit point, or Unfreeze), and T
// activates only after Release. Every command carries its range and the
// handoff's epoch h (Freeze carries the Owned epoch e = h-1). When its
// precondition fails, a command changes nothing and answers ErrPrecondition
// with the current record; a command whose effect is already in place
// answers nil without changing anything. Either way, duplicating or
// reordering commands cannot change the outcome: a command that comes too
// early fails and must be proposed again by its driver, one that comes late
// finds the epoch or the state moved on.
//
//	Freeze(r,e,T)          Owned(e)                 -> Frozen(e+1,T), data kept
//	Incoming(r,h,S,n,b)    Absent/Gone below h      -> Incoming(h,S), expecting n entries, b bytes
//	Chunk(r,h,after,...)   Incoming(h), after=cursor -> entries staged; on last: Sealed(h,S) if
//	                                                   the copy matches, else Absent(h)
//	Release(r,h)           Frozen(h,T)              -> Gone(h+1,T), data dropped
//	Unfreeze(r,h)          Frozen(h,T)              -> Owned(h+1), data kept
//	Activate(r,h)          Sealed(h,S)              -> Owned(h+1), data kept
//	Abort(r,h)             Incoming(h) or Sealed(h) -> Absent(h), data dropped;
//	                       Absent/Gone below h      -> Absent(h), fencing a late Incoming(h)

// handoff applies one handoff command (a log entry of its own).
func (f *FSM) handoff(o *op, index uint64, now int64) Result {
	if !f.inBounds(int64(o.rng)) {
		return Result{Err: fmt.Errorf("%w: range %d out of bounds", ErrBadCommand, o.rng)}
	}
	if o.kind == opChunk {
		if err := checkChunk(o.hand); err != nil {
			return Result{Err: fmt.Errorf("%w: chunk: %v", ErrBadCommand, err)}
		}
	}
	// Commands that may start from a range the group has no record of
	// (Absent at 0) add it to the table; the others find nil and fail.
	var rs *rangeState
	if o.kind == opIncoming || o.kind == opAbort {
		rs = f.known(o.rng)
	} else {
		rs = f.table.Load().at(int(o.rng))
	}
	if rs == nil {
		return Result{Err: ErrPrecondition, Record: &RangeRecord{}}
	}
	var err error
	switch o.kind {
	case opFreeze:
		err = f.freeze(rs, o.hand, index, now)
	case opIncoming:
		err = f.incoming(rs, o.hand, now)
	case opChunk:
		err = f.chunk(rs, o.hand)
	case opRelease:
		err = f.release(rs, o.hand.epoch)
	case opUnfreeze:
		err = f.unfreeze(rs, o.hand.epoch)
	case opActivate:
		err = f.activate(rs, o.hand.epoch)
	default: // opAbort
		err = f.abort(rs, o.hand.epoch)
	}
	rec := rs.rec // only the applier writes records: no lock
	r := Result{Err: err, Record: &rec}
	if err == nil {
		r.Version = index
	}
	return r
}

// freeze: Owned(e) -> Frozen(e+1,T), recording the freeze entry and the
// range's size. The sweep before this entry already removed what expired
// by its AppendedAt; from now on nothing is swept, so the frozen content is
// the state at index.
func (f *FSM) freeze(rs *rangeState, h *handoffOp, index uint64, now int64) error {
	cur, target := rs.rec, int(h.peer)
	switch {
	case cur.State == Frozen && cur.Epoch == h.epoch+1 && cur.Peer == target:
		return nil
	case cur.State != Owned || cur.Epoch != h.epoch:
		return ErrPrecondition
	}
	f.setRecord(rs, RangeRecord{State: Frozen, Epoch: h.epoch + 1, Peer: target,
		FreezeIndex: index, Since: now, Count: rs.count, Bytes: rs.used})
	return nil
}

// incoming: Absent or Gone below h -> Incoming(h,S), expecting the size
// the source announced.
func (f *FSM) incoming(rs *rangeState, h *handoffOp, now int64) error {
	cur := rs.rec
	want := RangeRecord{State: Incoming, Epoch: h.epoch, Peer: int(h.peer), Since: now, Count: h.count, Bytes: h.bytes}
	switch {
	case cur.State == Incoming && cur.Epoch == want.Epoch && cur.Peer == want.Peer &&
		cur.Count == want.Count && cur.Bytes == want.Bytes:
		return nil // a duplicate: the copy staged so far stays
	case cur.State != Absent && cur.State != Gone || cur.Epoch >= h.epoch:
		return ErrPrecondition
	}
	f.setRecord(rs, want)
	return nil
}

// checkChunk rejects a malformed chunk: its keys must be non-empty, within
// bounds and strictly increasing after h.after.
func checkChunk(h *handoffOp) error {
	prev := string(h.after)
	for i, e := range h.entries {
		switch {
		case len(e.key) == 0:
			return fmt.Errorf("entry %d has an empty key", i)
		case len(e.key) > maxField || len(e.value) > maxField:
			return fmt.Errorf("entry %d: key or value over %d bytes", i, maxField)
		case string(e.key) <= prev: // a key is never empty, so the first is after ""
			return fmt.Errorf("entry %d is not after the one before", i)
		}
		prev = string(e.key)
	}
	return nil
}

// chunk stages the next page of an Incoming range's copy: Incoming(h) with
// the cursor at h.after. On the last page the range seals if what it got
// matches both the source's trailer and the size announced by Incoming;
// otherwise the copy is dropped (Absent(h)) and the answer is
// ErrCopyMismatch.
func (f *FSM) chunk(rs *rangeState, h *handoffOp) error {
	cur := rs.rec
	if cur.State != Incoming || cur.Epoch != h.epoch || cur.Cursor != string(h.after) {
		return ErrPrecondition
	}
	next := cur
	var buf []byte
	for _, c := range h.entries {
		e := newEntry(c.key, c.value, c.version, c.expireAt)
		var d uint64
		d, buf = entryDigest(e, buf)
		next.Got.Count++
		next.Got.Bytes += int64(len(c.key) + len(c.value))
		next.Got.Digest += d
		f.stage(rs, e)
	}
	if n := len(h.entries); n > 0 {
		next.Cursor = strings.Clone(string(h.entries[n-1].key)) // the key aliases the log entry
	}
	if !h.last {
		f.setRecord(rs, next)
		return nil
	}
	if next.Got != h.trailer || next.Got.Count != next.Count || next.Got.Bytes != next.Bytes {
		f.setRecord(rs, RangeRecord{State: Absent, Epoch: h.epoch})
		f.dropData(rs)
		return ErrCopyMismatch
	}
	next.State = Sealed
	f.setRecord(rs, next)
	return nil
}

// stage adds e, a copied entry whose key rs does not hold, to rs, a range
// that is not Owned: its bytes count in Used but not against the limit, and
// its deadline waits in the range's heap until the range is Owned.
func (f *FSM) stage(rs *rangeState, e entry) {
	n := e.header().size()
	rs.mu.Lock()
	rs.tab.set(e)
	rs.used += n
	rs.count++
	rs.mu.Unlock()
	if h := e.header(); h.expireAt != 0 {
		f.pushExpiry(rs, expiry{at: h.expireAt, e: e})
	}
	f.used.Add(n)
	f.count.Add(1)
}

// release: Frozen(h,T) -> Gone(h+1,T), dropping the data. The commit point
// of the handoff.
func (f *FSM) release(rs *rangeState, epoch uint64) error {
	cur := rs.rec
	switch {
	case cur.State == Gone && cur.Epoch == epoch+1:
		return nil
	case cur.State != Frozen || cur.Epoch != epoch:
		return ErrPrecondition
	}
	f.setRecord(rs, RangeRecord{State: Gone, Epoch: epoch + 1, Peer: cur.Peer})
	f.dropData(rs)
	return nil
}

// unfreeze: Frozen(h) -> Owned(h+1), with the data: the source takes the
// range back.
func (f *FSM) unfreeze(rs *rangeState, epoch uint64) error {
	return f.own(rs, Frozen, epoch)
}

// activate: Sealed(h) -> Owned(h+1), with the staged data, whose deadlines
// are now swept.
func (f *FSM) activate(rs *rangeState, epoch uint64) error {
	return f.own(rs, Sealed, epoch)
}

// own makes a range in state from at epoch Owned at epoch+1.
func (f *FSM) own(rs *rangeState, from RangeState, epoch uint64) error {
	cur := rs.rec
	switch {
	case cur.State == Owned && cur.Epoch == epoch+1:
		return nil
	case cur.State != from || cur.Epoch != epoch:
		return ErrPrecondition
	}
	f.setRecord(rs, RangeRecord{State: Owned, Epoch: epoch + 1})
	return nil
}

// abort: Incoming(h) or Sealed(h) -> Absent(h), dropping the staged copy.
// On a range Absent or Gone below h it only raises the epoch to h, so an
// Incoming(h) that comes later is refused.
func (f *FSM) abort(rs *rangeState, epoch uint64) error {
	cur := rs.rec
	switch {
	case cur.State == Absent && cur.Epoch == epoch:
		return nil
	case (cur.State == Incoming || cur.State == Sealed) && cur.Epoch == epoch:
	case (cur.State == Absent || cur.State == Gone) && cur.Epoch < epoch:
	default:
		return ErrPrecondition
	}
	f.setRecord(rs, RangeRecord{State: Absent, Epoch: epoch})
	f.dropData(rs)
	return nil
}

// dropData drops rs's entries in O(1): the table and the expiry heap are
// replaced, and the range's bytes and entries leave the group's counts. rs
// is not Owned, so it is not in the due heap and not charged to the limit.
func (f *FSM) dropData(rs *rangeState) {
	rs.mu.Lock()
	used, count := rs.used, rs.count
	rs.tab = newTable()
	rs.used, rs.count = 0, 0
	rs.mu.Unlock()
	rs.expiries = nil
	f.used.Add(-used)
	f.count.Add(-count)
}
