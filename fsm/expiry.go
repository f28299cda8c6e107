package fsm

import "container/heap"

// TTL sweeping. Each range keeps a min-heap of its entries' deadlines
// (expiry items); the group keeps a min-heap of its Owned ranges with
// expiries (due), ordered by each range's earliest deadline. Before each
// command, sweep pops what is due at that entry's AppendedAt: a command
// costs O(log) in the range's items and the group's ranges, never
// O(ranges).
//
// An item is not removed when its entry is overwritten or deleted; it is
// skipped when popped if its key no longer holds that very entry (the same
// allocation: every write makes a new one, so this is stricter than
// matching version and deadline, which a copied entry could repeat). Until
// then it keeps the old entry's allocation alive.

type expiry struct {
	at int64 // the entry's expireAt
	e  entry
}

type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = expiry{}
	*h = old[:len(old)-1]
	return x
}

// dueHeap orders ranges by their earliest deadline, then by number.
type dueHeap []*rangeState

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	a, b := h[i].expiries[0].at, h[j].expiries[0].at
	return a < b || a == b && h[i].num < h[j].num
}
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].dueAt, h[j].dueAt = i, j
}
func (h *dueHeap) Push(x any) {
	rs := x.(*rangeState)
	rs.dueAt = len(*h)
	*h = append(*h, rs)
}
func (h *dueHeap) Pop() any {
	old := *h
	rs := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	rs.dueAt = -1
	return rs
}

// pushExpiry records a deadline of rs's.
func (f *FSM) pushExpiry(rs *rangeState, x expiry) {
	first := len(rs.expiries) == 0 || x.at < rs.expiries[0].at
	heap.Push(&rs.expiries, x)
	if first {
		f.requeue(rs)
	}
}

// requeue puts rs where it belongs in the due heap after its earliest
// deadline or its state changed: in it, at its place, if it is Owned and
// has deadlines; out of it otherwise (a range that is not Owned is not
// swept).
func (f *FSM) requeue(rs *rangeState) {
	want := rs.rec.State == Owned && len(rs.expiries) > 0
	switch {
	case want && rs.dueAt < 0:
		heap.Push(&f.due, rs)
	case want:
		heap.Fix(&f.due, rs.dueAt)
	case rs.dueAt >= 0:
		heap.Remove(&f.due, rs.dueAt)
	}
}

// sweep deletes every entry of an Owned range that has expired by now, the
// applying entry's AppendedAt. The set removed depends only on the state
// and now, so every replica frees the same entries and memory accounting
// stays identical.
func (f *FSM) sweep(now int64) {
	for len(f.due) > 0 {
		rs := f.due[0]
		if rs.expiries[0].at > now {
			return
		}
		x := heap.Pop(&rs.expiries).(expiry)
		if cur, found := rs.tab.get(x.e.storedKey()); found && cur == x.e {
			f.removeEntry(rs, cur, EventExpire)
		}
		f.requeue(rs)
	}
}
