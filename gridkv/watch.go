package gridkv

import (
	"context"
	"fmt"
	"maps"
	"time"
)

// EventKind says what an Event reports.
type EventKind uint8

// The kinds of events. The first three match fsm's numbers.
const (
	// EventSet: a write stored Value under Key (Set, a swap, Incr, or
	// Expire, which stores the same value with a new expiry).
	EventSet EventKind = iota + 1
	// EventDelete: Delete or CompareAndDelete removed Key.
	EventDelete
	// EventExpire: Key's TTL ran out and its replica group removed it:
	// as the group applies its next entry, which its leader logs within
	// about ReconcileInterval of the expiry when the group is idle (reads
	// stop returning the key at its expiry).
	EventExpire
	// EventProgress: no change; Range's changes are all above Version from
	// now on (the range moved between replica groups, or began a move that
	// was called off). It matters only to a Cursor: pass every event to
	// Cursor.Advance.
	EventProgress
	// EventCompacted: the history the watch needed is gone (see
	// ErrCompacted); the last event of a watch that ends with it.
	EventCompacted
)

func (k EventKind) String() string {
	switch k {
	case EventSet:
		return "set"
	case EventDelete:
		return "delete"
	case EventExpire:
		return "expire"
	case EventProgress:
		return "progress"
	case EventCompacted:
		return "compacted"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is one change to a watched key.
//
// Events of one key come in the order its changes committed, each once,
// with its version (see Entry): a later change has a greater version.
// Events of keys in different ranges are not ordered with each other.
type Event struct {
	Kind     EventKind
	Key      string
	Value    []byte    // EventSet: the value stored. Shared by every watcher that gets the event: do not modify it
	Version  uint64    // the change's version; for EventProgress, the range's new floor
	ExpireAt time.Time // EventSet: when the value expires; zero: never
	Range    int       // the key's range (see Locate and Cursor)
}

// Cursor is a position in the change stream: for each range, the version
// of the last change seen. Watcher.Start gives the position a watch began
// at; Advance it with every event received, and WatchFrom resumes from it.
type Cursor map[int]uint64

// Advance moves c past e.
func (c Cursor) Advance(e Event) {
	if e.Kind != EventCompacted && e.Version > c[e.Range] {
		c[e.Range] = e.Version
	}
}

// WatchOption modifies a Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	from   Cursor
	buffer int
}

// WatchFrom starts the watch at c instead of now: for each range, with
// the changes above c's version for it (a range c does not name starts at
// version 0, the range's beginning). Where a range's history no longer
// reaches back that far, the watch ends with EventCompacted and
// ErrCompacted.
func WatchFrom(c Cursor) WatchOption {
	c = maps.Clone(c)
	return func(o *watchOptions) { o.from = c }
}

// WatchBuffer sets how many events may wait for the receiver (default
// 512; each takes about 90 bytes while the watch lasts): a watcher that
// falls further behind is cut off with ErrLagged.
func WatchBuffer(n int) WatchOption { return func(o *watchOptions) { o.buffer = n } }

// Watcher delivers the changes of the keys with a prefix (see DB.Watch).
type Watcher struct {
	prefix string
	ch     chan Event
	start  []uint64 // by range
	feed   *feed
	// Guarded by feed.mu.
	ended   bool
	err     error
	stopCtx func() bool // unregisters the ctx hook; nil until Watch sets it
}

// Watch watches the keys with the given prefix ("" for every key): every
// change committed after Watch returns, or, with WatchFrom, after the
// cursor given, arrives on Events() in the order each key's changes
// committed, none lost or repeated, across leader changes, moves of ranges
// between replica groups and lost connections. Values and expiries come
// with the changes; EventExpire reports a key removed at its TTL.
//
// The watch ends when ctx ends, Close is called, the DB closes, the
// history it needs is gone (EventCompacted, then ErrCompacted), or the
// receiver falls WatchBuffer events behind (ErrLagged): Events() is then
// closed and Err says why. A slow watcher never slows writes.
//
// Every replica group keeps its ranges' recent changes in memory, on every
// replica: the last 65,536 of them, holding at most 64 MiB of keys and
// values (not counted against MemoryLimit). That is enough to ride out a
// lost connection, and a leader change unless the new leader was caught
// up from a snapshot moments before (its history starts at the
// snapshot). A watch that needs older changes (a WatchFrom far back, or a
// feed that fell that far behind) ends with ErrCompacted; reload with Scan
// and watch again.
//
// Watches of one node share one stream per replica group; a watch started
// with WatchFrom has its own.
func (db *DB) Watch(ctx context.Context, prefix string, opts ...WatchOption) (*Watcher, error) {
	if db.isClosed() {
		return nil, ErrClosed
	}
	o := watchOptions{buffer: 512}
	for _, f := range opts {
		if f == nil {
			return nil, fmt.Errorf("%w: nil WatchOption", ErrInvalid)
		}
		f(&o)
	}
	if o.buffer <= 0 {
		return nil, fmt.Errorf("%w: WatchBuffer(%d) must be > 0", ErrInvalid, o.buffer)
	}
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	w := &Watcher{prefix: prefix, ch: make(chan Event, o.buffer)}
	var f *feed
	if o.from != nil {
		f = db.newFeed(o.from)
	} else {
		f = db.sharedFeed()
	}
	if err := f.subscribe(ctx, w); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { w.end(timedOut(ctx.Err(), false)) })
	f.mu.Lock()
	if w.ended { // already: nothing left to stop
		stop()
	} else {
		w.stopCtx = stop
	}
	f.mu.Unlock()
	return w, nil
}

// Events is the channel the changes arrive on; it is closed when the
// watch ends.
func (w *Watcher) Events() <-chan Event { return w.ch }

// Start is the position the watch began at: the changes it delivers are
// above it. Advance a copy with every event to keep a position to resume
// from (WatchFrom).
func (w *Watcher) Start() Cursor {
	c := make(Cursor, len(w.start))
	for r, v := range w.start {
		c[r] = v
	}
	return c
}

// Err says why the watch ended, once Events() is closed: ErrTimeout
// (wrapping ctx's error) when ctx ended, ErrClosed after Close or when the
// DB closed, ErrCompacted, or ErrLagged. Nil while the watch runs.
func (w *Watcher) Err() error {
	w.feed.mu.Lock()
	defer w.feed.mu.Unlock()
	return w.err
}

// Close ends the watch; Err then says ErrClosed.
func (w *Watcher) Close() { w.end(ErrClosed) }

func (w *Watcher) end(err error) {
	w.feed.mu.Lock()
	w.feed.endLocked(w, err)
	w.feed.mu.Unlock()
}

// deliver hands e to the watcher without blocking; the caller holds
// feed.mu. A watcher whose buffer is full is cut off.
func (w *Watcher) deliverLocked(e Event) {
	if w.ended {
		return
	}
	select {
	case w.ch <- e:
	default:
		w.feed.endLocked(w, fmt.Errorf("%w: %d events waiting", ErrLagged, cap(w.ch)))
	}
}
