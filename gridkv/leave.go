package gridkv

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// How Close takes this node's replicas out of their ranges: at most
// Timing.LeaveTimeout in all, leaveParallel ranges at a time.
const leaveParallel = 16

// errStays: removing this node's replica could not commit (or would leave
// the range with no voter), so it stays in the configuration.
var errStays = errors.New("gridkv: the remaining voters could not commit the removal")

// leaveSafe decides, from a range's configuration, whether the replica self
// is in it and whether removing it can commit: hashicorp/raft commits a
// configuration change under the new configuration, so the voters other
// than self must have a live majority among them (live says who is up
// and staying). A sole voter cannot be removed at all.
func leaveSafe(servers []raft.Server, self raft.ServerID, live func(raft.ServerID) bool) (member, safe bool) {
	remaining, up := 0, 0
	for _, s := range servers {
		if s.ID == self {
			member = true
			continue
		}
		if s.Suffrage != raft.Voter {
			continue
		}
		remaining++
		if live(s.ID) {
			up++
		}
	}
	return member, remaining > 0 && up > remaining/2
}

// leaveRanges takes this node's replicas out of their ranges' Raft
// configurations where the rest can carry on without them (see leaveSafe),
// ranges it leads first, within Timing.LeaveTimeout. Called by Close once the node
// stopped serving, before it leaves gossip.
func (db *DB) leaveRanges(reps map[int]*replica) {
	start := time.Now()
	live := db.liveServers(true) // this node is leaving: not counted
	isLive := func(id raft.ServerID) bool { return live[id] }
	order := make([]int, 0, len(reps))
	leads := map[int]bool{}
	for r, rep := range reps {
		order = append(order, r)
		leads[r] = rep.group.IsLeader()
	}
	sort.Slice(order, func(i, j int) bool {
		if leads[order[i]] != leads[order[j]] {
			return leads[order[i]]
		}
		return order[i] < order[j]
	})

	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.LeaveTimeout)
	defer cancel()
	var mu sync.Mutex
	var left, stayed, failed int
	var lastErr error
	sem := make(chan struct{}, leaveParallel)
	var wg sync.WaitGroup
	for _, r := range order {
		rep := reps[r]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := db.leaveRange(ctx, r, rep, isLive)
			if err == nil {
				_ = rep.group.Shutdown() // out of the range: nothing more to do there
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				left++
			case errors.Is(err, errStays):
				stayed++
			default:
				failed++
				lastErr = err
			}
		}()
	}
	wg.Wait()
	args := []any{"groups_left", left, "groups_kept", stayed, "took", time.Since(start).Round(time.Millisecond)}
	if failed > 0 {
		db.log.Warn("closing: some replica groups still count this node as a replica", append(args, "failed", failed, "err", lastErr)...)
		return
	}
	db.log.Info("closing: left the replica groups", args...)
}

// leaveRange takes this node's replica of range r out of the range: a
// leader hands leadership to a live voter first (or, when none takes it,
// removes itself), then the range's leader is asked to remove it,
// following redirects. It returns nil once the replica is out, errStays
// when it must stay (see leaveSafe).
func (db *DB) leaveRange(ctx context.Context, r int, rep *replica, live func(raft.ServerID) bool) error {
	self := db.host.ID()
	req := encodeRequest(reqLeave, r, []byte(self))
	var hint peer // the leader, from a redirect
	eager := true // the next redirect may be followed without a pause
	backoff := 2 * time.Millisecond
	for {
		servers, err := rep.group.Configuration()
		if err != nil {
			return err
		}
		member, safe := leaveSafe(servers, self, live)
		if !member {
			return nil
		}
		if rep.group.IsLeader() {
			if db.handOff(ctx, rep, servers, live) == nil {
				hint = peer{}
				continue
			}
			if !safe {
				return errStays
			}
			// Nobody takes the leadership: remove itself as leader. The
			// change commits under the new configuration, then this
			// replica steps down and the others elect a leader.
			if err := rep.group.RemoveServer(ctx, self); err == nil || ctx.Err() != nil {
				return err
			}
		} else if !safe {
			return errStays
		} else {
			to := hint
			if !to.known() {
				to = leaderOf(rep)
			}
			hint = peer{}
			if to.known() && to.addr != db.host.Addr() {
				ans, err := db.host.Call(ctx, to.id, to.addr, req)
				switch {
				case err != nil || len(ans) == 0:
				case ans[0] == stOK:
					return nil
				case ans[0] == stRedirect:
					if h := decodeRedirect(ans[1:]); h.known() && h.addr != to.addr {
						hint = h
						if eager {
							eager = false
							continue
						}
					}
				}
			}
		}
		if err := pause(ctx, &backoff); err != nil {
			return err
		}
		eager = true
	}
}

// handOff transfers the leadership of rep's range to a live voter.
func (db *DB) handOff(ctx context.Context, rep *replica, servers []raft.Server, live func(raft.ServerID) bool) error {
	err := errors.New("gridkv: no live voter to hand leadership to")
	for _, s := range servers {
		if s.ID == db.host.ID() || s.Suffrage != raft.Voter || !live(s.ID) {
			continue
		}
		if err = rep.group.TransferLeadership(ctx, s.ID, string(s.Address)); err == nil {
			return nil
		}
	}
	return err
}
