package gridkv

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/raftgroup"
)

// Orphans: a replica that no longer belongs to its group.
//
// A leader that removes a replica tells it so once (reqDrop, best effort):
// raft itself never tells a removed follower, since the leader stops
// sending it entries as soon as the configuration without it is appended.
// If that message is lost, the replica lives on, hearing from nobody,
// holding its state and asking for pre-votes the voters refuse. So each
// reconcile pass, every replica of this node that does not lead and has
// not heard from a leader for a ReconcileInterval asks its group's leader
// whether it is still in the group (reqMembership), and drops itself when
// the answer is authoritative (see checkOrphan). A replica removed while
// its drop notice was lost is gone within about two reconcile intervals
// (one of silence, then the pass that asks) and a round trip.
//
// A replica of a creation of its group that the layout has replaced
// (grow.go creates a group again when its first creation could not elect
// a leader, or recovers it) is not asked about: dropStaleCreations drops
// it, or starts the recovered creation from it, when the node adopts the
// layout, and openReplica refuses that creation already. Groups
// themselves never go away (the layout never shrinks).

// orphanChecks is how many membership checks a node runs at once; a pass
// that finds them all busy leaves the rest to the next one.
const orphanChecks = 4

// orphanState is the node's bookkeeping for orphan checks.
type orphanState struct {
	// prepared is group -> when a leader last asked this node to prepare
	// a replica of it (reqPrepare), as time.Time: such a replica is not in
	// the configuration until the leader adds it, right after.
	prepared sync.Map
	// running counts the checks under way (at most orphanChecks); active
	// is the groups being checked, so a slow check is not started twice.
	running atomic.Int32
	active  sync.Map
	// lostDrop, when set (by tests), is asked before a leader sends a
	// reqDrop; false discards it, as if the message were lost.
	lostDrop atomic.Pointer[func(r int, to raft.ServerID) bool]
}

// notePrepared records that a leader asked for a replica of group r now;
// called before the replica is opened.
func (db *DB) notePrepared(r int) { db.orphans.prepared.Store(r, time.Now()) }

// preparedLately reports whether a leader asked for a replica of group r
// within the time it takes to add it (two StepTimeouts: the add itself,
// and one that timed out but may still apply).
func (db *DB) preparedLately(r int) bool {
	v, ok := db.orphans.prepared.Load(r)
	return ok && time.Since(v.(time.Time)) < 2*db.cfg.Timing.StepTimeout
}

// preparedSince reports whether a leader asked for a replica of group r
// at or after t.
func (db *DB) preparedSince(r int, t time.Time) bool {
	v, ok := db.orphans.prepared.Load(r)
	return ok && !v.(time.Time).Before(t)
}

// dropLost reports whether the test hook discards the drop notice of
// group r to server to.
func (db *DB) dropLost(r int, to raft.ServerID) bool {
	hook := db.orphans.lostDrop.Load()
	return hook != nil && !(*hook)(r, to)
}

// checkOrphans starts a membership check (checkOrphan) for each replica
// that does not lead and has not heard from a leader for a
// ReconcileInterval, up to orphanChecks at once; it does not wait for
// them. Called from the reconcile loop; the checks are counted in db.wg.
func (db *DB) checkOrphans() {
	silence := db.cfg.Timing.ReconcileInterval
	for r, rep := range db.replicaList() {
		// A replica of a superseded creation is dropStaleCreations' to
		// drop (adoptLayout runs it), or to recover from.
		if l := db.lay.Load(); l != nil && rep.gen < l.gen(r) {
			continue
		}
		// A replica raft shut down is the reconciler's to drop; its
		// configuration read fails in checkOrphan anyway.
		if rep.group.IsLeader() || time.Since(rep.group.LastContact()) < silence || db.preparedLately(r) {
			continue
		}
		if db.orphans.running.Load() >= orphanChecks {
			continue // there may be replicas not to ask about further on
		}
		if _, busy := db.orphans.active.LoadOrStore(r, struct{}{}); busy {
			continue
		}
		db.orphans.running.Add(1)
		db.wg.Add(1) // the reconcile loop is counted: Close's Wait has not returned
		go func() {
			defer db.wg.Done()
			defer db.orphans.running.Add(-1)
			defer db.orphans.active.Delete(r)
			ctx, cancel := context.WithTimeout(db.stopCtx, db.cfg.Timing.RequestTimeout)
			defer cancel()
			db.checkOrphan(ctx, r, rep)
		}()
	}
}

// checkOrphan asks group r's leader whether rep (this node's replica, of
// the same creation) is still in the group, and drops rep if not.
//
// The authority rule: rep is dropped only on an answer that says rep's
// server is not in a configuration that a leader of the group's same
// creation read and then saw committed in its own term (serveMembership):
// a deposed leader cannot answer, and an uncommitted removal, which the
// next leader may undo, is not answered. And never a replica prepared
// lately (preparedLately): the leader adds it right after preparing it.
func (db *DB) checkOrphan(ctx context.Context, r int, rep *replica) {
	asked := time.Now()
	member, leader, ok := db.askMembership(ctx, r, rep)
	if !ok || member || db.preparedSince(r, asked) {
		return // a prepare since the question: the answer may be out of date
	}
	if db.dropOrphan(r, rep) {
		db.log.Info("replica dropped: not in its group's configuration", "group", r, "gen", rep.gen, "leader", string(leader))
	}
}

// askMembership asks group r's leader, found as leaderGuesses finds it
// and following redirects, whether this node's server is in the group's
// committed configuration (serveMembership). ok is false when no leader
// answered: there is none now, or it was unsure.
func (db *DB) askMembership(ctx context.Context, r int, rep *replica) (member bool, leader raft.ServerID, ok bool) {
	req := encodeRequest(reqMembership, r, appendDrop(nil, db.host.ID(), rep.gen))
	tried := map[raft.ServerID]bool{db.host.ID(): true}
	next := db.leaderGuesses(r, rep)
	for hops := 0; hops < 3 && len(next) > 0; {
		p := next[0]
		next = next[1:]
		if tried[p.id] {
			continue // the same guess from two sources: not a hop
		}
		tried[p.id] = true
		hops++
		ans, err := db.host.Call(ctx, p.id, p.addr, req)
		switch {
		case err != nil || len(ans) == 0:
			continue
		case ans[0] == stRedirect:
			if to := decodeRedirect(ans[1:]); to.known() {
				next = append([]peer{to}, next...)
			}
			continue
		case ans[0] != stOK:
			continue // unsure (a change under way, another creation): next pass
		case len(ans) != 2:
			return false, "", false
		}
		return ans[1] != 0, p.id, true
	}
	return false, "", false
}

// leaderGuesses are the nodes that may lead group r, best first: the
// leader rep's raft knows of, the members that announce they lead r
// (gossip Meta.Leads), and the last redirect's.
func (db *DB) leaderGuesses(r int, rep *replica) []peer {
	var out []peer
	if p := leaderOf(rep); p.known() {
		out = append(out, p)
	}
	for _, m := range db.members() {
		if slices.Contains(m.Meta.Leads, r) {
			out = append(out, memberPeer(m))
		}
	}
	if hint, ok := db.leaderHint.Load(r); ok {
		if p, _ := hint.(peer); p.known() {
			out = append(out, p)
		}
	}
	return out
}

// dropOrphan drops rep, this node's replica of group r, unless the node is
// closing (Close has taken its replicas), rep is no longer that replica,
// leads, or was prepared lately. The checks are made under db.mu, which
// openReplica takes after reqPrepare noted the prepare, so a replica a
// leader was just told exists is never dropped. It reports whether rep
// was dropped.
func (db *DB) dropOrphan(r int, rep *replica) bool {
	db.mu.Lock()
	if db.closed.Load() || db.reps[r].Load() != rep || rep.group.IsLeader() || db.preparedLately(r) {
		db.mu.Unlock()
		return false
	}
	db.reps[r].CompareAndSwap(rep, nil)
	db.mu.Unlock()
	_ = rep.group.Shutdown() // answers entries in flight
	rep.batch.close()
	return true
}

// serveMembership answers, as group rep's leader, whether the server named
// in body (appendDrop: server id, the group's creation) is in the group's
// configuration: stOK then a member byte. The configuration is read, then
// a Barrier commits every entry before it in this leader's term, and it is
// read again: the same servers both times means the configuration
// answered is committed and this replica led when it was (raft's
// GetConfiguration gives no log index to compare instead). Otherwise
// stUnavailable or a redirect, and the asker asks again on a later pass.
func (db *DB) serveMembership(ctx context.Context, rep *replica, body []byte) []byte {
	id, gen, ok := parseDrop(body)
	switch {
	case !ok:
		return []byte{stInvalid}
	case gen != rep.gen:
		return append([]byte{stInvalid}, fmt.Sprintf("group %d here is its creation at layout epoch %d, not %d", rep.id, rep.gen, gen)...)
	}
	if !rep.group.IsLeader() {
		return redirectOrUnavailable(rep, raftgroup.ErrNotLeader)
	}
	before, err := rep.group.Configuration()
	if err != nil {
		return redirectOrUnavailable(rep, err)
	}
	if err := rep.group.Barrier(ctx); err != nil {
		return redirectOrUnavailable(rep, err)
	}
	after, err := rep.group.Configuration()
	if err != nil {
		return redirectOrUnavailable(rep, err)
	}
	if !slices.Equal(sortedServers(before), sortedServers(after)) {
		return append([]byte{stUnavailable}, "a configuration change is under way"...)
	}
	member := slices.ContainsFunc(after, func(s raft.Server) bool { return s.ID == id })
	return appendBool([]byte{stOK}, member)
}
