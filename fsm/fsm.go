package fsm

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Errors carried in Result.Err (and, for ErrNotOwned and ErrMoving,
// returned by reads).
// Those in a Result are decided inside Apply, so every replica reaches the
// same decision for the same log entry.
var (
	// ErrMemoryLimit: the write would take the group over its share of the
	// memory limit; nothing was written.
	ErrMemoryLimit = errors.New("fsm: memory limit exceeded")
	// ErrBadCommand: the log entry could not be decoded or is malformed
	// (empty key, nested batch, Genesis inside a batch, a range number out
	// of bounds); nothing was written.
	ErrBadCommand = errors.New("fsm: bad command")
	// ErrNotOwned: the operation's range is not Owned by this group; nothing
	// was written (or, for a read, nothing was read).
	ErrNotOwned = errors.New("fsm: range not owned by this group")
	// ErrMoving: the operation's range is Frozen here, on its way to another
	// group: a write changed nothing and may be retried after the handoff;
	// a read other than a ReadIndex read (see LookupMode) read nothing.
	ErrMoving = errors.New("fsm: range is moving to another group")
	// ErrNotInteger: an Incr found a value that is not a decimal int64, or
	// the sum would overflow one; nothing was written.
	ErrNotInteger = errors.New("fsm: value is not a decimal int64, or the sum overflows int64")
	// ErrPrecondition: a handoff command found its range in a state it does
	// not apply to (the table in docs/architecture.md); nothing changed and
	// Result.Record holds the range's current record. Duplicated, late and
	// stale handoff commands end here.
	ErrPrecondition = errors.New("fsm: range is not in the state the handoff command requires")
	// ErrCopyMismatch: the last Chunk of a handoff completed a copy whose
	// tally differs from the source's trailer or announced size; the
	// staged copy was dropped and the range is Absent at the handoff's
	// epoch (Result.Record).
	ErrCopyMismatch = errors.New("fsm: handoff copy does not match the source")
)

// MaxRanges bounds range numbers when Options.Ranges is 0.
const MaxRanges = 1 << 20

// maxField bounds one key or value, in a command and in a snapshot (so a
// stored entry can always be restored, and a corrupt snapshot cannot make
// Restore allocate without bound).
const maxField = 1 << 30

// Options configure a state machine. The zero value is valid.
type Options struct {
	// MemoryLimit caps the bytes of keys plus values in the whole cluster;
	// 0 (the default) means no limit. The state machine enforces it per
	// group, in proportion to the ranges the group owns: a write is refused
	// with ErrMemoryLimit when the bytes of the group's Owned ranges after
	// it would exceed MemoryLimit * owned / Ranges (the whole MemoryLimit
	// when Ranges is 0). Ranges in a handoff (Frozen, Incoming, Sealed) are
	// held but not charged.
	MemoryLimit int64
	// Ranges is the number of ranges in the cluster; range numbers are in
	// [0, Ranges). 0 (the default) means unknown: range numbers are then
	// bounded by MaxRanges only.
	Ranges int
	// Layout is set for the group that holds the cluster's layout (group
	// 0): only there do SetLayout and CreateGroup apply (layout.go).
	// Default false.
	Layout bool
	// History is how many recent changes the group keeps in its ranges'
	// histories (history.go), over all its ranges, and HistoryBytes how
	// many bytes of keys and values they may hold: 0 means DefaultHistory
	// and DefaultHistoryBytes; a negative number, no history.
	History      int
	HistoryBytes int64
}

// Result is what applying one operation produced. Apply returns *Result for
// a single-operation entry (and for Genesis) and []Result (one per
// operation, in order) for a Batch entry.
type Result struct {
	// Version is the key's version (version.go) after a Set, a successful
	// CAS, CompareVersionAndSwap, CompareAndDelete or Expire, an Incr, or
	// a Delete: the write's own. After a CAS or CompareAndDelete that did
	// not match, it is the version of the value found (0: absent); after a
	// CompareVersionAndSwap that did not, the key's current version (0:
	// absent or expired). For Genesis and a handoff command that applied,
	// it is the entry's log index.
	Version uint64
	// Swapped reports whether a CompareAndSwap or CompareVersionAndSwap
	// stored its new value, a CompareAndDelete deleted, or an Expire found
	// the key.
	Swapped bool
	// Int is an Incr's sum, as stored.
	Int int64
	// Err is nil, ErrMemoryLimit, ErrBadCommand, ErrNotOwned or ErrMoving
	// for client operations; nil, ErrBadCommand, ErrPrecondition or
	// ErrCopyMismatch for handoff commands.
	Err error
	// Record is, for a handoff command that was not ErrBadCommand, its
	// range's record after the command (unchanged on ErrPrecondition);
	// nil otherwise. A pointer, so client operations' results stay small.
	Record *RangeRecord
}

// FSM is the replicated state machine of one replica group, which carries
// many ranges. It implements raft.FSM and raft.BatchingFSM.
//
// Each range the group knows has a record (RangeRecord) and its own data: a
// map of entries, its byte and entry counts and its expiry heap, so a range
// can later be extracted or installed as one piece.
//
// Threading: Apply, ApplyBatch, Snapshot and Restore are called by one Raft
// goroutine at a time (hashicorp/raft's contract). Reads (Lookup, Peek,
// Get), Range, OwnedRanges, Len, Used, RangeUsed, Digest, RangeDigest,
// Applied and WaitApplied are safe from any goroutine, concurrently with
// applies.
type FSM struct {
	opts Options

	// table maps range numbers to their state. It is copy-on-write: the
	// applier builds a new one when a range first becomes known (Genesis)
	// or on Restore, so readers index it without a lock.
	table atomic.Pointer[rangeTable]
	// layout is the cluster's layout (layout.go), nil until set; replaced,
	// never changed, by the applier.
	layout atomic.Pointer[Layout]

	// Touched only by the applying goroutine (and Restore, which raft
	// never runs concurrently with Apply).
	due       dueHeap // Owned ranges with expiries, by earliest deadline
	owned     int     // ranges Owned here
	ownedUsed int64   // bytes of keys + values in Owned ranges
	limit     int64   // bytes the Owned ranges may hold: the group's share of MemoryLimit
	scratch   []op
	order     histOrder // the ranges' history events, oldest first

	// inState counts the ranges in each state (Absent ranges the group
	// has heard of included), for CountIn: written by the applier,
	// read by anyone.
	inState [Sealed + 1]atomic.Int64

	used    atomic.Int64  // bytes of keys + values held, all ranges
	count   atomic.Int64  // entries held (expired but not yet swept count too)
	applied atomic.Uint64 // index of the last log entry applied
	nextDue atomic.Int64  // the earliest expiry of an Owned range's entry (unix ns); 0: none

	waitMu  sync.Mutex
	waiters []waiter
	nwait   atomic.Int32
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// New returns a state machine that owns no range: every range is Absent at
// epoch 0 until a Genesis entry (or, later, a handoff) makes it Owned.
func New(opts Options) *FSM {
	f := &FSM{opts: opts}
	f.table.Store(&rangeTable{})
	f.limit = f.share(0)
	f.order.limit, f.order.byteLimit = historyLimits(opts)
	return f
}

// Len is the number of entries held, in all ranges, including expired
// entries not yet swept.
func (f *FSM) Len() int { return int(f.count.Load()) }

// Used is the bytes of keys plus values held, in all ranges.
func (f *FSM) Used() int64 { return f.used.Load() }

// Limit is the bytes of keys plus values this group's Owned ranges may
// hold: its share of MemoryLimit, in proportion to the ranges it owns;
// math.MaxInt64 without a limit. Safe to call concurrently with Apply.
func (f *FSM) Limit() int64 { return f.share(f.CountIn(Owned)) }

// NextExpiry is the earliest expiry of an entry in an Owned range as of the
// last entry applied (unix nanoseconds), 0 when no entry has a TTL. Expired
// entries are removed as the next log entry applies (its AppendedAt past
// their expiry): a leader that sees it passed on an idle group can log a
// Sweep to have them removed, and their EventExpire recorded.
func (f *FSM) NextExpiry() int64 { return f.nextDue.Load() }

// Applied is the index of the last log entry the state machine has applied.
func (f *FSM) Applied() uint64 { return f.applied.Load() }

// NowNanos is the time reads should check expiry against: the wall clock,
// the same clock leaders stamp AppendedAt with.
func NowNanos() int64 { return time.Now().UnixNano() }

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
	defer clear(ops) // drop references into l.Data
	if batch {
		results := make([]Result, len(ops))
		for i := range ops {
			results[i] = f.applyOp(&ops[i], now)
		}
		return results
	}
	var r Result
	switch o := &ops[0]; {
	case o.kind == opGenesis:
		r = f.genesis(o.ranges, l.Index)
	case o.kind.handoff():
		r = f.handoff(o, l.Index, now)
	case o.kind.layout():
		r = f.applyLayout(o, l.Index)
	default:
		r = f.applyOp(o, now)
	}
	return &r
}

// applyOp applies one client operation (a single entry's or a batch's).
func (f *FSM) applyOp(o *op, now int64) Result {
	switch {
	case o.kind == opBatch:
		return Result{Err: fmt.Errorf("%w: nested batch", ErrBadCommand)}
	case o.kind == opGenesis:
		return Result{Err: fmt.Errorf("%w: genesis inside a batch", ErrBadCommand)}
	case o.kind.handoff():
		return Result{Err: fmt.Errorf("%w: handoff command inside a batch", ErrBadCommand)}
	case o.kind.layout():
		return Result{Err: fmt.Errorf("%w: layout command inside a batch", ErrBadCommand)}
	case o.kind == opNone:
		return Result{Err: fmt.Errorf("%w: no operation", ErrBadCommand)}
	case len(o.key) == 0:
		return Result{Err: fmt.Errorf("%w: empty key", ErrBadCommand)}
	case len(o.key) > maxField || len(o.value) > maxField:
		return Result{Err: fmt.Errorf("%w: key or value over %d bytes", ErrBadCommand, maxField)}
	case !f.inBounds(int64(o.rng)):
		return Result{Err: fmt.Errorf("%w: range %d out of bounds", ErrBadCommand, o.rng)}
	}
	rs := f.table.Load().at(int(o.rng))
	// Only the applier writes records, so it reads them without the lock.
	switch {
	case rs != nil && rs.rec.State == Frozen:
		return Result{Err: ErrMoving}
	case rs == nil || rs.rec.State != Owned:
		return Result{Err: ErrNotOwned}
	}
	switch o.kind {
	case opSet:
		return f.put(rs, o.key, o.value, o.ttl, now)
	case opDelete:
		return f.remove(rs, o.key)
	case opCAD, opIncr, opExpire, opCVS:
		return f.applyKeyed(rs, o, now)
	default: // opCAS
		cur, found := rs.tab.get(string(o.key)) // the applier is the only writer: no lock
		var h header
		if found {
			h = cur.header()
		}
		present := found && !h.expired(now)
		var match bool
		if o.oldAbsent {
			match = !present
		} else {
			match = present && string(cur.value(h)) == string(o.old)
		}
		if !match {
			return Result{Version: h.version}
		}
		r := f.put(rs, o.key, o.value, o.ttl, now)
		r.Swapped = r.Err == nil
		return r
	}
}

// put stores key and a copy of value (both alias the log entry) in rs, an
// Owned range, in one allocation. Only the applying goroutine calls put.
//
// The limit is checked against the bytes of Owned ranges only: a range in
// flight holds its data in both groups for the length of the handoff
// (Frozen at the source, Incoming or Sealed at the target), and charging
// it to either would refuse writes to the group's other ranges meanwhile.
// The excess is bounded by the ranges in flight, about one range's share
// each.
func (f *FSM) put(rs *rangeState, key, value []byte, ttl int64, now int64) Result {
	var expireAt int64
	if ttl > 0 {
		expireAt = now + ttl
	}
	return f.putAt(rs, key, value, expireAt)
}

// putAt is put with the expiry time given (0: never).
func (f *FSM) putAt(rs *rangeState, key, value []byte, expireAt int64) Result {
	version, ok := rs.nextVersion()
	if !ok {
		return Result{Err: errVersionSpace(rs.rec.Epoch)}
	}
	old, found := rs.tab.get(string(key))
	delta := int64(len(key) + len(value))
	if found {
		delta -= old.header().size()
	}
	if delta > 0 && f.ownedUsed+delta > f.limit {
		return Result{Err: ErrMemoryLimit}
	}
	e := newEntry(key, value, version, expireAt)
	rs.mu.Lock()
	rs.seq++
	rs.tab.set(e)
	hsize := rs.record(f.order.limit > 0, EventSet, e, version)
	rs.used += delta
	if !found {
		rs.count++
	}
	rs.mu.Unlock()
	f.noteEvent(rs.num, version, hsize)
	if expireAt > 0 {
		f.pushExpiry(rs, expiry{at: expireAt, e: e})
	}
	f.ownedUsed += delta
	f.used.Add(delta)
	if !found {
		f.count.Add(1)
	}
	return Result{Version: version}
}

// remove deletes key from rs, if present: the version of the deletion, 0
// when there was nothing to delete. Only the applying goroutine calls
// remove.
func (f *FSM) remove(rs *rangeState, key []byte) Result {
	if old, found := rs.tab.get(string(key)); found {
		return f.removeEntry(rs, old, EventDelete)
	}
	return Result{}
}

// removeEntry deletes the stored entry e from rs, an Owned range, and
// stamps the deletion with the range's next version; kind is EventDelete
// or EventExpire, for the history.
func (f *FSM) removeEntry(rs *rangeState, e entry, kind EventKind) Result {
	version, ok := rs.nextVersion()
	if !ok {
		return Result{Err: errVersionSpace(rs.rec.Epoch)}
	}
	h := e.header()
	n := h.size()
	rs.mu.Lock()
	rs.seq++
	rs.tab.delete(e.key(h))
	hsize := rs.record(f.order.limit > 0, kind, e, version)
	rs.used -= n
	rs.count--
	rs.mu.Unlock()
	f.ownedUsed -= n
	f.used.Add(-n)
	f.count.Add(-1)
	f.noteEvent(rs.num, version, hsize)
	return Result{Version: version}
}

// inBounds reports whether r is a valid range number under the options.
func (f *FSM) inBounds(r int64) bool { return r >= 0 && r < f.rangeBound() }

// rangeBound is one past the greatest valid range number.
func (f *FSM) rangeBound() int64 {
	if f.opts.Ranges > 0 {
		return int64(f.opts.Ranges)
	}
	return MaxRanges
}

// applyKeyed applies a CompareAndDelete, Incr, Expire or
// CompareVersionAndSwap to rs, an Owned range.
func (f *FSM) applyKeyed(rs *rangeState, o *op, now int64) Result {
	cur, found := rs.tab.get(string(o.key)) // the applier is the only writer: no lock
	var h header
	if found {
		h = cur.header()
	}
	present := found && !h.expired(now)
	switch o.kind {
	case opCAD:
		if !present || string(cur.value(h)) != string(o.old) {
			return Result{Version: h.version}
		}
		r := f.removeEntry(rs, cur, EventDelete)
		r.Swapped = r.Err == nil
		return r
	case opExpire:
		if !present {
			return Result{}
		}
		if o.ttl <= 0 {
			return Result{Err: fmt.Errorf("%w: Expire with TTL %d", ErrBadCommand, o.ttl)}
		}
		r := f.putAt(rs, o.key, cur.value(h), now+o.ttl)
		r.Swapped = r.Err == nil
		return r
	case opCVS:
		// A stored key's version is never 0, so 0 matches only "absent".
		var current uint64
		if present {
			current = h.version
		}
		if current != o.version {
			return Result{Version: current}
		}
		r := f.put(rs, o.key, o.value, o.ttl, now)
		r.Swapped = r.Err == nil
		return r
	default: // opIncr
		var n, expireAt int64
		if present {
			v, err := strconv.ParseInt(string(cur.value(h)), 10, 64)
			if err != nil {
				return Result{Err: ErrNotInteger}
			}
			n, expireAt = v, h.expireAt
		}
		sum := n + o.delta
		if (o.delta > 0 && sum < n) || (o.delta < 0 && sum > n) {
			return Result{Err: ErrNotInteger}
		}
		var buf [20]byte
		r := f.putAt(rs, o.key, strconv.AppendInt(buf[:0], sum, 10), expireAt)
		if r.Err == nil {
			r.Int = sum
		}
		return r
	}
}
