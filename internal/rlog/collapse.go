package rlog

import (
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
// A nil *Collapser writes every record. Memory is bounded by MaxKeys keys
// and as many peers; when full, keys idle for an interval are dropped,
// then, if still full, everything (at worst a count is lost and a line is
// written again).
//
// Threading: safe for concurrent use. It starts no goroutine: a pending
// count is written by the call that finds it due. Reachable takes no lock
// for a peer that is not failing (one atomic load and, while some peer
// fails, a map lookup).
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
		// nextSweep is when forgetLocked next looks for peers to forget.
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
	written time.Time  // when its last line was written
	count   int        // records since then, not written
	level   slog.Level // of the last record
}

// failures is one peer's state since its first failure.
type failures struct {
	n           int
	first, last time.Time
	msgs        []string // the messages that reported them (a few)
}

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
	write, repeated, over := c.admit(lv, msg, peer, failure)
	if !write {
		return
	}
	if repeated > 0 {
		args = append(args[:len(args):len(args)], "repeated", repeated, "over", over.Round(time.Millisecond))
	}
	l.Log(context.Background(), lv, msg, args...)
}

// admit records one record of key (msg, peer) and decides it: write it or
// not, and if so, how many records before it were not written over how
// long. A failure also counts toward the peer's failures.
func (c *Collapser) admit(lv slog.Level, msg, peer string, failure bool) (write bool, repeated int, over time.Duration) {
	now := c.now()
	k := repeatKey{msg, peer}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetLocked(now)
	if failure {
		c.failedLocked(peer, msg, now)
	}
	r := c.mu.keys[k]
	if r == nil {
		if len(c.mu.keys) >= c.maxKeys {
			c.evictLocked(now)
		}
		c.mu.keys[k] = &repeats{written: now, level: lv}
		return true, 0, 0
	}
	r.level = max(r.level, lv)
	if now.Sub(r.written) < c.interval {
		r.count++
		return false, 0, 0
	}
	repeated, over = r.count, now.Sub(r.written)
	r.written, r.count, r.level = now, 0, lv
	return true, repeated, over
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

// forgetLocked, once an interval, forgets the peers with no failure for
// c.expire.
func (c *Collapser) forgetLocked(now time.Time) {
	if now.Before(c.mu.nextSweep) {
		return
	}
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
	}
}

func (c *Collapser) resetLocked() {
	clear(c.mu.keys)
	clear(c.mu.peers)
	c.failing.Store(nil)
}

// summary is a count pending about a peer, written when it comes back.
type summary struct {
	msg      string
	level    slog.Level
	repeated int
	over     time.Duration
}

// recovered reports whether peer, failing until now, has had no failure
// for the settling pause; if so it forgets the peer and returns its
// failures and its pending counts.
func (c *Collapser) recovered(peer string) (f *failures, pending []summary) {
	if m := c.failing.Load(); m == nil {
		return nil, nil
	} else if _, ok := (*m)[peer]; !ok {
		return nil, nil
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetLocked(now)
	f = c.mu.peers[peer]
	if f == nil || now.Sub(f.last) < c.settle {
		return nil, nil
	}
	delete(c.mu.peers, peer)
	c.publishLocked()
	for _, msg := range f.msgs {
		k := repeatKey{msg, peer}
		if r := c.mu.keys[k]; r != nil {
			if r.count > 0 {
				pending = append(pending, summary{msg: msg, level: r.level, repeated: r.count, over: now.Sub(r.written)})
			}
			delete(c.mu.keys, k)
		}
	}
	return f, pending
}

// Reachable tells the Collapser that peer answered. If the peer was
// failing and has settled, the counts pending about it and one Info line
// "peer reachable again" are written to l. It takes no lock unless peer
// is failing.
func (c *Collapser) Reachable(l *slog.Logger, peer string) {
	if c == nil {
		return
	}
	f, pending := c.recovered(peer)
	if f == nil {
		return
	}
	ctx := context.Background()
	for _, s := range pending {
		l.Log(ctx, s.level, s.msg, "peer", peer, "repeated", s.repeated, "over", s.over.Round(time.Millisecond))
	}
	l.Log(ctx, slog.LevelInfo, "peer reachable again", "peer", peer, "after", f.n, "for", f.last.Sub(f.first).Round(time.Millisecond))
}
