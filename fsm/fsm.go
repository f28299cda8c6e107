package fsm

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/hashicorp/raft"
)

// Errors carried in Result.Err. They are decided inside Apply, so every
// replica reaches the same decision for the same log entry.
var (
	// ErrMemoryLimit: the write would take the range over its memory limit;
	// nothing was written.
	ErrMemoryLimit = errors.New("fsm: memory limit exceeded")
	// ErrBadCommand: the log entry could not be decoded or is malformed
	// (empty key, nested batch); nothing was written.
	ErrBadCommand = errors.New("fsm: bad command")
)

const shardCount = 64 // power of two

// Options configure a state machine. The zero value is valid.
type Options struct {
	// MemoryLimit caps the bytes of keys plus values the range holds;
	// 0 means no limit.
	MemoryLimit int64
}

// Result is what applying one operation produced. Apply returns *Result for
// a single-operation entry and []Result (one per operation, in order) for a
// Batch entry.
type Result struct {
	// Version is the log index that now holds the key's value (Set, a
	// successful CAS) or that deleted it.
	Version uint64
	// Swapped reports whether a CompareAndSwap stored its new value.
	Swapped bool
	// Err is nil, ErrMemoryLimit or ErrBadCommand.
	Err error
}

type entry struct {
	value    []byte // never mutated after it is stored
	version  uint64 // index of the log entry that last wrote it
	expireAt int64  // unix nanoseconds; 0 = never
}

func (e *entry) expired(now int64) bool { return e.expireAt != 0 && e.expireAt <= now }

type shard struct {
	mu sync.RWMutex
	m  map[string]entry
	_  [40]byte // keep neighbouring shards' locks off one cache line
}

// FSM is the replicated state machine of one range. It implements
// raft.FSM and raft.BatchingFSM.
//
// Threading: Apply, ApplyBatch, Snapshot and Restore are called by one Raft
// goroutine at a time (hashicorp/raft's contract). Get, Len, Used, Applied
// and WaitApplied are safe from any goroutine, concurrently with applies.
type FSM struct {
	shards [shardCount]shard
	opts   Options

	// Touched only by the applying goroutine (and Restore, which raft
	// never runs concurrently with Apply).
	expiries expiryHeap
	scratch  []op

	used    atomic.Int64  // bytes of keys + values held
	count   atomic.Int64  // live entries (expired but not yet swept count too)
	applied atomic.Uint64 // index of the last log entry applied

	waitMu  sync.Mutex
	waiters []waiter
	nwait   atomic.Int32
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// New returns an empty state machine.
func New(opts Options) *FSM {
	f := &FSM{opts: opts}
	for i := range f.shards {
		f.shards[i].m = make(map[string]entry)
	}
	return f
}

func xxhash64Shard(key string) uint64 { return xxhash.Sum64String(key) & (shardCount - 1) }

func (f *FSM) shardFor(key string) *shard { return &f.shards[xxhash64Shard(key)] }

// Get returns a copy of key's value and its version. ok is false when the key
// is absent or expired at now (unix nanoseconds).
func (f *FSM) Get(key string, now int64) (value []byte, version uint64, ok bool) {
	value, version, ok = f.Peek(key, now)
	if !ok {
		return nil, 0, false
	}
	return append(make([]byte, 0, len(value)), value...), version, true
}

// Peek is Get without the copy, for a caller that copies the value into
// something of its own: value is the stored one, which must not be
// modified. It stays as it is (a stored value is never mutated, only
// replaced).
func (f *FSM) Peek(key string, now int64) (value []byte, version uint64, ok bool) {
	s := f.shardFor(key)
	s.mu.RLock()
	e, found := s.m[key]
	s.mu.RUnlock()
	if !found || e.expired(now) {
		return nil, 0, false
	}
	return e.value, e.version, true
}

// Entry is a key's value with its version and expiry.
type Entry struct {
	Value    []byte
	Version  uint64 // index of the log entry that last wrote it
	ExpireAt int64  // unix nanoseconds; 0 = never
}

// Expired reports whether the entry has expired at now (unix nanoseconds).
func (e Entry) Expired(now int64) bool { return e.ExpireAt != 0 && e.ExpireAt <= now }

// Lookup returns a copy of key's entry, expired or not: the caller decides
// expiry with a clock reading taken after the lookup.
func (f *FSM) Lookup(key string) (Entry, bool) {
	s := f.shardFor(key)
	s.mu.RLock()
	e, found := s.m[key]
	s.mu.RUnlock()
	if !found {
		return Entry{}, false
	}
	return Entry{Value: append(make([]byte, 0, len(e.value)), e.value...), Version: e.version, ExpireAt: e.expireAt}, true
}

// Len is the number of entries held, including expired entries not yet swept.
func (f *FSM) Len() int { return int(f.count.Load()) }

// Used is the bytes of keys plus values held.
func (f *FSM) Used() int64 { return f.used.Load() }

// Applied is the index of the last log entry the state machine has applied.
func (f *FSM) Applied() uint64 { return f.applied.Load() }

// Apply applies one log entry. See Result for what it returns.
func (f *FSM) Apply(l *raft.Log) interface{} {
	var r interface{}
	if l.Type == raft.LogCommand {
		r = f.applyCommand(l)
	}
	f.advance(l.Index)
	return r
}

// ApplyBatch applies consecutive log entries; it returns one response per
// entry, as Apply would.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			out[i] = f.applyCommand(l)
		}
	}
	if len(logs) > 0 {
		f.advance(logs[len(logs)-1].Index)
	}
	return out
}

func (f *FSM) applyCommand(l *raft.Log) interface{} {
	now := l.AppendedAt.UnixNano()
	f.sweep(now)
	ops, batch, err := decodeCommand(l.Data, f.scratch)
	if err != nil {
		return &Result{Err: fmt.Errorf("%w: %v", ErrBadCommand, err)}
	}
	f.scratch = ops[:0]
	if batch {
		results := make([]Result, len(ops))
		for i := range ops {
			results[i] = f.applyOp(&ops[i], l.Index, now)
		}
		clear(ops) // drop references into l.Data
		return results
	}
	r := f.applyOp(&ops[0], l.Index, now)
	clear(ops)
	return &r
}

func (f *FSM) applyOp(o *op, index uint64, now int64) Result {
	if o.kind == opBatch {
		return Result{Err: fmt.Errorf("%w: nested batch", ErrBadCommand)}
	}
	if o.kind == opNone {
		return Result{Err: fmt.Errorf("%w: no operation", ErrBadCommand)}
	}
	if len(o.key) == 0 {
		return Result{Err: fmt.Errorf("%w: empty key", ErrBadCommand)}
	}
	switch o.kind {
	case opSet:
		return f.put(string(o.key), o.value, o.ttl, index, now)
	case opDelete:
		f.remove(string(o.key))
		return Result{Version: index}
	default: // opCAS
		key := string(o.key)
		s := f.shardFor(key)
		s.mu.RLock()
		cur, found := s.m[key]
		s.mu.RUnlock()
		present := found && !cur.expired(now)
		var match bool
		if o.oldAbsent {
			match = !present
		} else {
			match = present && string(cur.value) == string(o.old)
		}
		if !match {
			return Result{Version: cur.version}
		}
		r := f.put(key, o.value, o.ttl, index, now)
		r.Swapped = r.Err == nil
		return r
	}
}

// put stores a copy of value (which aliases the log entry). Only the
// applying goroutine calls put.
func (f *FSM) put(key string, value []byte, ttl int64, index uint64, now int64) Result {
	e := entry{value: append(make([]byte, 0, len(value)), value...), version: index}
	if ttl > 0 {
		e.expireAt = now + ttl
	}
	s := f.shardFor(key)
	s.mu.Lock()
	old, found := s.m[key]
	delta := int64(len(key) + len(value))
	if found {
		delta -= int64(len(key) + len(old.value))
	}
	if f.opts.MemoryLimit > 0 && delta > 0 && f.used.Load()+delta > f.opts.MemoryLimit {
		s.mu.Unlock()
		return Result{Err: ErrMemoryLimit}
	}
	s.m[key] = e
	s.mu.Unlock()
	if ttl > 0 {
		heap.Push(&f.expiries, expiry{at: e.expireAt, key: key, version: index})
	}
	f.used.Add(delta)
	if !found {
		f.count.Add(1)
	}
	return Result{Version: index}
}

func (f *FSM) remove(key string) {
	s := f.shardFor(key)
	s.mu.Lock()
	old, found := s.m[key]
	if found {
		delete(s.m, key)
	}
	s.mu.Unlock()
	if found {
		f.used.Add(-int64(len(key) + len(old.value)))
		f.count.Add(-1)
	}
}

// sweep deletes every entry that has expired by now, the applying entry's
// AppendedAt. The set removed depends only on the state and now, so every
// replica frees the same entries and memory accounting stays identical.
func (f *FSM) sweep(now int64) {
	for len(f.expiries) > 0 && f.expiries[0].at <= now {
		x := heap.Pop(&f.expiries).(expiry)
		s := f.shardFor(x.key)
		s.mu.RLock()
		e, found := s.m[x.key]
		s.mu.RUnlock()
		// A later write may have replaced the entry; its own expiry, if any,
		// is in the heap separately.
		if found && e.version == x.version {
			f.remove(x.key)
		}
	}
}

type expiry struct {
	at      int64
	key     string
	version uint64
}

type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// NowNanos is the time reads should check expiry against: the wall clock,
// the same clock leaders stamp AppendedAt with.
func NowNanos() int64 { return time.Now().UnixNano() }

// Digest is an order-independent hash of every entry (key, value, version
// and expiry), and how many entries it covers. Replicas that applied the
// same log have the same digest; the Jepsen-style suite compares them after
// healing. Each shard is read under its lock, so concurrent applies make the
// result a mix of moments: call it on a quiet range.
func (f *FSM) Digest() (digest uint64, entries int) {
	var buf []byte
	for i := range f.shards {
		s := &f.shards[i]
		s.mu.RLock()
		for k, e := range s.m {
			buf = binary.AppendUvarint(buf[:0], uint64(len(k)))
			buf = append(buf, k...)
			buf = binary.AppendUvarint(buf, e.version)
			buf = binary.AppendVarint(buf, e.expireAt)
			buf = append(buf, e.value...)
			digest += xxhash.Sum64(buf) // a sum: map order must not matter
			entries++
		}
		s.mu.RUnlock()
	}
	return digest, entries
}
