package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/raftgroup"
)

// RecoverOption adjusts RecoverGroup.
type RecoverOption func(*recoverOptions)

type recoverOptions struct{ force bool }

// ForceRecover has RecoverGroup go ahead although the group may still
// have a quorum: gossip counts a majority of its voters alive, or this
// replica heard from a leader within HeartbeatTimeout (the leader lease),
// or leads; although this replica is not a voter of its configuration;
// and, for group 0, although a live member announces a newer layout. Use
// it when the lost nodes are known to be gone for good but gossip has not
// caught up, or when they are cut off and will be stopped (not merely
// reconnected) before the partition heals. Forcing the
// recovery of a group whose majority is in fact alive and reachable by
// clients runs two histories of it side by side until that majority's
// nodes learn of the recovery (once they can reach a node that knows it,
// within a few ReconcileIntervals): every write the old creation takes
// meanwhile is lost, and reads it answers miss the new creation's writes.
// Only askers that have not learned of the recovery either are served
// so (on those nodes, or routed through them): a request names the
// creation its node knows, and a replica of an older one serves none.
// An unforced recovery during a partition that cuts gossip too runs two
// histories the same way (the checks see the other side dead). See
// RecoverGroup.
func ForceRecover() RecoverOption { return func(o *recoverOptions) { o.force = true } }

// RecoverGroup brings back replica group group after a majority of its
// replicas were lost for good (Raft logs are in memory: a crashed node's
// replicas are gone, and it comes back as a new, empty incarnation). Run it
// on the node whose replica is to be kept. It cannot tell a crashed node
// from one cut off by a partition that gossip cannot cross either: make
// sure the lost nodes are down (stop them) first; see ForceRecover for
// what happens when they come back.
//
// The group is created again: a new creation of the group (its Raft group
// is a new one, as for a group created again in grow.go) is logged in the
// cluster's layout (group 0) with this node as its only server, and this
// node starts it from its replica of the old creation: the replica's state
// machine, a snapshot of it, and the log entries it stores after that
// snapshot (GroupStatus.LastIndex), its configuration forced down to this
// replica alone (hashicorp/raft's RecoverCluster, over copies: the old
// replica is left untouched until the new creation has started, and stays
// as it was if that fails; then RecoverGroup may be run again). The old
// creation is then superseded: its replica here is shut down, the other
// nodes drop theirs once they learn the layout, raft traffic of the old
// creation reaches no replica of the new one, and no request of a node
// that knows the new creation is served by a replica of the old one
// (requests name the creation they mean). The new creation elects
// this replica, whose lease is its own (a lease read waits for a barrier
// of the new term), and the reconciler adds replicas on the other live
// members up to ReplicaCount, as it does for any group short of replicas.
// The new creation is built outside the node's replica lock (a snapshot
// and a copy of the state, RecoverCluster): requests for other groups go
// on meanwhile; a second recovery of the same group on this node waits
// for the first one to be done, then finds it done. Requests of this
// node for the group are not served by the old replica from the moment
// this node knows the new creation (it serves none of its node's
// requests: they wait for the new one). RecoverGroup returns once this
// replica leads the new creation, or when ctx ends (ErrTimeout; the
// recovery has been logged by then, unless the error says otherwise, and
// completes without the caller: for group 0, the layout's coordinator on
// this node logs the new creation if the caller did not get to; for the
// others, the layout loop starts a logged creation here. RecoverGroup
// again is safe).
//
// Group 0 holds the layout itself, so when it lost its majority there is no
// other log to record its new creation in: recover it first (the other
// groups' recoveries are logged in it); its new creation logs itself, as
// the first entry of its new creation's log, at the epoch the layout it
// starts with reaches (the replica's applied layout and every layout
// command its log holds after it, committed or not: all of them apply).
// Until that entry is logged the new creation stays this replica alone
// (the reconciler adds no replica to it). Layouts are ordered by group 0's
// creation first, then epoch: a node that was only cut off and still holds
// an old replica of group 0 adopts the recovered layout from a member that
// announces it, whatever epoch its own side reached, and then drops its
// old replicas; the recovered side never adopts the superseded side's
// layout. Groups the superseded side created while cut off are not in the
// recovered layout: their replicas on those nodes are not dropped by this
// (stop such nodes before the partition heals: a restart discards their
// replicas). Without ForceRecover, group 0 is not recovered from a replica
// whose layout is older than one a live member (or this node) announces:
// the groups created since would be lost (ErrInvalid; recover from the
// member that has it).
//
// Which writes are lost: every write acknowledged by the group whose log
// entry this replica had not received when the others were lost. A leader
// acknowledges a write once a majority stores it, so a write acknowledged
// while this replica lagged or was cut off may have been stored only by
// the replicas that are gone: it is lost, and no read after the recovery
// sees it. Every write this replica had applied, or stored in its log, is
// kept; one it stored that never committed (its caller got ErrTimeout,
// outcome unknown) is applied. Writes the old creation's other replicas
// take after the recovery (only when they were merely cut off: forced,
// or unforced during a partition that gossip could not cross either) are
// lost too.
//
// Versions after a recovery that lost writes: versions are log indexes,
// and the new creation goes on from this replica's last index, so it
// stamps again the versions the lost writes had (and, after a forced
// recovery, those of writes the old creation takes meanwhile). A version
// a caller got from a lost write may thus name a different write of the
// new creation: a version-conditional write (CompareVersionAndSwap and
// the like) compared with it may succeed against a value the caller never
// saw. A running watch whose position in a range of the group was taken
// from the old creation ends with ErrCompacted once its node learns of the
// recovery (also when the position was below the recovery point: the
// feed cannot tell); but a watch started with WatchFrom from a Cursor
// taken in the old history is not told: from a position above the
// recovery point it skips the new creation's changes up to that position,
// silently. After such a recovery, read versions and cursors afresh; the
// recovery point is the replica's GroupStatus.LastIndex when it was
// recovered.
//
// Which replica to keep when several survived (ReplicaCount 5 and up): the
// one with the largest (GroupStatus.LastTerm, GroupStatus.LastIndex) in the
// survivors' Status, term first: it holds every write any survivor had
// applied. The other survivors' replicas are dropped, and re-added empty.
//
// It refuses with ErrInvalid when this node holds no replica of the group
// (or holds one of a creation the layout superseded), and, unless
// ForceRecover is given, while the group may have a quorum (this replica
// leads it, heard from its leader within HeartbeatTimeout, or gossip
// counts a majority of its voters alive: wait for the crashed nodes to be
// declared dead), when this replica is not a voter of its group's
// configuration as it knows it (it may lack committed writes), and, for
// group 0, when a live member announces a newer layout (above). With
// ErrUnavailable when group 0 has no leader to log the recovery in
// (recover group 0 first). A group whose configuration is this replica
// alone needs no recovery: nil.
func (db *DB) RecoverGroup(ctx context.Context, group int, opts ...RecoverOption) error {
	var o recoverOptions
	for _, opt := range opts {
		opt(&o)
	}
	if db.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return timedOut(err, false)
	}
	rep := db.replica(group)
	if rep == nil {
		return fmt.Errorf("%w: node %s holds no replica of group %d: run RecoverGroup on a node that does", ErrInvalid, db.cfg.NodeID, group)
	}
	// Group 0 started again here, its new creation not yet logged: it
	// logs itself, or, if its layout cannot take that record at its
	// creation's epoch (never expected: startRecovered checks), it is
	// recovered from anew.
	unlogged := rep.unloggedCreation()
	if unlogged && group0Creation(recoveredLayout(rep)) == rep.gen {
		return db.finishRecovery(ctx, group)
	}
	lay := db.lay.Load()
	gen := lay.gen(group)
	pending := false
	if s, ok := lay.logged.RecoveredAt(group, gen); ok && rep.gen < gen {
		if raft.ServerID(s.ID) != db.host.ID() {
			return fmt.Errorf("%w: group %d was recovered from server %s's replica since this node's replica was made", ErrInvalid, group, s.ID)
		}
		pending = true // logged, not yet started here (RecoverGroup failed midway)
	} else if rep.gen < gen {
		return fmt.Errorf("%w: this node's replica of group %d is of a creation that was superseded", ErrInvalid, group)
	}
	if !pending {
		servers, err := rep.group.Configuration()
		if err != nil {
			return fmt.Errorf("%w: group %d: %w", ErrUnavailable, group, err)
		}
		if len(servers) == 1 && servers[0].ID == db.host.ID() && servers[0].Suffrage == raft.Voter && !unlogged {
			return nil
		}
		if !o.force && !unlogged {
			if err := db.checkLostMajority(rep, servers); err != nil {
				return err
			}
		}
		if gen, err = db.logRecovery(ctx, rep); err != nil {
			return err
		}
	}
	if _, err := db.startRecovered(group, rep, gen); err != nil {
		return err
	}
	db.log.Warn("replica group recovered from this node's replica alone after losing its majority", "group", group, "gen", gen, "forced", o.force)
	return db.finishRecovery(ctx, group)
}

// checkLostMajority refuses a recovery of a group that has, or may still
// have, a quorum, one from a replica that is not a voter of its group's
// configuration servers (it may lack committed entries: a voter of the
// lost majority's may not), and one of group 0 from a replica whose
// layout is older than one a live member announces (the groups created
// since would be lost).
func (db *DB) checkLostMajority(rep *replica, servers []raft.Server) error {
	voter := false
	for _, s := range servers {
		voter = voter || s.ID == db.host.ID() && s.Suffrage == raft.Voter
	}
	if !voter {
		return fmt.Errorf("%w: group %d: this node's replica is not a voter of the group's configuration as it knows it: it may lack committed writes; recover from a voter's replica (ForceRecover overrides)", ErrInvalid, rep.id)
	}
	if rep.id == 0 {
		own := recoveredLayout(rep)
		if m, ok := newerLayoutMember(own, db.lay.Load(), db.members()); ok {
			return fmt.Errorf("%w: group 0: member %s announces a layout (epoch %d, group 0 creation %d) newer than this replica's (epoch %d, creation %d): recovering from it would lose the groups created since; recover from a replica that has it (ForceRecover overrides)",
				ErrInvalid, m.NodeID, m.LayoutEpoch, m.LayoutCreation, own.Epoch, own.Gen(0))
		}
	}
	if rep.group.IsLeader() {
		return fmt.Errorf("%w: group %d is led by this node: it has a quorum (ForceRecover overrides)", ErrInvalid, rep.id)
	}
	if since := time.Since(rep.group.LastContact()); since < db.cfg.Timing.HeartbeatTimeout {
		return fmt.Errorf("%w: group %d: this replica heard from its leader %v ago, within HeartbeatTimeout: it has a quorum (ForceRecover overrides)",
			ErrInvalid, rep.id, since.Round(time.Millisecond))
	}
	if db.quorumGone(rep.id, rep) == nil {
		return fmt.Errorf("%w: group %d has a majority of its voters alive as gossip sees them: it needs no recovery, or failure detection has not caught up (ForceRecover overrides)", ErrInvalid, rep.id)
	}
	return nil
}

// newerLayoutMember is a member (or this node, known: the layout it
// adopted) that announces a layout newer than own (layoutNewer), if any.
func newerLayoutMember(own fsm.Layout, known *layout, members []gossip.Member) (gossip.Meta, bool) {
	if known != nil && layoutNewer(known.creation, known.epoch, own.Gen(0), own.Epoch) {
		return gossip.Meta{NodeID: "(this node)", LayoutEpoch: known.epoch, LayoutCreation: known.creation}, true
	}
	for _, m := range members {
		if layoutNewer(m.Meta.LayoutCreation, m.Meta.LayoutEpoch, own.Gen(0), own.Epoch) {
			return m.Meta, true
		}
	}
	return gossip.Meta{}, false
}

// logRecovery logs the new creation of rep's group, with this node as its
// only server, and returns its Gen. Group 0's is not logged here: it is
// the first entry of its own new creation (finishRecovery); its Gen is the
// epoch that entry brings (group0Creation).
func (db *DB) logRecovery(ctx context.Context, rep *replica) (uint64, error) {
	if rep.id == 0 {
		return group0Creation(recoveredLayout(rep)), nil
	}
	body := binary.AppendUvarint(nil, uint64(rep.id))
	body = binary.AppendUvarint(body, rep.gen)
	body = appendString(body, string(db.host.ID()))
	body = appendString(body, db.host.Addr())
	ans, err := db.route(ctx, 0, -1, reqRecoverGroup, body, false)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return 0, fmt.Errorf("%w: group 0, which logs the recovery, is unavailable (if it lost its majority, recover it first): %w", ErrUnavailable, err)
		}
		return 0, err
	}
	gen, n := binary.Uvarint(ans)
	if n != len(ans) || gen == 0 {
		return 0, errBadMessage
	}
	return gen, nil
}

// recoveredLayout is the layout a creation of group 0 recovered from rep
// (its replica of group 0) starts with: rep's applied layout and every
// layout command rep stores after it, committed or not (the recovery
// applies them all: raftgroup's RecoverFrom).
func recoveredLayout(rep *replica) fsm.Layout {
	for {
		applied := rep.fsm.Applied()
		l := rep.fsm.Layout()
		if rep.fsm.Applied() == applied {
			return fsm.LayoutAfter(l, rep.group.CommandsAfter(applied))
		}
	}
}

// group0Creation is the Gen of a creation of group 0 recovered with
// layout l: the epoch its self-record (finishRecovery) brings. A layout
// never logged (the formation's) is logged first.
func group0Creation(l fsm.Layout) uint64 { return max(l.Epoch, 1) + 1 }

// serveRecoverGroup logs, on group 0's leader rep, the new creation of the
// group the body names (appended by logRecovery) with its one server, if
// the group is still at the creation the body names; the answer is stOK
// and the new creation's Gen, also when it was logged already.
func (db *DB) serveRecoverGroup(ctx context.Context, rep *replica, body []byte) []byte {
	g, n := binary.Uvarint(body)
	if n <= 0 || g == 0 || g >= maxGroups {
		return append([]byte{stInvalid}, "bad group"...)
	}
	oldGen, k := binary.Uvarint(body[n:])
	if k <= 0 {
		return []byte{stInvalid}
	}
	rest := body[n+k:]
	id, rest, ok1 := parseString(rest)
	addr, rest, ok2 := parseString(rest)
	if !ok1 || !ok2 || len(rest) > 0 || id == "" {
		return []byte{stInvalid}
	}
	server := fsm.Server{ID: id, Address: addr}
	if rep.unloggedCreation() {
		// Group 0's own new creation logs itself first, at the epoch its
		// creation names (finishRecovery).
		return append([]byte{stUnavailable}, "group 0 was recovered here and has not logged it yet; try again"...)
	}
	// A layout that holds everything earlier leaders logged.
	idx, err := rep.group.ReadIndex(ctx)
	if err == nil {
		err = rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx))
	}
	if err != nil {
		return redirectOrUnavailable(rep, err)
	}
	for range 3 { // the coordinator may log a layout change meanwhile
		cur := rep.fsm.Layout()
		gen := cur.Gen(int(g))
		switch s, ok := cur.RecoveredAt(int(g), gen); {
		case int(g) >= cur.Exists():
			return append([]byte{stInvalid}, fmt.Sprintf("group %d does not exist", g)...)
		case ok && s.ID == id && gen > oldGen:
			// Logged already (an answer lost, say). A creation recovered
			// from this server that lost its majority too is gen ==
			// oldGen: it is recovered again, below.
			return binary.AppendUvarint([]byte{stOK}, gen)
		case gen != oldGen:
			return append([]byte{stInvalid}, fmt.Sprintf("group %d's replica at %s is of creation %d, superseded by creation %d", g, id, oldGen, gen)...)
		}
		err := db.applyLayoutCommand(ctx, rep, fsm.RecoverGroupOp(cur.Epoch, int(g), server))
		switch {
		case err == nil:
			db.log.Warn("replica group created again from one replica after losing its majority", "group", g, "server", id, "gen", cur.Epoch+1)
			return binary.AppendUvarint([]byte{stOK}, cur.Epoch+1)
		case errors.Is(err, fsm.ErrPrecondition):
			continue
		}
		return redirectOrUnavailable(rep, err)
	}
	return append([]byte{stUnavailable}, "the layout kept changing"...)
}

// startRecovered starts this node's replica of group g's new creation gen,
// from rep, its replica of the old creation, and then shuts rep down. rep
// stays as it was when that fails. It returns the new replica (also when
// it had started already). The new creation is built outside db.mu (a
// snapshot and a copy of the whole state: seconds for a large one), with
// the group reserved meanwhile (another call for it waits, then looks
// again), and swapped in under it only if rep is still the group's
// replica here.
func (db *DB) startRecovered(g int, rep *replica, gen uint64) (*replica, error) {
	db.mu.Lock()
	if db.closed.Load() {
		db.mu.Unlock()
		return nil, ErrClosed
	}
	switch cur := db.reps[g].Load(); {
	case cur != nil && cur.gen == gen:
		db.mu.Unlock()
		return cur, nil
	case cur != rep:
		db.mu.Unlock()
		return nil, fmt.Errorf("%w: group %d: its replica on this node changed meanwhile; try again", ErrUnavailable, g)
	case db.recovering[g] != nil:
		// Another call (the layout loop's, say) is building it: wait for
		// that one, then look again.
		done := db.recovering[g]
		db.mu.Unlock()
		<-done
		return db.startRecovered(g, rep, gen)
	}
	if db.recovering == nil {
		db.recovering = map[int]chan struct{}{}
	}
	done := make(chan struct{})
	db.recovering[g] = done
	db.mu.Unlock()
	defer func() {
		db.mu.Lock()
		delete(db.recovering, g)
		db.mu.Unlock()
		close(done)
	}()

	f := fsm.New(fsm.Options{MemoryLimit: db.cfg.MemoryLimit, Ranges: db.cfg.Ranges, Layout: g == 0})
	ng, err := db.host.CreateGroup(groupID(g, gen), f, raftgroup.GroupOptions{RecoverFrom: rep.group})
	if err != nil {
		return nil, fmt.Errorf("%w: group %d: start its new creation (the old replica is kept): %w", ErrUnavailable, g, err)
	}
	if fl := f.Layout(); g == 0 && fl.Gen(0) != gen && group0Creation(fl) != gen {
		// rep's log changed since gen was worked out (logRecovery): the
		// new creation could never log itself at gen.
		_ = ng.Abandon() // rep is kept: it leases again
		return nil, fmt.Errorf("%w: group 0: its replica here changed while it was recovered from (its layout is now at epoch %d, creation %d needs %d): the old replica is kept; try again",
			ErrUnavailable, fl.Epoch, gen, gen-1)
	}
	db.mu.Lock()
	switch {
	case db.closed.Load():
		db.mu.Unlock()
		_ = ng.Abandon()
		return nil, ErrClosed
	case db.reps[g].Load() != rep:
		// Dropped or replaced while the new creation was built.
		db.mu.Unlock()
		_ = ng.Abandon()
		return nil, fmt.Errorf("%w: group %d: its replica on this node changed while it was recovered from; try again", ErrUnavailable, g)
	}
	next := &replica{id: g, gen: gen, group: ng, fsm: f}
	next.genesis.Store(rep.genesis.Load())
	next.batch = newBatcher(db, next)
	db.reps[g].Store(next)
	db.mu.Unlock()
	_ = rep.group.Shutdown() // its writes in flight fail: it had no quorum
	rep.batch.close()
	db.kickHandoffs()
	return next, nil
}

// finishRecovery waits until this node leads group g's new creation and,
// for group 0, logs that creation in its own layout (its first entry).
func (db *DB) finishRecovery(ctx context.Context, g int) error {
	for {
		rep := db.replica(g)
		if rep == nil {
			return fmt.Errorf("%w: group %d: the recovered replica was dropped", ErrUnavailable, g)
		}
		if rep.group.IsLeader() {
			err := error(nil)
			if g == 0 {
				err = db.logSelfRecord(ctx, rep)
				if errors.Is(err, ErrInvalid) {
					return err
				}
			}
			if err == nil {
				return nil
			}
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return timedOut(fmt.Errorf("group %d recovered, not yet leading: %w", g, ctx.Err()), false)
		case <-db.stop:
			t.Stop()
			return ErrClosed
		case <-t.C:
		}
	}
}

// logSelfRecord logs, in group 0's new creation rep, which this node
// leads, that creation itself (its first entry; the formation's layout
// first if it was never logged), unless it is logged already. Until then
// the creation is this replica alone: the reconciler adds no replica to
// it (so its leadership cannot move), and the layout's coordinator, on
// this node, logs it if RecoverGroup's caller gave up first. ErrInvalid
// when the creation's layout cannot take it (never expected:
// startRecovered checks).
func (db *DB) logSelfRecord(ctx context.Context, rep *replica) error {
	cur := rep.fsm.Layout()
	if cur.Gen(0) >= rep.gen {
		return nil
	}
	if cur.Epoch == 0 {
		n := db.lay.Load().genesisGroups
		// Two callers may race here (RecoverGroup's and the layout
		// coordinator): the loser's precondition fails on the winner's
		// entry, and it goes on from there.
		if err := db.applyLayoutCommand(ctx, rep, fsm.LayoutOp(0, n, n)); err != nil && !(errors.Is(err, fsm.ErrPrecondition) && rep.fsm.Layout().Epoch > 0) {
			return err
		}
	}
	self := fsm.Server{ID: string(db.host.ID()), Address: db.host.Addr()}
	err := db.applyLayoutCommand(ctx, rep, fsm.RecoverGroupOp(rep.gen-1, 0, self))
	if errors.Is(err, fsm.ErrPrecondition) && rep.fsm.Layout().Gen(0) >= rep.gen {
		return nil // logged meanwhile (by RecoverGroup's caller or the coordinator)
	}
	if errors.Is(err, fsm.ErrPrecondition) {
		// Retrying cannot help: the new creation's layout moved past the
		// epoch its self-record needs.
		return fmt.Errorf("%w: group 0: its new creation %d cannot log itself: its layout is at epoch %d, not %d (RecoverGroup(0) again starts a newer creation from it)",
			ErrInvalid, rep.gen, rep.fsm.Layout().Epoch, rep.gen-1)
	}
	return err
}

// appendString appends s, uvarint length-prefixed.
func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// parseString reads what appendString wrote.
func parseString(b []byte) (s string, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}
