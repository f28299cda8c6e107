package gridkv

import (
	"context"
	"errors"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/gossip"
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
	req := encodeRequest(reqLeave, wireGroup(r, rep.gen), []byte(self))
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

// drainRanges has this node's replicas re-replicated onto the members that
// stay before the node takes them out itself, so that a planned removal
// does not leave a range below ReplicaCount: it hands away the leadership
// of each group it leads, then waits, until ctx ends, for the groups'
// leaders to take its replicas out. They do so as for any member that
// announced it is leaving (DB.Close gossips that first): placement no
// longer names it, and the reconciler adds and promotes the replacement
// before it removes the leaving replica (nextSteps), or removes it at once
// where no member is left to hold another replica. A group whose only
// voter is this node's replica gets its replacement from this node (see
// drained). Each round it works out again which groups can get there
// (drainable: with the members that are live and not leaving then), so
// that it stops waiting for groups left without a live majority, as when
// the whole cluster is closing. It returns the replicas still in their
// groups, for leaveRanges; the others are shut down.
func (db *DB) drainRanges(ctx context.Context, reps map[int]*replica) map[int]*replica {
	start := time.Now()
	rest := maps.Clone(reps)
	tick := time.NewTicker(db.cfg.Timing.ReconcileInterval)
	defer tick.Stop()
	sem := make(chan struct{}, leaveParallel)
	for {
		live := db.liveServers(true)
		isLive := func(id raft.ServerID) bool { return live[id] }
		var todo []int
		for r, rep := range rest {
			if db.drainable(rep, live) {
				todo = append(todo, r)
			}
		}
		if len(todo) == 0 {
			break
		}
		out := make([]bool, len(todo))
		var wg sync.WaitGroup
		for i, r := range todo {
			rep := rest[r]
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				out[i] = db.drained(ctx, r, rep, isLive)
			}()
		}
		wg.Wait()
		for i, r := range todo {
			if out[i] {
				_ = rest[r].group.Shutdown() // out of the group: nothing more to do there
				delete(rest, r)
			}
		}
		if len(rest) == 0 {
			break // no tick to wait for
		}
		select {
		case <-ctx.Done():
			db.log.Info("closing: replicas not re-replicated in time; taking them out anyway",
				"groups_left", len(reps)-len(rest), "groups_kept", len(rest), "took", time.Since(start).Round(time.Millisecond))
			return rest
		case <-tick.C:
		}
		// Gossip again that this node is leaving: an update reaches only
		// a few members directly (memberlist's retransmit limit; with
		// GossipLocal and 4 nodes, 2 of the 3 others), and until the
		// others pass it on, or the next full state exchange, a leader
		// that missed it keeps this node in the target.
		_ = db.gsp.AnnounceLeave(db.cfg.Timing.ReconcileInterval)
	}
	if len(rest) < len(reps) {
		db.log.Info("closing: replicas re-replicated onto the members that stay", "groups_left", len(reps)-len(rest),
			"groups_kept", len(rest), "took", time.Since(start).Round(time.Millisecond))
	}
	return rest
}

// drainable reports whether the leaders can take rep, this node's
// replica, out of its group while keeping ReplicaCount: the voters that
// stay have a live majority without it (leaveSafe), or it is the group's
// only voter and a live member that stays can take its place.
func (db *DB) drainable(rep *replica, live map[raft.ServerID]bool) bool {
	servers, err := rep.group.Configuration()
	if err != nil {
		return false
	}
	if _, safe := leaveSafe(servers, db.host.ID(), func(id raft.ServerID) bool { return live[id] }); safe {
		return true
	}
	for _, s := range servers {
		if s.ID != db.host.ID() && s.Suffrage == raft.Voter {
			return false // other voters, no live majority among them
		}
	}
	for id := range live {
		if id != db.host.ID() {
			return true
		}
	}
	return false
}

// drained reports whether rep, this node's replica of group r, is out of
// its group, as the group's leader says (askMembership: from a committed
// configuration; raft's latest one may not be). A replica that leads
// hands the leadership to a live voter first: leaders do not remove
// themselves. Where there is none (a sole voter), it takes the
// reconciler's next step toward a target without this node (nextSteps:
// add and promote a replica on a member that stays, then hand over).
func (db *DB) drained(ctx context.Context, r int, rep *replica, live func(raft.ServerID) bool) bool {
	actx, cancel := context.WithTimeout(ctx, db.cfg.Timing.StepTimeout)
	defer cancel()
	if !rep.group.IsLeader() {
		member, _, ok := db.askMembership(actx, r, rep)
		return ok && !member
	}
	servers, err := rep.group.Configuration()
	if err != nil || db.handOff(actx, rep, servers, live) == nil {
		return false
	}
	var staying []gossip.Member
	for _, m := range db.members() {
		if m.Meta.NodeID != db.cfg.NodeID && !m.Meta.Leaving {
			staying = append(staying, m)
		}
	}
	ids, byID := indexMembers(staying)
	in := confInput{self: db.host.ID(), current: servers, target: placedPeers(r, ids, byID, db.cfg.ReplicaCount)}
	if steps := nextSteps(in); len(steps) > 0 {
		rep.sole.Store(false) // before any change: reads take the leader path from now on
		if err := db.makeStep(actx, r, rep, steps[0]); err != nil {
			db.log.Debug("closing: step toward a replica elsewhere failed", "group", r, "step", steps[0].kind, "err", oneLine(err.Error()))
		}
	}
	return false
}
