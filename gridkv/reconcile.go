package gridkv

import (
	"context"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

// reconcileLoop moves every range this node leads toward its placement
// target, one configuration change per range per pass, and drops replicas
// that were removed from their group.
func (db *DB) reconcileLoop() {
	t := time.NewTicker(db.cfg.ReconcileInterval)
	defer t.Stop()
	var lastLeads []int
	// The members present when the node opens (the ones it bootstrapped
	// with, or joined) count as stable at once: treating them as new would
	// shrink the target and remove replicas that are fine.
	view := map[string]*memberView{}
	settled := time.Now().Add(-db.cfg.MemberDelay)
	for _, m := range db.gsp.Members() {
		view[m.Meta.NodeID] = &memberView{m: m, firstSeen: settled, lastSeen: settled}
	}
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
		}
		lastLeads = db.reconcile(db.stableMembers(view, time.Now()), lastLeads)
	}
}

// memberView is what the reconciler remembers of a member.
type memberView struct {
	m                   gossip.Member
	firstSeen, lastSeen time.Time
}

// stableMembers is the membership placement uses: members up for at least
// MemberDelay, plus members gone for less than that (and this node). A
// member that announced it is leaving (DB.Close) is dropped at once: it is
// taking its replicas out, and must not be given them back.
func (db *DB) stableMembers(view map[string]*memberView, now time.Time) []gossip.Member {
	for _, m := range db.gsp.Members() {
		if m.Meta.Leaving {
			delete(view, m.Meta.NodeID)
			continue
		}
		v := view[m.Meta.NodeID]
		if v == nil || v.m.Meta.Incarnation != m.Meta.Incarnation {
			v = &memberView{firstSeen: now}
			view[m.Meta.NodeID] = v
		}
		v.m, v.lastSeen = m, now
	}
	var out []gossip.Member
	for id, v := range view {
		present := v.lastSeen.Equal(now)
		switch {
		case id == db.cfg.NodeID:
			out = append(out, v.m)
		case present && now.Sub(v.firstSeen) >= db.cfg.MemberDelay:
			out = append(out, v.m)
		case !present && now.Sub(v.lastSeen) < db.cfg.MemberDelay:
			out = append(out, v.m)
		case !present:
			delete(view, id)
		}
	}
	return out
}

func (db *DB) reconcile(members []gossip.Member, lastLeads []int) []int {
	byID := make(map[string]gossip.Member, len(members))
	ids := make([]string, 0, len(members))
	for _, m := range members {
		byID[m.Meta.NodeID] = m
		ids = append(ids, m.Meta.NodeID)
	}
	plan := placement.Plan(db.cfg.Groups, ids, db.cfg.ReplicaCount)
	var leads []int
	for r, rep := range db.replicaList() {
		if rep.group.Raft().State() == raft.Shutdown { // removed from the group
			db.dropReplica(r, rep)
			continue
		}
		if !rep.group.IsLeader() {
			continue
		}
		leads = append(leads, r)
		db.reconcileRange(r, rep, ids, byID, plan[r].Leader)
	}
	sort.Ints(leads)
	if !slices.Equal(leads, lastLeads) {
		self := db.self()
		self.Meta.Leads = leads
		if err := db.gsp.SetMeta(self.Meta); err != nil {
			db.log.Debug("gossip metadata update failed", "err", err)
		}
	}
	return leads
}

// reconcileRange makes at most one configuration change toward the target:
// first add a missing replica (as a non-voter, promoted on a later pass once
// raft has started catching it up), then remove one that should go.
//
// Once the replicas match, leadership moves to the plan's leader for the
// range, so that leaderships spread evenly over the members.
func (db *DB) reconcileRange(r int, rep *replica, ids []string, byID map[string]gossip.Member, planLeader string) {
	servers, err := rep.group.Configuration()
	if err != nil {
		return
	}
	current := make(map[raft.ServerID]raft.Server, len(servers))
	for _, s := range servers {
		current[s.ID] = s
	}
	target := map[raft.ServerID]gossip.Member{}
	for _, id := range placement.Replicas(r, ids, db.cfg.ReplicaCount) {
		m := byID[id]
		target[raftgroup.ServerID(id, m.Meta.Incarnation)] = m
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for sid, m := range target {
		s, ok := current[sid]
		if ok && s.Suffrage == raft.Voter {
			continue
		}
		rep.sole.Store(false) // before any change: reads take the leader path from now on
		if !ok {
			ans, err := db.host.Call(ctx, m.Meta.RPCAddr, encodeRequest(reqPrepare, r, nil))
			if err == nil {
				err = answerErr(ans) // a closing node answers stClosed
			}
			if err != nil {
				db.log.Debug("prepare replica failed", "range", r, "node", m.Meta.NodeID, "err", err)
				return
			}
			if err := rep.group.Raft().AddNonvoter(sid, raft.ServerAddress(m.Meta.RPCAddr), 0, 5*time.Second).Error(); err != nil {
				db.log.Debug("add replica failed", "range", r, "node", m.Meta.NodeID, "err", err)
			}
			return
		}
		if err := rep.group.AddVoter(ctx, sid, m.Meta.RPCAddr); err != nil {
			db.log.Debug("promote replica failed", "range", r, "node", m.Meta.NodeID, "err", err)
		}
		return
	}
	for sid := range current {
		if _, keep := target[sid]; keep {
			continue
		}
		if sid == db.host.ID() {
			// This leader should not hold the range: hand leadership to a
			// target voter; its reconciler removes us.
			for tsid, m := range target {
				if s, ok := current[tsid]; ok && s.Suffrage == raft.Voter {
					_ = rep.group.TransferLeadership(ctx, tsid, m.Meta.RPCAddr)
					return
				}
			}
			continue
		}
		if err := rep.group.RemoveServer(ctx, sid); err != nil {
			db.log.Debug("remove replica failed", "range", r, "server", sid, "err", err)
			return
		}
		// Tell the removed replica (best effort; a dead node has nothing to drop).
		addr := string(current[sid].Address)
		_, _ = db.host.Call(ctx, addr, encodeRequest(reqDrop, r, []byte(sid)))
		return
	}
	if len(servers) == 1 && servers[0].ID == db.host.ID() {
		if !rep.sole.Load() {
			db.becomeSole(ctx, rep)
		}
		return
	}
	if planLeader == "" || planLeader == db.cfg.NodeID {
		return
	}
	m := byID[planLeader]
	sid := raftgroup.ServerID(planLeader, m.Meta.Incarnation)
	if s, ok := current[sid]; ok && s.Suffrage == raft.Voter {
		if err := rep.group.TransferLeadership(ctx, sid, m.Meta.RPCAddr); err != nil {
			db.log.Debug("leadership transfer failed", "range", r, "to", planLeader, "err", err)
		}
	}
}

// becomeSole sets rep.sole once this leader is its range's only server (the
// others left, see DB.Close) and its state machine has applied everything
// committed before, under earlier leaders too. From then on no other node
// can be elected, and only this node's reconciler changes the
// configuration, clearing sole before any change.
func (db *DB) becomeSole(ctx context.Context, rep *replica) {
	idx, err := rep.group.ReadIndex(ctx)
	if err != nil {
		return
	}
	if err := rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx)); err != nil {
		return
	}
	servers, err := rep.group.Configuration()
	if err == nil && len(servers) == 1 && servers[0].ID == db.host.ID() && rep.group.IsLeader() {
		rep.sole.Store(true)
	}
}

// dropReplica forgets a replica that raft shut down after its removal.
func (db *DB) dropReplica(r int, rep *replica) {
	db.mu.Lock()
	db.reps[r].CompareAndSwap(rep, nil)
	db.mu.Unlock()
	_ = rep.group.Shutdown() // answers entries in flight
	rep.batch.close()
}
