package raftgroup

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/testutil"
)

// fakeClock is a Clock the test moves by hand; wall follows mono unless
// the test makes them part (a jump).
type fakeClock struct{ mono, wall atomic.Int64 }

func (c *fakeClock) Now() (int64, int64) { return c.mono.Load(), c.wall.Load() }

func (c *fakeClock) advance(d time.Duration) {
	c.mono.Add(int64(d))
	c.wall.Add(int64(d))
}

// held drops the wall reading of a lease check.
func held(_ int64, ok bool) bool { return ok }

// A node whose raft timers are stretched (the suite's clock nemesis) keeps
// its lease and vote guard in its own clock's units: Heartbeat, not the
// stretched HeartbeatTimeout.
func TestLeaseHeartbeatOnItsClock(t *testing.T) {
	l := newLease(LeaseOptions{Clock: &fakeClock{}, Heartbeat: 300 * time.Millisecond}, 450*time.Millisecond, "a")
	if want := int64(300*time.Millisecond*95/100 - 15*time.Millisecond); l.length != want || l.heartbeat != int64(300*time.Millisecond) {
		t.Fatalf("length %v heartbeat %v, want %v and 300ms", time.Duration(l.length), time.Duration(l.heartbeat), time.Duration(want))
	}
	l = newLease(LeaseOptions{Clock: &fakeClock{}, Duration: time.Second}, 450*time.Millisecond, "a")
	if l.length != int64(450*time.Millisecond) || l.heartbeat != int64(450*time.Millisecond) {
		t.Fatalf("length %v heartbeat %v, want both HeartbeatTimeout by default", time.Duration(l.length), time.Duration(l.heartbeat))
	}
}

func TestLeaseQuorumOfAcks(t *testing.T) {
	clk := &fakeClock{}
	clk.advance(time.Second)
	hb := 100 * time.Millisecond
	l := newLease(LeaseOptions{Clock: clk, DriftBound: 0.1, Margin: 5 * time.Millisecond}, hb, "a")
	if l.length != int64(85*time.Millisecond) {
		t.Fatalf("lease length %v, want 90ms-5ms", time.Duration(l.length))
	}
	voters := []raft.ServerID{"a", "b", "c", "d", "e"}
	l.begin(7, voters)
	if held(l.valid(7)) {
		t.Fatal("valid with no acks")
	}
	start := clk.mono.Load()
	l.ack("b", 7, start)
	if held(l.valid(7)) {
		t.Fatal("valid with 2 of 5")
	}
	l.ack("c", 6, start) // an earlier term's ack does not count
	if held(l.valid(7)) {
		t.Fatal("an ack of another term counted")
	}
	clk.advance(10 * time.Millisecond)
	l.ack("c", 7, start+int64(10*time.Millisecond))
	// 3 of 5: self (now), c (start+10ms), b (start): the third newest is b's.
	if !held(l.valid(7)) {
		t.Fatal("not valid with a quorum of acks")
	}
	if got, want := l.until.Load(), start+l.length; got != want {
		t.Fatalf("until %d, want %d (the quorum-th newest send plus the length)", got, want)
	}
	if held(l.valid(8)) {
		t.Fatal("valid for another term")
	}
	clk.advance(75 * time.Millisecond) // start+85ms: expired
	if held(l.valid(7)) {
		t.Fatal("valid after its length")
	}
	l.ack("d", 7, clk.mono.Load())
	if !held(l.valid(7)) {
		t.Fatal("not renewed by a newer ack")
	}

	// A transfer ends the lease for the rest of the term.
	l.suspend(7)
	l.ack("e", 7, clk.mono.Load())
	if held(l.valid(7)) {
		t.Fatal("valid after a transfer started")
	}
}

func TestLeaseDroppedOnClockJump(t *testing.T) {
	clk := &fakeClock{}
	clk.advance(time.Second)
	l := newLease(LeaseOptions{Clock: clk}, time.Second, "a")
	l.begin(1, []raft.ServerID{"a", "b", "c"})
	l.ack("b", 1, clk.mono.Load())
	if !held(l.valid(1)) {
		t.Fatal("not valid")
	}
	// Suspend: the monotonic clock stood still while the wall clock ran.
	clk.wall.Add(int64(time.Minute))
	if held(l.valid(1)) {
		t.Fatal("valid after the monotonic clock stopped for a minute")
	}
	clk.wall.Add(-int64(time.Minute))
	if held(l.valid(1)) {
		t.Fatal("a dropped lease came back")
	}
}

func TestLeaseOffDuringConfigurationChange(t *testing.T) {
	clk := &fakeClock{}
	clk.advance(time.Second)
	l := newLease(LeaseOptions{Clock: clk}, time.Second, "a")
	l.begin(1, []raft.ServerID{"a", "b", "c"})
	l.ack("b", 1, clk.mono.Load())
	l.changing.Add(1)
	if held(l.valid(1)) {
		t.Fatal("valid during a configuration change")
	}
	l.changing.Add(-1)
	// The new configuration has two new voters that never acked: 2 of 5.
	l.begin(1, []raft.ServerID{"a", "b", "c", "d", "e"})
	if held(l.valid(1)) {
		t.Fatal("valid without a quorum of the new configuration")
	}
}

// TestLeaseEndsBeforeAnotherLeaderIsElected isolates a leader holding a
// lease and checks that the majority elects a new leader only after the
// old one's lease has ended.
func TestLeaseEndsBeforeAnotherLeaderIsElected(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	old, term := c.leaseHolder(0)
	g := c.hosts[old].Group(0)

	// The lease's own claim, not LeaseHeld: raft's step-down (at
	// LeaderLeaseTimeout) must not be what keeps it safe.
	var lastHeld atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			// The time of the check itself (the lease's wall clock,
			// time.Now's): not read before it (a held lease dated too
			// early) nor after it (too late, after a preemption).
			if wall, ok := g.lease.valid(term); ok {
				lastHeld.Store(wall)
			}
		}
	}()
	var others []string
	for i, h := range c.hosts {
		if i != old {
			others = append(others, h.Addr())
		}
	}
	c.faults.Isolate(c.hosts[old].Addr(), others...)
	var elected int64
	eventually(t, 10*time.Second, "a new leader in the majority", func() bool {
		for i, h := range c.hosts {
			if i != old && h.Group(0).IsLeader() {
				elected = time.Now().UnixNano()
				return true
			}
		}
		return false
	})
	close(stop)
	<-done
	if lastHeld.Load() == 0 {
		t.Fatal("the old leader never held its lease while isolated")
	}
	if lastHeld.Load() >= elected {
		t.Fatalf("the old leader held its lease %v after the new leader was seen", time.Duration(lastHeld.Load()-elected))
	}
}

func TestTransferEndsLeaseAndStaleTimeoutNowIsDropped(t *testing.T) {
	// The follower must stay a follower, and refuse a vote for having
	// heard from its leader, through windows that a stall of a 300ms
	// HeartbeatTimeout would break: 1s timings.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old, term := c.leaseHolder(0)
	g := c.hosts[old].Group(0)

	// A TimeoutNow from an earlier term (a delayed frame) is dropped.
	f := (old + 1) % 3
	req := &raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(c.hosts[old].ID()), Addr: []byte(c.hosts[old].Addr())}}
	var resp raft.TimeoutNowResponse
	err := g.trans.roundTrip(c.hosts[f].ID(), raft.ServerAddress(c.hosts[f].Addr()), kindTimeoutNow, false,
		func(b []byte) []byte { return appendTimeoutNow(b, req.RPCHeader, term-1) }, &resp)
	if err == nil {
		t.Fatal("a TimeoutNow of an earlier term was accepted")
	}
	// A TimeoutNow taken makes it a candidate at once; without one, it
	// leaves only after 1s (its HeartbeatTimeout, at least) without its
	// leader: half that is a window a stall does not break.
	stayFalse(t, 500*time.Millisecond, func() bool { return c.hosts[f].Group(0).Raft().State() != raft.Follower },
		"the follower left the follower state on a stale TimeoutNow")

	// A vote request without a transfer is refused by a follower that
	// just heard from its leader (heartbeats every 100ms or so; the vote
	// guard holds for 1s after the last).
	vreq := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(c.hosts[old].ID()), Addr: []byte(c.hosts[old].Addr())},
		Term: term + 1, LastLogIndex: 1 << 40, LastLogTerm: term}
	var vresp raft.RequestVoteResponse
	if err := g.trans.RequestVote(c.hosts[f].ID(), raft.ServerAddress(c.hosts[f].Addr()), vreq, &vresp); err != nil {
		t.Fatal(err)
	}
	if vresp.Granted {
		t.Fatal("a follower that heard from its leader granted a vote")
	}

	// A real transfer ends the lease at once.
	if err := g.TransferLeadership(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, term, ok := g.LeaseIndex(); ok && held(g.ConfirmLease(term)) {
		t.Fatal("the lease survived a leadership transfer")
	}
}

// With a CommitTimeout of 5s, followers learn a write's commit from the
// commit notifier within a fraction of it, not from raft's next empty
// AppendEntries.
func TestFollowersLearnCommitPromptly(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(cfg *Config) { cfg.CommitTimeout = 5 * time.Second })
	c.waitLeaders(1, 10*time.Second)
	c.setViaLeader(0, "k", "v")
	start := time.Now()
	// Well under CommitTimeout, which is what followers would wait without
	// the prompt notice; not much under, for a loaded machine running the
	// race detector (1 s was missed once there).
	eventually(t, 3*time.Second, "every follower to apply the write", func() bool {
		for i := range c.hosts {
			if _, _, ok, _ := c.fsms[i][0].Get(0, "k", fsm.NowNanos()); !ok {
				return false
			}
		}
		return true
	})
	t.Logf("followers applied the write %v after it committed", time.Since(start))
}

// The lease is off during a configuration change and back after it, in
// the same term, counting the new configuration's voters.
func TestLeaseAfterConfigurationChange(t *testing.T) {
	// 1s timings: the removal must not meet an election of a stall's
	// making, and any error of it fails the test.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, term := c.leaseHolder(0)
	g := c.hosts[l].Group(0)
	held := func() bool { _, term, ok := g.LeaseIndex(); return ok && held(g.ConfirmLease(term)) }
	f := (l + 1) % 3
	if err := g.RemoveServer(ctx, c.hosts[f].ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the lease back after the change", held)
	if g.Raft().CurrentTerm() != term {
		t.Skip("leadership changed meanwhile")
	}
	g.lease.mu.Lock()
	got := g.lease.voters
	g.lease.mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("lease voters %v, want the 2 that stay", got)
	}
}

// leaseHolder waits for a replica of group g to lead and hold its lease,
// after a ReadIndex (the term's barrier), and returns its host index and
// the lease's term. Should leadership move first, it waits for the next
// leader's lease.
func (c *testCluster) leaseHolder(g GroupID) (li int, term uint64) {
	c.t.Helper()
	c.onLeader(g, fmt.Sprintf("a lease of group %d", g), func(l int) error {
		gr := c.hosts[l].Group(g)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := gr.ReadIndex(ctx); err != nil {
			return err
		}
		moved := false
		if !testutil.Within(5*time.Second, func() bool {
			if _, t, ok := gr.LeaseIndex(); ok && held(gr.ConfirmLease(t)) {
				li, term = l, t
				return true
			}
			moved = !gr.IsLeader()
			return moved
		}) {
			return fmt.Errorf("host %d leads without a lease for 5s", l)
		}
		if moved {
			return errMoved
		}
		return nil
	})
	return li, term
}
