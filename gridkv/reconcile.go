package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/placement"
)

// reconcileLoop moves every group this node leads toward its placement
// target, at most one configuration change per group per pass, and drops
// replicas that were removed from their group: those raft shut down, and
// those that hear from no leader and are told they no longer belong
// (orphans.go). The changes are made by the step runner, up to
// maxParallelSteps groups at once (see reconcile).
func (db *DB) reconcileLoop() {
	t := time.NewTicker(db.cfg.Timing.ReconcileInterval)
	defer t.Stop()
	var lastLeads []int
	view := db.settledView()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
		}
		db.checkTLS()
		lastLeads = db.reconcile(db.stableMembers(view, time.Now()), lastLeads)
		db.checkOrphans() // replicas removed whose drop notice was lost (orphans.go)
		db.sweepIdle()
	}
}

// sweepIdle has each group this node leads whose earliest expiry has
// passed log a Sweep: a group removes expired keys as it applies an
// entry, so without one an idle group would keep them (unreadable, but
// held, and their EventExpire not sent) until its next write. The groups
// log theirs at once, within one ReconcileInterval.
func (db *DB) sweepIdle() {
	now := fsm.NowNanos()
	var wg sync.WaitGroup
	for _, rep := range db.replicaList() {
		if due := rep.fsm.NextExpiry(); due == 0 || due > now || !rep.group.IsLeader() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(db.stopCtx, db.cfg.Timing.ReconcileInterval)
			defer cancel()
			if _, err := rep.group.Apply(ctx, fsm.AppendSweep(nil)); err != nil {
				db.log.Debug("sweep of expired keys not logged", "group", rep.id, "err", err)
			}
		}()
	}
	wg.Wait()
}

// settledView is a view for stableMembers in which the members present
// now (the ones this node bootstrapped with, or joined) count as stable at
// once: treating them as new would shrink the target and remove replicas
// that are fine.
func (db *DB) settledView() map[string]*memberView {
	view := map[string]*memberView{}
	settled := time.Now().Add(-db.cfg.Timing.MemberDelay)
	for _, m := range db.members() {
		view[m.Meta.NodeID] = &memberView{m: m, firstSeen: settled, lastSeen: settled}
	}
	return view
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
	for _, m := range db.members() {
		if m.Meta.Leaving {
			delete(view, m.Meta.NodeID)
			continue
		}
		v := view[m.Meta.NodeID]
		if v == nil {
			v = &memberView{firstSeen: now}
			view[m.Meta.NodeID] = v
		}
		// A node that restarted (a new incarnation) keeps its place: the
		// target names it again at once, so its ranges replace the old
		// incarnation on it instead of moving elsewhere and back.
		v.m, v.lastSeen = m, now
	}
	var out []gossip.Member
	for id, v := range view {
		present := v.lastSeen.Equal(now)
		switch {
		case id == db.cfg.NodeID:
			out = append(out, v.m)
		case present && now.Sub(v.firstSeen) >= db.cfg.Timing.MemberDelay:
			out = append(out, v.m)
		case !present && now.Sub(v.lastSeen) < db.cfg.Timing.MemberDelay:
			out = append(out, v.m)
		case !present:
			delete(view, id)
		}
	}
	return out
}

// reconcile is one pass of the reconciler: it drops the replicas raft shut
// down, notes the groups this node leads (announcing them when they
// change), and hands the led groups that need a configuration change to
// the step runner (steprun.go), which makes them on goroutines of its own.
// The pass never waits for a step, so it keeps its cadence while a step
// waits on a node that does not answer; a group whose step is still in
// flight is left to a later pass.
func (db *DB) reconcile(members []gossip.Member, lastLeads []int) []int {
	ids, byID := indexMembers(members)
	plan := placement.Plan(db.groupCount(), ids, db.cfg.ReplicaCount)
	var leads []int
	var work []groupWork
	for r, rep := range db.replicaList() {
		if rep.group.Raft().State() == raft.Shutdown { // removed from the group
			db.dropReplica(r, rep)
			continue
		}
		if !rep.group.IsLeader() {
			continue
		}
		leads = append(leads, r)
		if rep.unloggedCreation() {
			continue // a recovered creation of group 0 yet to log itself: it stays this replica alone (logSelfRecord)
		}
		if w, ok := db.groupWork(r, rep, ids, byID, plan[r].Leader); ok {
			work = append(work, w)
		}
	}
	sort.Ints(leads)
	if !slices.Equal(leads, lastLeads) {
		db.meta.Lock()
		db.meta.leads = leads
		db.meta.Unlock()
		db.announce()
	}
	sort.Slice(work, func(i, j int) bool { return work[i].r < work[j].r })
	db.steps.startAll(work, db.runGroup)
	return leads
}

// groupWork decides what group r, led by rep, needs toward its target: the
// configuration changes to try (see nextSteps), or, with none, whether it
// should become sole. It reads the group's configuration and does no I/O;
// ok is false when the group needs nothing.
func (db *DB) groupWork(r int, rep *replica, ids []string, byID map[string]gossip.Member, planLeader string) (w groupWork, ok bool) {
	servers, err := rep.group.Configuration()
	if err != nil {
		return groupWork{}, false
	}
	in := confInput{self: db.host.ID(), current: servers, target: placedPeers(r, ids, byID, db.cfg.ReplicaCount)}
	if m, ok := byID[planLeader]; ok && planLeader != db.cfg.NodeID {
		in.preferred = memberPeer(m)
	}
	w = groupWork{r: r, rep: rep, servers: servers, steps: nextSteps(in)}
	if len(w.steps) == 0 {
		w.sole = len(servers) == 1 && servers[0].ID == db.host.ID() && !rep.sole.Load()
		return w, w.sole
	}
	return w, true
}

// indexMembers lists members' node ids, in their order, and maps each to
// its gossip record: what placedPeers takes.
func indexMembers(members []gossip.Member) (ids []string, byID map[string]gossip.Member) {
	ids = make([]string, 0, len(members))
	byID = make(map[string]gossip.Member, len(members))
	for _, m := range members {
		ids = append(ids, m.Meta.NodeID)
		byID[m.Meta.NodeID] = m
	}
	return ids, byID
}

// placedPeers is the replicas placement gives group g over the members
// ids (byID: their gossip records, indexMembers), at the incarnations and
// addresses gossip announces: the servers a group is created with, and
// the target the reconciler moves it toward.
func placedPeers(g int, ids []string, byID map[string]gossip.Member, replicas int) []peer {
	var out []peer
	for _, id := range placement.Replicas(g, ids, replicas) {
		out = append(out, memberPeer(byID[id]))
	}
	return out
}

// runGroup makes at most one configuration change of w's group: the first
// of its steps that succeeds. A step that fails is logged and the next one
// is tried, up to maxStepTries, each within Timing.StepTimeout, so one
// failing step (an unreachable node, say) does not hold up the group's
// others. It runs on a goroutine of the step runner, never two at once for
// one group; Close cancels the step in flight.
func (db *DB) runGroup(w groupWork) {
	// The steps were worked out from w.servers, while a step of the group
	// may still have been in flight: if it has changed the configuration
	// since, they may be stale (promote a server it has just removed, and
	// raft would add it back as a voter with no replica). The next pass
	// works them out again.
	if w.stale() {
		return
	}
	if w.sole {
		ctx, cancel := context.WithTimeout(db.stopCtx, db.cfg.Timing.StepTimeout)
		db.becomeSole(ctx, w.rep)
		cancel()
		return
	}
	tries := 0
	for _, st := range w.steps {
		if tries == maxStepTries || db.stopCtx.Err() != nil {
			return
		}
		tries++
		if st.kind != stepBalance {
			w.rep.sole.Store(false) // before any change: reads take the leader path from now on
		}
		ctx, cancel := context.WithTimeout(db.stopCtx, db.cfg.Timing.StepTimeout)
		err := db.makeStep(ctx, w.r, w.rep, st)
		timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
		cancel()
		db.steps.noteTarget(st.to.id, timedOut)
		if err == nil {
			db.stepLog.ok(w.r, st)
			return
		}
		db.stepLog.failed(db.log, db.isClosed(), w.r, st, err)
	}
}

// maxStepTries bounds the tries of one configuration change, each within
// Timing.StepTimeout.
const maxStepTries = 3

// makeStep makes one configuration change of range r, led by rep.
func (db *DB) makeStep(ctx context.Context, r int, rep *replica, st confStep) error {
	switch st.kind {
	case stepAdd:
		ans, err := db.host.Call(ctx, st.to.id, st.to.addr, encodeRequest(reqPrepare, r, binary.AppendUvarint(nil, rep.gen)))
		if err == nil {
			err = answerErr(ans) // a closing node answers stClosed
		}
		if err != nil {
			return fmt.Errorf("prepare replica: %w", err)
		}
		// Added as a non-voter; a later pass promotes it once raft is
		// catching it up.
		return rep.group.AddNonvoter(ctx, st.to.id, st.to.addr)
	case stepPromote:
		return rep.group.AddVoter(ctx, st.to.id, st.to.addr)
	case stepRemoveStale, stepRemove:
		if err := rep.group.RemoveServer(ctx, st.to.id); err != nil {
			return err
		}
		// Tell the removed replica (best effort; a dead node has nothing
		// to drop, and a new incarnation at its address refuses it). If
		// the notice is lost, the replica finds out itself (orphans.go).
		if db.dropLost(r, st.to.id) {
			return nil
		}
		_, _ = db.host.Call(ctx, st.to.id, st.to.addr, encodeRequest(reqDrop, r, appendDrop(nil, st.to.id, rep.gen)))
		return nil
	case stepStepDown, stepBalance:
		return rep.group.TransferLeadership(ctx, st.to.id, st.to.addr)
	}
	return fmt.Errorf("unknown step %v", st.kind)
}

// stepLog rate-limits the reconciler's warnings: the first failure of a
// (range, step kind) is logged at once, later ones at most every
// stepLogEvery with how many were not logged, and a success after
// failures says so.
type stepLog struct {
	mu struct {
		sync.Mutex
		failing map[stepLogKey]*stepFailures
	}
}

type stepLogKey struct {
	r    int
	kind stepKind
}

type stepFailures struct {
	logged     time.Time
	suppressed int
}

// stepLogEvery is a log rate, not a timing of the cluster's: not in Timing.
const stepLogEvery = 10 * time.Second

func (l *stepLog) failed(log *slog.Logger, closing bool, r int, st confStep, err error) {
	l.mu.Lock()
	if l.mu.failing == nil {
		l.mu.failing = map[stepLogKey]*stepFailures{}
	}
	k := stepLogKey{r, st.kind}
	f := l.mu.failing[k]
	if f == nil {
		f = &stepFailures{}
		l.mu.failing[k] = f
	}
	now := time.Now()
	if !f.logged.IsZero() && now.Sub(f.logged) < stepLogEvery {
		f.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := f.suppressed
	f.logged, f.suppressed = now, 0
	l.mu.Unlock()
	lv := slog.LevelWarn
	if closing {
		lv = slog.LevelDebug // the node is closing: its steps fail by design
	}
	log.Log(context.Background(), lv, "reconcile step failed", "group", r, "step", st.kind.String(), "server", string(st.to.id),
		"err", oneLine(err.Error()), "failures_not_logged", suppressed)
}

func (l *stepLog) ok(r int, st confStep) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.mu.failing, stepLogKey{r, st.kind})
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
