package rlog

import (
	"container/heap"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Collapser turns a warning or error that repeats about the same peer into
// one line per interval, and a peer that comes back into one line. A
// record is keyed by its message and the peer it names ("" when it names
// none):
//
//   - the first record of a key is written at once, at its level;
//   - records of the key within Interval of the last one written are
//     counted, not written;
//   - the first one after the interval is written with repeated=N and
//     over=D: the N records counted over the D since the last line;
//   - a count still pending once its interval has passed, when no record
//     of its key comes to carry it (the burst stopped), is written on its
//     own by the next call that handles a record or a failing peer's
//     answer: one line with the message, peer, repeated and over;
//   - Reachable(peer), once no failure to reach that peer (a record given
//     to Failure, not Log) came for Interval/10, writes the counts still
//     pending about it (one line per key with repeated and over), then
//     one Info line "peer reachable again" with after=N (the failures
//     recorded) and for=D, and forgets the peer: its next failure is
//     written at once.
//   - a peer with no failure for 3*Interval, and no answer either (it is
//     gone, or came back at another address), is forgotten: it writes no
//     "reachable again" line, and its next failure is written at once.
//
// The settling pause in Reachable keeps a peer that answers some requests
// and fails others (a restarted node refusing its old incarnation's
// traffic while serving the new one's) from writing a line per answer.
//
// A count is written late only by a later call: one pending when the node
// goes quiet is written at the next record, or at Flush (call it at
// shutdown), or never. A count written late goes to the logger of its
// key's last record.
//
// A nil *Collapser writes every record. Memory is bounded by MaxKeys keys
// and as many peers; when full, keys idle for an interval are dropped,
// then, if still full, everything (at worst a count is lost and a line is
// written again).
//
// Threading: safe for concurrent use. It starts no goroutine: a pending
// count is written by the call that finds it due, each call writing at
// most a few of other keys. Reachable takes no lock for a peer that is not
// failing (one atomic load and, while some peer fails, a map lookup).
type Collapser struct {
	interval time.Duration
	settle   time.Duration // Reachable's settling pause
	expire   time.Duration // a failing peer silent this long is forgotten
	maxKeys  int
	now      func() time.Time
	// failing holds the peers of mu.peers, nil when there are none. It is
	// replaced, never changed, under mu, so Reachable reads it without
	// the lock.
	failing atomic.Pointer[map[string]struct{}]

	mu struct {
		sync.Mutex
		keys  map[repeatKey]*repeats
		peers map[string]*failures
		// due holds the keys with a count pending, by when it is due
		// (their last line's time and an interval), each at most once.
		due dueQueue
		// nextSweep is when tidyLocked next looks for peers to forget.
		nextSweep time.Time
	}
}

// CollapseOptions configure NewCollapser.
type CollapseOptions struct {
	// Interval is the least time between two lines of one key. Default
	// 10s.
	Interval time.Duration
	// MaxKeys bounds the keys and the peers remembered. Default 1024.
	MaxKeys int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

type repeatKey struct{ msg, peer string }

// repeats is one key's state: the last line written and what came since.
type repeats struct {
	key     repeatKey
	written time.Time    // when its last line was written
	count   int          // records since then, not written
	level   slog.Level   // the highest of the records counted
	l       *slog.Logger // of the last record: where a count written late goes
	queued  bool         // in mu.due
}

// failures is one peer's state since its first failure.
type failures struct {
	n           int
	first, last time.Time
	msgs        []string // the messages that reported them (a few)
}

// lateMax bounds the entries of mu.due one call looks at, so a call
// writes at most that many lines of other keys.
const lateMax = 8

// NewCollapser returns a Collapser with o's settings, defaults filled.
func NewCollapser(o CollapseOptions) *Collapser {
	if o.Interval <= 0 {
		o.Interval = 10 * time.Second
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 1024
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Collapser{interval: o.Interval, settle: o.Interval / 10, expire: 3 * o.Interval, maxKeys: o.MaxKeys, now: o.Now}
	c.mu.keys = make(map[repeatKey]*repeats)
	c.mu.peers = make(map[string]*failures)
	return c
}

// Log writes the record (lv, msg, args) about peer to l, or counts it if
// it repeats within the interval (see Collapser). args are slog's
// key-value pairs. The record does not say peer is unreachable (a vote it
// refused, say): see Failure.
func (c *Collapser) Log(l *slog.Logger, lv slog.Level, msg, peer string, args ...any) {
	c.log(l, lv, msg, peer, false, args)
}

// Failure is Log for a record that says peer could not be reached: it
// counts toward the peer's failures, and Reachable(peer) ends them.
func (c *Collapser) Failure(l *slog.Logger, lv slog.Level, msg, peer string, args ...any) {
	c.log(l, lv, msg, peer, peer != "", args)
}

func (c *Collapser) log(l *slog.Logger, lv slog.Level, msg, peer string, failure bool, args []any) {
	if c == nil {
		l.Log(context.Background(), lv, msg, args...)
		return
	}
	write, repeated, over, late := c.admit(l, lv, msg, peer, failure)
	writeCounts(late)
	if !write {
		return
	}
	if repeated > 0 {
		args = append(args[:len(args):len(args)], "repeated", repeated, "over", over.Round(time.Millisecond))
	}
	l.Log(context.Background(), lv, msg, args...)
}

// admit records one record of key (msg, peer), written to l, and decides
// it: write it or not, and if so, how many records before it were not
// written over how long. A failure also counts toward the peer's
// failures. late are counts of other keys that fell due.
func (c *Collapser) admit(l *slog.Logger, lv slog.Level, msg, peer string, failure bool) (write bool, repeated int, over time.Duration, late []count) {
	now := c.now()
	k := repeatKey{msg, peer}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The record's own key first: a count it carries is not written twice.
	defer func() { late = c.tidyLocked(now) }()
	if failure {
		c.failedLocked(peer, msg, now)
	}
	r := c.mu.keys[k]
	if r == nil {
		if len(c.mu.keys) >= c.maxKeys {
			c.evictLocked(now)
		}
		c.mu.keys[k] = &repeats{key: k, written: now, level: lv, l: l}
		return true, 0, 0, nil
	}
	r.l = l
	if now.Sub(r.written) < c.interval {
		if r.count == 0 {
			r.level = lv
		}
		r.level = max(r.level, lv)
		r.count++
		if !r.queued {
			c.mu.due.push(r, r.written.Add(c.interval))
		}
		return false, 0, 0, nil
	}
	repeated, over = r.count, now.Sub(r.written)
	r.written, r.count, r.level = now, 0, lv
	return true, repeated, over, nil
}

// failedLocked counts a failure to reach peer, reported by message msg.
func (c *Collapser) failedLocked(peer, msg string, now time.Time) {
	f := c.mu.peers[peer]
	if f == nil {
		if len(c.mu.peers) >= c.maxKeys {
			c.resetLocked()
		}
		f = &failures{first: now}
		c.mu.peers[peer] = f
		c.publishLocked()
	}
	f.n++
	f.last = now
	if !slices.Contains(f.msgs, msg) {
		f.msgs = append(f.msgs, msg)
	}
}

// publishLocked replaces failing with a copy of mu.peers' names.
func (c *Collapser) publishLocked() {
	if len(c.mu.peers) == 0 {
		c.failing.Store(nil)
		return
	}
	m := make(map[string]struct{}, len(c.mu.peers))
	for p := range c.mu.peers {
		m[p] = struct{}{}
	}
	c.failing.Store(&m)
}

// tidyLocked does what falls due with no record to carry it: it returns
// the pending counts whose interval has passed (those of the few keys
// first due), and, once an interval, forgets the peers with no failure
// for c.expire.
func (c *Collapser) tidyLocked(now time.Time) []count {
	var late []count
	for i := 0; i < lateMax && c.mu.due.len() > 0 && !c.mu.due.next().After(now); i++ {
		r := c.mu.due.pop()
		r.queued = false
		switch {
		case c.mu.keys[r.key] != r || r.count == 0:
			// Dropped, or its count went out with a record of its own.
		case now.Sub(r.written) < c.interval:
			// Written since it was queued, and counting again.
			c.mu.due.push(r, r.written.Add(c.interval))
		default:
			late = append(late, c.takeLocked(r, now))
		}
	}
	if !now.Before(c.mu.nextSweep) {
		c.mu.nextSweep = now.Add(c.interval)
		n := len(c.mu.peers)
		for p, f := range c.mu.peers {
			if now.Sub(f.last) >= c.expire {
				delete(c.mu.peers, p)
			}
		}
		if len(c.mu.peers) != n {
			c.publishLocked()
		}
	}
	return late
}

// takeLocked returns r's pending count, as of now, and starts its next
// interval: the records that follow within it are counted.
func (c *Collapser) takeLocked(r *repeats, now time.Time) count {
	s := count{l: r.l, msg: r.key.msg, peer: r.key.peer, level: r.level, repeated: r.count, over: now.Sub(r.written)}
	r.written, r.count = now, 0
	return s
}

// evictLocked makes room for a key: it drops the keys idle for an
// interval, or, if none is, everything.
func (c *Collapser) evictLocked(now time.Time) {
	for k, r := range c.mu.keys {
		if now.Sub(r.written) >= c.interval && r.count == 0 {
			delete(c.mu.keys, k)
		}
	}
	if len(c.mu.keys) >= c.maxKeys {
		c.resetLocked()
		return
	}
	c.mu.due.keep(func(r *repeats) bool { return c.mu.keys[r.key] == r })
}

func (c *Collapser) resetLocked() {
	clear(c.mu.keys)
	clear(c.mu.peers)
	c.mu.due.keep(func(*repeats) bool { return false })
	c.failing.Store(nil)
}

// count is a count pending about a key, to be written on its own.
type count struct {
	l         *slog.Logger
	msg, peer string
	level     slog.Level
	repeated  int
	over      time.Duration
}

func writeCounts(counts []count) {
	for _, s := range counts {
		s.write(s.l)
	}
}

func (s count) write(l *slog.Logger) {
	args := make([]any, 0, 6)
	if s.peer != "" {
		args = append(args, "peer", s.peer)
	}
	args = append(args, "repeated", s.repeated, "over", s.over.Round(time.Millisecond))
	l.Log(context.Background(), s.level, s.msg, args...)
}

// recovered reports whether peer, failing until now, has had no failure
// for the settling pause; if so it forgets the peer and returns its
// failures and its pending counts. late are counts of other keys that
// fell due.
func (c *Collapser) recovered(peer string) (f *failures, pending, late []count) {
	if m := c.failing.Load(); m == nil {
		return nil, nil, nil
	} else if _, ok := (*m)[peer]; !ok {
		return nil, nil, nil
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() { late = c.tidyLocked(now) }()
	f = c.mu.peers[peer]
	if f == nil || now.Sub(f.last) < c.settle {
		return nil, nil, nil
	}
	delete(c.mu.peers, peer)
	c.publishLocked()
	for _, msg := range f.msgs {
		k := repeatKey{msg, peer}
		if r := c.mu.keys[k]; r != nil {
			if r.count > 0 {
				pending = append(pending, c.takeLocked(r, now))
			}
			delete(c.mu.keys, k)
		}
	}
	return f, pending, nil
}

// Reachable tells the Collapser that peer answered. If the peer was
// failing and has settled, the counts pending about it and one Info line
// "peer reachable again" are written to l. It takes no lock unless peer
// is failing.
func (c *Collapser) Reachable(l *slog.Logger, peer string) {
	if c == nil {
		return
	}
	f, pending, late := c.recovered(peer)
	writeCounts(late)
	if f == nil {
		return
	}
	for _, s := range pending {
		s.write(l)
	}
	l.Log(context.Background(), slog.LevelInfo, "peer reachable again", "peer", peer, "after", f.n, "for", f.last.Sub(f.first).Round(time.Millisecond))
}

// Flush writes every count still pending, each to the logger of its key's
// last record, at once: call it when the node stops, after the last
// record.
func (c *Collapser) Flush() {
	if c == nil {
		return
	}
	now := c.now()
	c.mu.Lock()
	var out []count
	for c.mu.due.len() > 0 {
		r := c.mu.due.pop()
		r.queued = false
		if c.mu.keys[r.key] == r && r.count > 0 {
			out = append(out, c.takeLocked(r, now))
		}
	}
	c.mu.Unlock()
	writeCounts(out)
}

// dueQueue is a min-heap of keys by when their pending count is due.
type dueQueue struct{ h dueHeap }

type dueEntry struct {
	at time.Time
	r  *repeats
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (q *dueQueue) len() int        { return len(q.h) }
func (q *dueQueue) next() time.Time { return q.h[0].at }
func (q *dueQueue) push(r *repeats, at time.Time) {
	r.queued = true
	heap.Push(&q.h, dueEntry{at: at, r: r})
}
func (q *dueQueue) pop() *repeats { return heap.Pop(&q.h).(dueEntry).r }

// keep drops the entries whose key keep refuses.
func (q *dueQueue) keep(keep func(*repeats) bool) {
	q.h = slices.DeleteFunc(q.h, func(e dueEntry) bool {
		if keep(e.r) {
			return false
		}
		e.r.queued = false
		return true
	})
	heap.Init(&q.h)
}
