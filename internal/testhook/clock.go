package testhook

import (
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/raftgroup"
)

// Clock is a raftgroup.Clock for the suite's clock nemesis: both of its
// readings run at a fixed rate against real time (one oscillator drives
// both), and it can be made to jump or to stall.
//
// With Hooks.ClockRate set to the same rate, the node's raft timers are
// stretched by 1/rate too, so the whole node lives on this clock: that is
// how the suite emulates a process whose clock runs fast or slow.
//
// Threading: every method is safe for concurrent use.
type Clock struct {
	rate  float64
	start time.Time // real time of reading 0
	wall0 int64     // wall reading at start, unix nanoseconds

	offset     atomic.Int64 // added to the monotonic reading (Jump)
	last       atomic.Int64 // the largest monotonic reading given: it never goes back
	stallUntil atomic.Int64 // unix nanoseconds (real) until which readings stall
}

var _ raftgroup.Clock = (*Clock)(nil)

// NewClock returns a clock that runs at rate times real time (1: real
// time; rate <= 0 counts as 1).
func NewClock(rate float64) *Clock {
	if rate <= 0 {
		rate = 1
	}
	now := time.Now()
	return &Clock{rate: rate, start: now, wall0: now.UnixNano()}
}

// Rate is the clock's rate against real time.
func (c *Clock) Rate() float64 { return c.rate }

// Now implements raftgroup.Clock. While a Stall is on, the call takes its
// reading first and then waits for the stall to end: the caller acts on a
// reading that is old by then.
func (c *Clock) Now() (mono, wall int64) {
	elapsed := int64(float64(time.Since(c.start)) * c.rate)
	mono = elapsed + c.offset.Load()
	for {
		last := c.last.Load()
		if mono <= last {
			mono = last // a backward jump: the reading stands still instead
			break
		}
		if c.last.CompareAndSwap(last, mono) {
			break
		}
	}
	wall = c.wall0 + elapsed
	if until := c.stallUntil.Load(); until != 0 {
		if d := time.Until(time.Unix(0, until)); d > 0 {
			t := time.NewTimer(d)
			<-t.C
		}
	}
	return mono, wall
}

// Jump moves the monotonic reading by d of clock time while the wall
// reading keeps running. Forward (d > 0), it leaps ahead. Backward, it
// stands still until the clock has run |d| (it never goes back): what a
// suspended machine's or a paused VM's monotonic clock does. Either way
// the two readings part by |d|, which a lease that checks them must
// notice.
func (c *Clock) Jump(d time.Duration) { c.offset.Add(int64(d)) }

// Stall pauses, for d of real time from now, every caller of Now after it
// took its reading: a process descheduled between reading the clock and
// acting on the reading (between a lease check and the reply it allows).
func (c *Clock) Stall(d time.Duration) {
	c.stallUntil.Store(time.Now().Add(d).UnixNano())
}
