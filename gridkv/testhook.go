package gridkv

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/raftgroup"
)

// crash stops a node the way a crash would: no leadership hand-off, no
// gossip leave; its Raft replicas and all their state vanish with it.
// Idempotent, and safe after Close.
func (db *DB) crash() {
	reps, ok := db.stopServing()
	if !ok {
		return
	}
	db.gsp.Crash()
	db.host.Close()
	db.fwd.close()
	for _, rep := range reps {
		rep.batch.close()
	}
	db.met.unregister()
}

// hookNode gives the Jepsen-style suite the powers of testhook.Node.
type hookNode struct{ db *DB }

func (h hookNode) Crash() { h.db.crash() }

func (h hookNode) Leads() []int {
	var out []int
	for r, rep := range h.db.replicaList() {
		if rep.group.IsLeader() {
			out = append(out, r)
		}
	}
	return out
}

func (h hookNode) Ranges() []testhook.Replica {
	var out []testhook.Replica
	for r, rep := range h.db.replicaList() {
		d, n := rep.fsm.Digest()
		var voters []string
		if servers, err := rep.group.Configuration(); err == nil {
			for _, s := range servers {
				if s.Suffrage == raft.Voter {
					voters = append(voters, string(s.ID))
				}
			}
		}
		moving := len(rep.fsm.RangesIn(fsm.Frozen)) + len(rep.fsm.RangesIn(fsm.Incoming)) + len(rep.fsm.RangesIn(fsm.Sealed))
		out = append(out, testhook.Replica{Range: r, ServerID: string(h.db.host.ID()), Leader: rep.group.IsLeader(),
			Voters: voters, Keys: n, Digest: d, Owned: rep.fsm.OwnedRanges(), Moving: moving})
	}
	return out
}

func (h hookNode) TransferLeadership(ctx context.Context, r int, to string) error {
	rep := h.db.replica(r)
	if rep == nil || !rep.group.IsLeader() {
		return fmt.Errorf("gridkv: %s does not lead group %d", h.db.cfg.NodeID, r)
	}
	if to == "" {
		return rep.group.TransferLeadership(ctx, "", "")
	}
	servers, err := rep.group.Configuration()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if node, _, _ := raftgroup.ParseServerID(s.ID); node == to && s.Suffrage == raft.Voter {
			return rep.group.TransferLeadership(ctx, s.ID, string(s.Address))
		}
	}
	return fmt.Errorf("gridkv: %s is not a voter of group %d", to, r)
}

func (h hookNode) StartTransfer(r int) error {
	rep := h.db.replica(r)
	if rep == nil || !rep.group.IsLeader() {
		return fmt.Errorf("gridkv: %s does not lead group %d", h.db.cfg.NodeID, r)
	}
	rep.group.Raft().LeadershipTransfer() // its future is dropped: nobody waits
	return nil
}

func (h hookNode) MoveRange(ctx context.Context, r, to int) error { return h.db.moveRange(ctx, r, to) }

func (h hookNode) Groups() int { return h.db.groupCount() }

func (h hookNode) LeaseStats() (hits, misses uint64) {
	for _, rep := range h.db.replicaList() {
		hi, mi := rep.group.LeaseStats()
		hits, misses = hits+hi, misses+mi
	}
	return hits, misses
}

// emulateClockRate makes hc the configuration of a node whose clock runs
// at rate times real time (testhook.Hooks.ClockRate): every raft timer
// stretched by 1/rate (raft times on the runtime's timers, which run at
// the real rate), while leases and the vote guard keep the unstretched
// HeartbeatTimeout and count it on a clock of that rate. Configuration
// only: nothing on the read path knows.
func emulateClockRate(hc *raftgroup.Config, rate float64) error {
	rc, err := hc.RaftConfig("clock-rate") // the timings in effect, defaults filled
	if err != nil {
		return err
	}
	stretch := func(d time.Duration) time.Duration { return time.Duration(float64(d) / rate) }
	if hc.Lease.Heartbeat <= 0 {
		hc.Lease.Heartbeat = rc.HeartbeatTimeout
	}
	if hc.Lease.Clock == nil {
		hc.Lease.Clock = testhook.NewClock(rate)
	}
	hc.HeartbeatTimeout = stretch(rc.HeartbeatTimeout)
	hc.ElectionTimeout = stretch(rc.ElectionTimeout)
	hc.LeaderLeaseTimeout = stretch(rc.LeaderLeaseTimeout)
	hc.CommitTimeout = stretch(rc.CommitTimeout)
	return nil
}
