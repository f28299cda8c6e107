package raftgroup

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
)

// The amnesia hazard, built deterministically: voters L (leader), B and C;
// write W commits on L and B while C is cut off. B crashes and a new
// incarnation of it starts on the same address with an empty replica,
// while L is cut off before it can catch that replica up. C then asks "B"
// (the old incarnation's server id) for its vote. The new process must not
// answer for the old one: if it did, C would lead without W and erase it.
func TestRestartedNodeDoesNotAnswerForItsOldIncarnation(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	// W through L with C cut off; should leadership move during the
	// write, all again with the roles of the next leader (the write is
	// idempotent).
	var li, bi, ci int
	var L, B, C *Host
	c.onLeader(0, "W written with C cut off", func(l int) error {
		c.faults.HealAll()
		li, bi, ci = l, (l+1)%3, (l+2)%3
		L, B, C = c.hosts[li], c.hosts[bi], c.hosts[ci]
		c.faults.Isolate(C.Addr(), L.Addr(), B.Addr())
		return applyWrite(L.Group(0), "w", "acknowledged")
	})

	c.faults.Isolate(L.Addr(), B.Addr(), C.Addr())
	bAddr := B.Addr()
	if err := B.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := c.config(B.NodeID())
	cfg.BindAddr = bAddr
	B2, err := NewHost(cfg)
	if err != nil {
		t.Fatalf("restart on %s: %v", bAddr, err)
	}
	c.hosts[bi] = B2 // closed by the cluster's cleanup
	if B2.ID() == B.ID() {
		t.Fatal("the restarted host kept its server id")
	}
	// What gridkv does for a new incarnation: an empty replica, which the
	// leader would add and catch up.
	if _, err := B2.CreateGroup(0, fsm.New(fsm.Options{}), GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	c.faults.Heal(C.Addr(), bAddr)

	// C's election timeout is 300ms: over 2s it campaigns several times.
	stayFalse(t, 2*time.Second, func() bool { return C.Group(0).IsLeader() },
		"C was elected with a vote cast in the old incarnation's name")

	c.faults.HealAll()
	// Through the leader of the moment (L or C: B's new replica is empty);
	// the write is applied after everything that leader's log holds, so
	// once L and C have applied it, each must hold W.
	c.setViaLeader(0, "after", "heal")
	for _, i := range []int{li, ci} {
		f := c.fsms[i][0]
		eventually(t, 15*time.Second, fmt.Sprintf("host %d to apply the write after the heal", i), func() bool {
			_, _, ok, _ := f.Get(0, "after", fsm.NowNanos())
			return ok
		})
		if v, _, ok, _ := f.Get(0, "w", fsm.NowNanos()); !ok || string(v) != "acknowledged" {
			t.Fatalf("acknowledged write lost on host %d: got %q, %v", i, v, ok)
		}
	}
}

// A frame addressed to one incarnation is refused by a host running
// another, and the refusal reads as "unreachable": not served.
func TestFrameForAnotherIncarnationIsRefused(t *testing.T) {
	c := newTestCluster(t, 2, 0)
	served := make(chan struct{}, 1)
	c.hosts[1].SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		served <- struct{}{}
		return req, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	to, addr := c.hosts[1].ID(), c.hosts[1].Addr()
	if _, err := c.hosts[0].Call(ctx, to, addr, []byte("right")); err != nil {
		t.Fatalf("call to the right incarnation: %v", err)
	}
	<-served
	node, inc, _ := ParseServerID(to)
	for _, wrong := range []raft.ServerID{ServerID(node, inc+1), "garbage"} {
		_, err := c.hosts[0].Call(ctx, wrong, addr, []byte("wrong"))
		if err == nil || !NotSent(err) {
			t.Fatalf("call addressed to %s reached %s: err %v, want a refusal that reads as not sent", wrong, to, err)
		}
	}
	select {
	case <-served:
		t.Fatal("a call addressed to another incarnation was served")
	default:
	}

	// Raft traffic too: a vote request for another incarnation is refused.
	if _, err := c.hosts[1].CreateGroup(7, fsm.New(fsm.Options{}), GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	gt, err := newGroupTransport(c.hosts[0].mux, 7, newLease(LeaseOptions{}, time.Second, c.hosts[0].ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer gt.Close()
	req := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(c.hosts[0].ID()), Addr: []byte(c.hosts[0].Addr())}, Term: 5}
	var resp raft.RequestVoteResponse
	if err := gt.RequestVote(ServerID(node, inc+1), raft.ServerAddress(addr), req, &resp); err == nil {
		t.Fatalf("vote request for another incarnation answered: %+v", resp)
	}
	if err := gt.RequestVote(to, raft.ServerAddress(addr), req, &resp); err != nil {
		t.Fatalf("vote request for the right incarnation: %v", err)
	}
}

// stayFalse polls cond for the whole of d and fails the test if it ever holds.
func stayFalse(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	end := time.NewTimer(d)
	defer end.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			t.Fatal(msg)
		}
		select {
		case <-end.C:
			return
		case <-tick.C:
		}
	}
}

// Applies racing the host's Close all return: none is left waiting on an
// entry whose future raft never answers (see Group.drain).
func TestApplyRacingCloseReturns(t *testing.T) {
	for round := 0; round < 10; round++ {
		c := newTestCluster(t, 1, 1)
		c.waitLeaders(1, 5*time.Second)
		g := c.hosts[0].Group(0)
		data, _ := fsm.Encode(fsm.SetOp(0, "k", []byte("v"), 0))
		var done sync.WaitGroup
		for w := 0; w < 16; w++ {
			done.Add(1)
			go func() {
				defer done.Done()
				for i := 0; i < 200; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					_, err := g.Apply(ctx, data)
					cancel()
					if err != nil {
						return
					}
				}
			}()
		}
		_ = c.hosts[0].Close()
		finished := make(chan struct{})
		go func() { done.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: an Apply racing Close never returned", round)
		}
	}
}
