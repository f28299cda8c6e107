package raftgroup

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Clock is the time source of leader leases.
//
// Now returns a monotonic reading, on which leases are timed, and a reading
// of a clock that keeps running while the machine is suspended (the wall
// clock), both in nanoseconds. When the two drift apart by more than the
// lease margin between a lease's grant and its use, the monotonic clock has
// stopped or jumped (suspend, VM pause, a clock under test), and the lease is
// dropped.
//
// Threading: Now is called from many goroutines at once.
type Clock interface {
	Now() (mono, wall int64)
}

// SystemClock is the Clock of time.Now: Go's monotonic clock and the wall
// clock.
type SystemClock struct{}

var clockEpoch = time.Now()

// Now implements Clock.
func (SystemClock) Now() (mono, wall int64) {
	t := time.Now()
	return int64(t.Sub(clockEpoch)), t.UnixNano()
}

// LeaseOptions tune leader leases (see docs/raftgroup.md, "Leader leases").
type LeaseOptions struct {
	// Clock times leases. Default SystemClock.
	Clock Clock
	// Heartbeat is HeartbeatTimeout as Clock counts it: the lease and the
	// vote guard are derived from it. Default HeartbeatTimeout. It differs
	// only where raft's timers are stretched to emulate a node whose clock
	// runs at another rate (the Jepsen-style suite's clock nemesis): raft
	// times on the runtime's timers, leases on Clock, so a stretched
	// HeartbeatTimeout measured on the slow Clock would count the drift twice.
	Heartbeat time.Duration
	// DriftBound is the largest relative rate difference assumed between
	// any two nodes' clocks. Default 0.05 (5%, far above what crystals and
	// NTP allow, to cover VM scheduling).
	DriftBound float64
	// Margin is taken off the lease on top of the drift: it covers the
	// time between taking a reading and acting on it. It is also the
	// tolerance of the clock-jump check. Default HeartbeatTimeout/20,
	// at least 5ms.
	Margin time.Duration
	// Duration, when set, is the lease length itself instead of
	// Heartbeat×(1-DriftBound)-Margin, on Clock. It must not exceed
	// Heartbeat. The suite's negative control sets it to HeartbeatTimeout:
	// no margin at all.
	Duration time.Duration
	// Disabled turns leases off: every linearizable read takes a ReadIndex
	// round.
	Disabled bool
	// UnsafeKeepThroughTransfer keeps a lease valid after this leader
	// starts a leadership transfer. Wrong on purpose: the suite's negative
	// control must catch the stale reads it allows.
	UnsafeKeepThroughTransfer bool
}

// fill sets the defaults and returns the lease length, on Clock.
func (o *LeaseOptions) fill(heartbeat time.Duration) time.Duration {
	if o.Heartbeat <= 0 {
		o.Heartbeat = heartbeat
	}
	heartbeat = o.Heartbeat
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.DriftBound <= 0 {
		o.DriftBound = 0.05
	}
	if o.Margin <= 0 {
		o.Margin = max(heartbeat/20, 5*time.Millisecond)
	}
	if o.Duration > 0 {
		return min(o.Duration, heartbeat)
	}
	return time.Duration(float64(heartbeat)*(1-o.DriftBound)) - o.Margin
}

// lease is one replica's leader lease: the time until which no other
// replica can have become leader, derived from the acknowledged
// AppendEntries of the current term.
//
// The hot path (valid) reads atomics only. Acks update it under mu.
type lease struct {
	clock     Clock
	heartbeat int64 // HeartbeatTimeout on clock, nanoseconds (the vote guard's)
	length    int64 // nanoseconds
	tolerance int64 // of the clock-jump check, nanoseconds
	keep      bool  // UnsafeKeepThroughTransfer

	term      atomic.Uint64 // the term the lease is for; 0: none
	until     atomic.Int64  // monotonic nanoseconds
	skew      atomic.Int64  // wall - mono when until was last set
	suspended atomic.Uint64 // a transfer started in this term
	changing  atomic.Int32  // configuration changes under way

	hits, misses atomic.Uint64 // LeaseRead's outcomes

	mu     sync.Mutex
	self   raft.ServerID
	voters []raft.ServerID // the term's configuration; empty: no lease
	acks   map[raft.ServerID]leaseAck
}

// leaseAck is the send time of the newest AppendEntries (or leadership
// round) a peer acknowledged as a success, in term.
type leaseAck struct {
	term uint64
	sent int64
}

func newLease(o LeaseOptions, heartbeat time.Duration, self raft.ServerID) *lease {
	length := o.fill(heartbeat)
	l := &lease{clock: o.Clock, heartbeat: int64(o.Heartbeat), length: int64(length), tolerance: int64(o.Margin),
		keep: o.UnsafeKeepThroughTransfer, self: self}
	if o.Disabled || length <= 0 {
		l.length = 0
	}
	return l
}

// now is the monotonic reading.
func (l *lease) now() int64 {
	mono, _ := l.clock.Now()
	return mono
}

// begin (re)starts the lease of term with these voters: once a barrier
// of term has applied (the configuration is then committed), and after
// each configuration change of the term. Acks already recorded for the
// term count.
func (l *lease) begin(term uint64, voters []raft.ServerID) {
	if l.length == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.until.Store(0)
	l.voters = voters
	l.term.Store(term)
	l.recomputeLocked()
}

// ack records that peer acknowledged, as a success in term, a request
// sent at monotonic time sent.
func (l *lease) ack(peer raft.ServerID, term uint64, sent int64) {
	if l.length == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.acks == nil {
		l.acks = make(map[raft.ServerID]leaseAck)
	}
	if a, ok := l.acks[peer]; ok && a.term == term && a.sent >= sent {
		return
	}
	l.acks[peer] = leaseAck{term: term, sent: sent}
	if term == l.term.Load() {
		l.recomputeLocked()
	}
}

// recomputeLocked extends until to the quorum-th newest acknowledged send
// time (this leader counting as now) plus the lease length.
func (l *lease) recomputeLocked() {
	term := l.term.Load()
	if term == 0 || len(l.voters) == 0 || !slices.Contains(l.voters, l.self) {
		return
	}
	mono, wall := l.clock.Now()
	var buf [8]int64 // no allocation for up to 8 voters
	times := buf[:0]
	for _, v := range l.voters {
		if v == l.self {
			times = append(times, mono)
		} else if a, ok := l.acks[v]; ok && a.term == term {
			times = append(times, a.sent)
		}
	}
	need := len(l.voters)/2 + 1
	if len(times) < need {
		return
	}
	slices.Sort(times)
	slices.Reverse(times)
	until := times[need-1] + l.length
	if until <= l.until.Load() {
		return
	}
	l.skew.Store(wall - mono)
	l.until.Store(until)
}

// usable reports, from atomics only, whether a lease of term may hold:
// valid decides it with a clock reading.
func (l *lease) usable(term uint64) bool {
	return l.term.Load() == term && l.changing.Load() == 0 && (l.suspended.Load() != term || l.keep) && l.until.Load() != 0
}

// valid reports whether the lease of term holds now, and the wall clock
// reading it was checked at. The caller checks that this replica still
// leads in term.
func (l *lease) valid(term uint64) (wall int64, ok bool) {
	mono, wall := l.clock.Now()
	if !l.usable(term) || mono >= l.until.Load() {
		return wall, false
	}
	if d := wall - mono - l.skew.Load(); d > l.tolerance || d < -l.tolerance {
		// The monotonic clock stopped or jumped against the wall clock
		// since the lease was last extended: drop it.
		l.until.Store(0)
		return wall, false
	}
	return wall, true
}

// suspend ends the lease of term for good: a leadership transfer started,
// and the target may win an election at once, with votes that followers
// grant despite knowing a leader.
func (l *lease) suspend(term uint64) { l.suspended.Store(term) }

// voterIDs lists the voters of servers.
func voterIDs(servers []raft.Server) []raft.ServerID {
	var ids []raft.ServerID
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

// voteGuard is a follower's half of the lease: after acknowledging an
// AppendEntries, a replica refuses to vote in an election for a heartbeat
// time-out, unless the candidate was told to run by its leader
// (TimeoutNow). hashicorp/raft only refuses pre-votes while it knows a
// leader; a real RequestVote of a higher term makes it forget the leader
// first and vote. See docs/raftgroup.md, "Leader leases".
type voteGuard struct {
	clock   Clock
	timeout int64        // HeartbeatTimeout, nanoseconds
	acked   atomic.Int64 // monotonic time of the last successful AppendEntries answer; 0: none
}

func (v *voteGuard) noteAck() {
	mono, _ := v.clock.Now()
	v.acked.Store(mono)
}

// refuses reports whether a vote must be refused now.
func (v *voteGuard) refuses() bool {
	a := v.acked.Load()
	if a == 0 {
		return false
	}
	mono, _ := v.clock.Now()
	return mono-a < v.timeout
}
