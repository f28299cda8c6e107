package gridkv

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/fsm/fsmpb"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/raftgroup"
)

// The group count follows membership (docs/replica-groups.md, "How many
// groups"). One decider: the leader of group 0, whose state machine holds
// the cluster's layout (fsm.Layout). With N stable members it wants
// GroupsPerNode x N groups. To grow it logs, in group 0, CreateGroup(g,
// servers) for each new group first, then asks each of those servers'
// nodes to bootstrap g (reqCreateGroup: a node bootstraps g only with the
// set logged in group 0, so two coordinators can never bootstrap one group
// with two sets), and once every new group has a leader it logs SetLayout,
// placing ranges over the new count. Nodes learn the layout from their
// replica of group 0, or, when gossip announces a newer layout (group 0's
// creation first, then epoch: layoutNewer), from that member or group 0's
// leader (reqLayout). Then each group leader moves the ranges it owns
// whose placement names a new group there (rebalance), a few at a time.
//
// Not built: shrinking. A cluster whose members leave for good keeps its
// groups (the reconciler moves their replicas onto the members left).

// maxMovesPerNode bounds the ranges a node's groups hand off at once
// (Frozen there), so a join does not freeze many ranges at a time.
const maxMovesPerNode = 4

// layoutStepKind is what the layout's coordinator does next.
type layoutStepKind int

const (
	layoutDone     layoutStepKind = iota
	layoutInit                    // log the first SetLayout: the formation's groups
	layoutCreate                  // log CreateGroup for the next group
	layoutStart                   // have the created groups elected, then place ranges over them
	layoutRecreate                // create a group again that never started
)

// layoutStep is the coordinator's next step: its kind and the group count
// (layoutInit, layoutStart) or group (layoutCreate) it is about.
type layoutStep struct {
	kind layoutStepKind
	n    int
}

// nextLayoutStep decides the coordinator's next step from the logged
// layout cur, the cluster's formation group count and the group count
// wanted for the stable members now. It never shrinks.
func nextLayoutStep(cur fsm.Layout, formation, want int) layoutStep {
	switch {
	case cur.Epoch == 0:
		return layoutStep{layoutInit, formation}
	case cur.Exists() < want:
		return layoutStep{layoutCreate, cur.Exists()}
	case cur.Groups < cur.Exists():
		return layoutStep{layoutStart, cur.Exists()}
	}
	return layoutStep{kind: layoutDone}
}

// layoutLoop runs, on every node, the layout's follower (learn newer
// layouts) and, on the leader of group 0, its coordinator.
func (db *DB) layoutLoop() {
	t := time.NewTicker(db.cfg.Timing.ReconcileInterval)
	defer t.Stop()
	view := db.settledView()
	// Since when each created group (by Raft group id) has had no leader,
	// as the coordinator on this node saw it.
	leaderless := map[raftgroup.GroupID]time.Time{}
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
		}
		members := db.stableMembers(view, time.Now())
		db.followLayout()
		db.coordinateLayout(members, leaderless)
	}
}

// recreateAfter is how long a created group may go without a leader while
// one of its servers is not a member before the coordinator creates it
// again.
func (c *Config) recreateAfter() time.Duration {
	return 2*c.Timing.MemberDelay + 10*c.Timing.ReconcileInterval
}

// coordinateLayout takes the coordinator's steps while this node leads
// group 0, until the layout is what the members want or a step fails
// (the next pass tries again).
func (db *DB) coordinateLayout(members []gossip.Member, leaderless map[raftgroup.GroupID]time.Time) {
	rep := db.replica(0)
	if rep == nil || !rep.group.IsLeader() || db.isClosed() {
		clear(leaderless) // times seen as leader no longer hold: start over if leader again
		return
	}
	formation := db.lay.Load().genesisGroups
	want := db.cfg.targetGroups(len(members))
	if db.fixedGroups {
		want = formation
	}
	if rep.unloggedCreation() {
		// A new creation of group 0, yet to log itself: RecoverGroup's
		// caller may have given up (or this node restarted the call).
		ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.StepTimeout)
		defer cancel()
		if err := db.logSelfRecord(ctx, rep); err != nil {
			db.log.Warn("recovered group 0 could not log itself", "gen", rep.gen, "err", oneLine(err.Error()))
		}
		return
	}
	// Nothing to do as far as this replica has applied: the usual case,
	// checked without a leadership round (this runs every
	// ReconcileInterval). If entries of earlier leaders are still to
	// apply here, a later pass sees them.
	if cur := rep.fsm.Layout(); cur.Epoch > 0 && nextLayoutStep(cur, formation, want).kind == layoutDone {
		db.adoptLayout(cur)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.StepTimeout)
	defer cancel()
	// Decide on a layout that holds everything earlier leaders logged.
	if err := db.ensureGenesis(ctx, rep); err != nil {
		return
	}
	idx, err := rep.group.ReadIndex(ctx)
	if err == nil {
		err = rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx))
	}
	if err != nil {
		return
	}
	for range maxGroups {
		cur := rep.fsm.Layout()
		db.adoptLayout(cur)
		st := nextLayoutStep(cur, formation, want)
		var cmd *fsmpb.Command
		switch st.kind {
		case layoutDone:
			return
		case layoutInit:
			cmd = fsm.LayoutOp(0, st.n, st.n)
		case layoutCreate:
			cmd = fsm.CreateGroupOp(cur.Epoch, st.n, groupServers(st.n, members, db.cfg.ReplicaCount))
		case layoutStart:
			started, again := db.startGroups(ctx, cur, members, leaderless)
			switch {
			case again >= 0:
				st = layoutStep{layoutRecreate, again}
				cmd = fsm.CreateGroupOp(cur.Epoch, again, groupServers(again, members, db.cfg.ReplicaCount))
			case !started:
				return
			default:
				cmd = fsm.LayoutOp(cur.Epoch, cur.Genesis, st.n)
			}
		}
		if err := db.applyLayoutCommand(ctx, rep, cmd); err != nil {
			db.log.Warn("layout step failed", "step", st.kind, "n", st.n, "err", oneLine(err.Error()))
			return
		}
		switch st.kind {
		case layoutCreate:
			db.log.Info("replica group created", "group", st.n, "members", len(members))
		case layoutRecreate:
			db.log.Info("replica group created again: it never elected a leader, and one of its servers is gone", "group", st.n, "members", len(members))
		case layoutStart:
			db.log.Info("ranges placed over more replica groups", "from", cur.Groups, "to", st.n)
		}
	}
}

// applyLayoutCommand logs a layout command in group 0, which rep leads,
// and adopts the layout after it.
func (db *DB) applyLayoutCommand(ctx context.Context, rep *replica, cmd *fsmpb.Command) error {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return err
	}
	resp, err := rep.group.Apply(ctx, data)
	if err != nil {
		return err
	}
	if res, ok := resp.(*fsm.Result); !ok {
		return fmt.Errorf("layout command answered %T", resp)
	} else if res.Err != nil {
		return res.Err
	}
	db.adoptLayout(rep.fsm.Layout())
	return nil
}

// groupServers is the server set of a group created now: its placement
// over members, each at the incarnation and address gossip announces.
func groupServers(g int, members []gossip.Member, replicas int) []fsm.Server {
	ids, byID := indexMembers(members)
	var out []fsm.Server
	for _, p := range placedPeers(g, ids, byID, replicas) {
		out = append(out, fsm.Server{ID: string(p.id), Address: p.addr})
	}
	return out
}

// startGroups asks the servers of every group created but not yet placed
// over (cur.Groups..cur.Exists()-1) to bootstrap it. It reports whether
// each of those groups has a leader now, and a group to create again (-1:
// none): one that has had no leader for recreateAfter while one of its
// servers is not among members, live. Such a server crashed or left; a
// crashed incarnation never comes back. The group created again is a Raft
// group of its own (groupID), so replicas of the first one that did start
// can never join it; they are dropped once their nodes learn the layout.
func (db *DB) startGroups(ctx context.Context, cur fsm.Layout, members []gossip.Member, leaderless map[raftgroup.GroupID]time.Time) (started bool, again int) {
	live := db.liveServers(true)
	stable := map[raft.ServerID]bool{}
	for _, m := range members {
		if id := raftgroup.ServerID(m.Meta.NodeID, m.Meta.Incarnation); live[id] {
			stable[id] = true
		}
	}
	// Bootstrap and probe the groups in parallel: a group just bootstrapped
	// answers from a leader only after an election.
	type probe struct {
		missing, led bool
	}
	probes := make([]probe, cur.Exists()-cur.Groups)
	sem := make(chan struct{}, maxParallelStarts)
	var wg sync.WaitGroup
	for g := cur.Groups; g < cur.Exists(); g++ {
		created, _ := cur.Group(g)
		p := &probes[g-cur.Groups]
		for _, s := range created.Servers {
			p.missing = p.missing || !stable[raft.ServerID(s.ID)]
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			p.led = db.startGroup(ctx, g, created)
		}()
	}
	wg.Wait()
	started, again = true, -1
	now := time.Now()
	for i, p := range probes {
		g := cur.Groups + i
		gid := groupID(g, cur.Gen(g))
		if p.led {
			delete(leaderless, gid)
			continue
		}
		started = false
		since, ok := leaderless[gid]
		if !ok {
			leaderless[gid] = now
		} else if p.missing && again < 0 && now.Sub(since) >= db.cfg.recreateAfter() {
			delete(leaderless, gid)
			again = g
		}
	}
	return started, again
}

// maxParallelStarts bounds the groups startGroups bootstraps and probes
// at once.
const maxParallelStarts = 16

// startGroup asks each server of group g, created as c, to bootstrap it,
// and reports whether g answers from a leader.
func (db *DB) startGroup(ctx context.Context, g int, c fsm.Created) bool {
	body := binary.AppendUvarint(binary.AppendUvarint(nil, uint64(g)), c.Gen)
	for _, s := range c.Servers {
		cctx, cancel := context.WithTimeout(ctx, db.cfg.Timing.RequestTimeout/2)
		ans, err := db.host.Call(cctx, raft.ServerID(s.ID), s.Address, encodeRequest(reqCreateGroup, 0, body))
		cancel()
		if err == nil {
			err = answerErr(ans)
		}
		if err != nil {
			db.log.Debug("create group: a server did not bootstrap yet", "group", g, "server", s.ID, "err", oneLine(err.Error()))
		}
	}
	// Asked with the creation it must be: a replica of an earlier
	// creation of g refuses (see handle).
	cctx, cancel := context.WithTimeout(ctx, db.cfg.Timing.RequestTimeout/2)
	defer cancel()
	_, err := db.route(cctx, g, -1, reqStatus, binary.AppendUvarint(nil, c.Gen), false)
	return err == nil
}

// serveCreateGroup bootstraps this node's replica of the group the body
// names (uvarint), with exactly the server set group 0 logged for it:
// stOK once the replica exists.
func (db *DB) serveCreateGroup(ctx context.Context, body []byte) []byte {
	g64, n := binary.Uvarint(body)
	if n <= 0 || g64 >= maxGroups {
		return append([]byte{stInvalid}, "bad group"...)
	}
	g, gen := int(g64), uint64(0)
	if len(body) > n {
		var k int
		if gen, k = binary.Uvarint(body[n:]); k != len(body)-n {
			return append([]byte{stInvalid}, "bad group"...)
		}
	}
	if rep := db.replica(g); rep != nil && rep.gen == gen {
		return []byte{stOK}
	}
	fl, err := db.fetchLayout(ctx, g+1, gen)
	if err != nil {
		return append([]byte{stUnavailable}, err.Error()...)
	}
	created, ok := fl.Group(g)
	switch {
	case !ok:
		return append([]byte{stUnavailable}, fmt.Sprintf("group %d is not logged as created (layout epoch %d)", g, fl.Epoch)...)
	case created.Gen != gen:
		return append([]byte{stInvalid}, fmt.Sprintf("group %d was created at layout epoch %d, not %d", g, created.Gen, gen)...)
	case fl.Groups > g:
		// Ranges are placed over it already: it was bootstrapped, and this
		// node was since removed from it (or never started it). A new
		// replica here would be a second group with the same number.
		return append([]byte{stInvalid}, fmt.Sprintf("group %d was started already", g)...)
	}
	var rs []raft.Server
	mine := false
	for _, s := range created.Servers {
		mine = mine || raft.ServerID(s.ID) == db.host.ID()
		rs = append(rs, raft.Server{ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
	}
	if !mine {
		return append([]byte{stInvalid}, fmt.Sprintf("group %d was not created with server %s", g, db.host.ID())...)
	}
	db.adoptLayout(fl)
	rep, err := db.openReplica(g, gen, rs)
	if err != nil {
		return append([]byte{stUnavailable}, err.Error()...)
	}
	rep.sole.Store(len(rs) == 1)
	db.kickHandoffs()
	return []byte{stOK}
}

// fetchLayout is the layout logged in group 0: this node's replica's if it
// has one in which needGroups groups exist at needEpoch or later, else
// group 0's leader's.
func (db *DB) fetchLayout(ctx context.Context, needGroups int, needEpoch uint64) (fsm.Layout, error) {
	if rep := db.currentReplica(0); rep != nil {
		if fl := rep.fsm.Layout(); fl.Exists() >= needGroups && fl.Epoch >= needEpoch && fl.Epoch > 0 {
			return fl, nil
		}
	}
	ans, err := db.route(ctx, 0, -1, reqLayout, nil, false)
	if err != nil {
		return fsm.Layout{}, err
	}
	return fsm.DecodeLayout(ans)
}

// followLayout adopts a newer layout: its replica of group 0's, or group
// 0's leader's when a member announces a newer one than this node knows
// (layoutNewer: of a newer creation of group 0, or a higher epoch of the
// same creation).
func (db *DB) followLayout() {
	if rep := db.replica(0); rep != nil {
		db.adoptLayout(rep.fsm.Layout())
	}
	// Replicas of earlier creations of a group: made before this node
	// learned the newer one, or after (asked by a leader of that creation).
	db.dropStaleCreations(db.lay.Load().logged)
	l := db.lay.Load()
	for _, m := range db.members() {
		if l.supersededBy(m.Meta.LayoutCreation, m.Meta.LayoutEpoch) && m.Meta.GenesisGroups == l.genesisGroups {
			ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
			// Asked of that member first: when this node's replica of group
			// 0 is of a creation superseded by a recovery (this node was
			// cut off), the leader it knows is of that creation too.
			fl, err := db.memberLayout(ctx, m)
			if err != nil || layoutNewer(m.Meta.LayoutCreation, m.Meta.LayoutEpoch, fl.Gen(0), fl.Epoch) {
				fl, err = db.fetchLayout(ctx, 0, m.Meta.LayoutEpoch)
			}
			cancel()
			if err == nil {
				db.adoptLayout(fl)
			}
			return
		}
	}
}

// adoptLayout makes fl this node's layout if it is newer than the one it
// has, and announces it. Replicas here of creations it supersedes are
// dropped (or recovered from) at once, not at the next layout pass: they
// serve no request of this node meanwhile either (currentReplica).
func (db *DB) adoptLayout(fl fsm.Layout) {
	db.layoutMu.Lock()
	cur := db.lay.Load()
	next, ok := cur.layoutOf(fl)
	if ok {
		db.lay.Store(next)
	}
	db.layoutMu.Unlock()
	if !ok {
		return
	}
	if next.groups != cur.groups {
		db.log.Debug("layout learned", "epoch", next.epoch, "groups", next.groups, "exist", next.exists)
	}
	db.announce()
	db.kickHandoffs()
	db.dropStaleCreations(next.logged)
}

// memberLayout is the newest layout member m knows (serveLayout).
func (db *DB) memberLayout(ctx context.Context, m gossip.Member) (fsm.Layout, error) {
	p := memberPeer(m)
	ans, err := db.host.Call(ctx, p.id, p.addr, encodeRequest(reqLayout, 0, nil))
	if err == nil {
		err = answerErr(ans)
	}
	if err != nil {
		return fsm.Layout{}, err
	}
	return fsm.DecodeLayout(ans[1:])
}

// dropStaleCreations drops this node's replicas of groups that fl says
// were created again since (their Raft group is not the group any more),
// but one this node is to start a recovered creation from (RecoverGroup):
// it starts that creation first.
func (db *DB) dropStaleCreations(fl fsm.Layout) {
	for g := range fl.Exists() {
		rep := db.replica(g)
		if rep == nil || rep.gen >= fl.Gen(g) {
			continue
		}
		if s, ok := fl.RecoveredAt(g, fl.Gen(g)); ok && raft.ServerID(s.ID) == db.host.ID() {
			if _, err := db.startRecovered(g, rep, fl.Gen(g)); err != nil {
				db.log.Warn("recovered replica group not started; the old replica is kept", "group", g, "gen", fl.Gen(g), "err", oneLine(err.Error()))
			}
			continue
		}
		db.log.Info("replica of a group created again dropped", "group", g, "gen", rep.gen, "new_gen", fl.Gen(g))
		db.dropReplica(g, rep)
	}
}

// rebalance starts moving, from the groups this node leads (led), ranges
// whose placement names a group created after the cluster's formation
// other than the one owning them, while fewer than maxMovesPerNode ranges
// are Frozen in those groups. Ranges whose placement names a Genesis group
// are left where they are: MoveRange (a test power) may have put them
// elsewhere on purpose.
func (db *DB) rebalance(led []*replica) {
	l := db.lay.Load()
	if l.groups == l.genesisGroups {
		return
	}
	moving := 0
	for _, rep := range led {
		moving += len(rep.fsm.RangesIn(fsm.Frozen))
	}
	for _, rep := range led {
		for _, r := range rep.fsm.RangesIn(fsm.Owned) {
			if moving >= maxMovesPerNode || db.isClosed() {
				return
			}
			to := l.target(r)
			if to == rep.id || to < l.genesisGroups || !rep.group.IsLeader() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
			ans := db.startMove(ctx, rep, r, to)
			cancel()
			if len(ans) > 0 && ans[0] == stOK {
				moving++
			}
		}
	}
}

// unknownGroup answers a request for group r, which this node does not
// know of: a group created since it last learned the layout (then it
// names no leader, and the asker tries another node), or a bad number.
func (db *DB) unknownGroup(r int) []byte {
	if r < maxGroups {
		return redirect(peer{})
	}
	return append([]byte{stInvalid}, fmt.Sprintf("group %d asked of node %s, which knows %d groups", r, db.cfg.NodeID, db.groupCount())...)
}

// serveLayout answers reqLayout: the newest layout this node knows
// (layoutNewer), its replica of group 0's or the one it adopted. A
// replica of a superseded creation of group 0 does not answer for itself:
// its layout is older than the one that superseded it by that order.
func (db *DB) serveLayout() []byte {
	fl := db.lay.Load().logged
	if rep := db.currentReplica(0); rep != nil {
		if own := rep.fsm.Layout(); layoutNewer(own.Gen(0), own.Epoch, fl.Gen(0), fl.Epoch) {
			fl = own
		}
	}
	if fl.Epoch == 0 {
		return db.hintRedirect(0)
	}
	return fsm.AppendLayout([]byte{stOK}, fl)
}
