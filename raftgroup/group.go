package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Group is one node's replica of one Raft group.
//
// Threading: all methods are safe for concurrent use.
type Group struct {
	ID GroupID

	h        *Host
	raft     *raft.Raft
	trans    *groupTransport
	logs     *logStore
	stable   raft.StableStore
	snaps    *snapshotStore
	observer *raft.Observer

	verify    verifier
	applies   applyWaiter
	readyTerm atomic.Uint64 // a barrier of this term has committed
	lease     *lease
	fsmIndex  atomic.Pointer[[2]uint64] // FSMIndex's last (index, answer)

	transferFailed atomic.Int64 // unix nanoseconds of the last failed transfer
	// commitBase is the commit index of the replica this one was recovered
	// from (GroupOptions.RecoverFrom), whose commits that one counts.
	commitBase uint64
	// recoveredFrom is that replica's lease while it serves no lease read
	// because of this one (recoverFrom); Abandon gives it back. Only the
	// lease: holding the replica would keep its raft, log and state machine
	// in memory for this group's life.
	recoveredFrom atomic.Pointer[lease]

	// calls counts the callers waiting on a raft future; Shutdown lets
	// them finish first (see drain).
	calls struct {
		sync.Mutex
		closing bool
		n       int
		idle    chan struct{} // closed when n drops to 0 while closing
	}

	// started is set, under h.mu, once CreateGroup has started raft and
	// the host was not closing: only started groups are Close's to shut
	// down (CreateGroup shuts down one that finished starting too late).
	started bool

	shutdownOnce sync.Once
	shutdownErr  error
}

func (g *Group) start(fsm raft.FSM, opts GroupOptions) error {
	conf := g.h.raftConfig()
	g.lease = newLease(g.h.cfg.Lease, conf.HeartbeatTimeout, g.h.id)
	trans, err := newGroupTransport(g.h.mux, uint64(g.ID), g.lease)
	if err != nil {
		return err
	}
	trans.logs, trans.selfID = g.logs, g.h.id
	stable := NewStableStore()
	snaps := &snapshotStore{}
	if from := opts.RecoverFrom; from != nil && len(opts.Bootstrap) == 0 {
		if err := g.recoverFrom(conf, fsm, from, stable, snaps, trans); err != nil {
			_ = trans.Close()
			return fmt.Errorf("raftgroup: recover group %d from group %d: %w", g.ID, from.ID, err)
		}
	} else if len(opts.Bootstrap) > 0 {
		if err := raft.BootstrapCluster(conf, g.logs, stable, snaps, trans, raft.Configuration{Servers: opts.Bootstrap}); err != nil {
			_ = trans.Close()
			return fmt.Errorf("raftgroup: bootstrap group %d: %w", g.ID, err)
		}
	}
	r, err := raft.NewRaft(conf, fsm, g.logs, stable, snaps, trans)
	if err != nil {
		_ = trans.Close()
		return fmt.Errorf("raftgroup: start group %d: %w", g.ID, err)
	}
	g.raft, g.trans, g.snaps, g.stable = r, trans, snaps, stable
	trans.raft.Store(r)
	snaps.mu.Lock()
	snaps.onInstalled = g.snapshotAfterInstall // now that g.raft is set
	snaps.mu.Unlock()
	if max := g.h.cfg.MaxLogBytes; max > 0 {
		g.logs.mu.Lock()
		g.logs.maxBytes, g.logs.onFull = max, g.snapshotForLog
		g.logs.mu.Unlock()
	}
	g.observer = raft.NewObserver(g.h.observations, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(g.observer)
	g.applies.start(g.h)
	return nil
}

// recoverFrom fills g's fresh stores (g.logs, stable, snaps) with a copy
// of from's state and forces the configuration down to this host alone:
// see GroupOptions.RecoverFrom. from's stores are only read. from serves
// no lease read from now on (unless this fails): the new group may take
// writes from's state machine never sees, even while from still leads.
func (g *Group) recoverFrom(conf *raft.Config, fsm raft.FSM, from *Group, stable raft.StableStore, snaps *snapshotStore, trans raft.Transport) (err error) {
	from.lease.changing.Add(1)
	defer func() {
		if err != nil {
			from.lease.changing.Add(-1)
		}
	}()
	if err := from.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("snapshot: %w", mapErr(err))
	}
	g.commitBase = from.raft.CommitIndex()
	var snapIndex uint64
	if metas, err := from.snaps.List(); err != nil {
		return err
	} else if len(metas) > 0 {
		meta, rc, err := from.snaps.Open(metas[0].ID)
		if err != nil {
			return err
		}
		sink, err := snaps.Create(meta.Version, meta.Index, meta.Term, meta.Configuration, meta.ConfigurationIndex, trans)
		if err == nil {
			_, err = io.Copy(sink, rc)
			if err == nil {
				err = sink.Close()
			} else {
				_ = sink.Cancel()
			}
		}
		_ = rc.Close()
		if err != nil {
			return fmt.Errorf("copy snapshot: %w", err)
		}
		snapIndex = meta.Index
	}
	from.logs.mu.RLock()
	var entries []*raft.Log
	for i := range from.logs.logs {
		if l := from.logs.logs[i]; l.Index > snapIndex {
			entries = append(entries, &l)
		}
	}
	from.logs.mu.RUnlock()
	if err := g.logs.StoreLogs(entries); err != nil {
		return err
	}
	// The term goes on from from's: entries appended from now on must not
	// have a smaller term than those copied (raft's election rule
	// compares the last entry's term first).
	term, err := from.stable.GetUint64(keyCurrentTerm)
	if err != nil {
		return err
	}
	if err := stable.SetUint64(keyCurrentTerm, term); err != nil {
		return err
	}
	self := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: g.h.id, Address: raft.ServerAddress(g.h.Addr())}}}
	if err := raft.RecoverCluster(conf, fsm, g.logs, stable, snaps, trans, self); err != nil {
		return err
	}
	g.recoveredFrom.Store(from.lease)
	return nil
}

// Abandon shuts down a group recovered from another replica
// (GroupOptions.RecoverFrom) that its caller does not keep after all: the
// replica it was recovered from, kept instead, serves lease reads again.
// On any other group it is Shutdown.
func (g *Group) Abandon() error {
	err := g.Shutdown()
	if l := g.recoveredFrom.Swap(nil); l != nil {
		l.changing.Add(-1)
	}
	return err
}

// CommandsAfter is the data of the command entries (raft.LogCommand)
// this replica stores after index, in log order: what a group recovered
// from it (GroupOptions.RecoverFrom) applies past a state machine that
// has applied index, committed or not. The slices must not be changed.
func (g *Group) CommandsAfter(index uint64) [][]byte {
	s := g.logs
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out [][]byte
	for i := range s.logs {
		if l := &s.logs[i]; l.Index > index && l.Type == raft.LogCommand {
			out = append(out, l.Data)
		}
	}
	return out
}

// commits is the entries this replica committed, for Stats.
func (g *Group) commits() uint64 {
	return g.raft.CommitIndex() - min(g.commitBase, g.raft.CommitIndex())
}

// keyCurrentTerm is where raft keeps its current term in the stable store.
var keyCurrentTerm = []byte("CurrentTerm")

// LastLog is the index and term of the last entry this replica stores
// (committed or not), or of its newest snapshot when the log holds none
// after it. Of the replicas of a group that lost its majority, the one
// with the largest (term, index), term first, holds every entry any of
// them knew committed (Raft's election rule): the one to recover from.
func (g *Group) LastLog() (index, term uint64) {
	g.logs.mu.RLock()
	if n := len(g.logs.logs); n > 0 {
		index, term = g.logs.logs[n-1].Index, g.logs.logs[n-1].Term
	}
	g.logs.mu.RUnlock()
	if metas, err := g.snaps.List(); err == nil && len(metas) > 0 && metas[0].Index > index {
		index, term = metas[0].Index, metas[0].Term
	}
	return index, term
}

// LastContact is when this replica last heard from a leader (zero if
// never; raft.Raft.LastContact), or now when it leads.
func (g *Group) LastContact() time.Time {
	if g.IsLeader() {
		return time.Now()
	}
	return g.raft.LastContact()
}

// snapshotForLog snapshots the group because its log passed MaxLogBytes;
// raft then trims the log. The log store calls it once per crossing; it
// keeps snapshotting, at most once per 250ms, while the log stays over.
func (g *Group) snapshotForLog() {
	ok := g.h.spawn(func() {
		for {
			start := time.Now()
			g.trimLog()
			t := time.NewTimer(250*time.Millisecond - time.Since(start))
			select {
			case <-t.C:
			case <-g.trans.closed:
				t.Stop()
				g.logs.full.Store(false)
				return
			}
			if g.logs.Bytes() > g.h.cfg.MaxLogBytes {
				continue
			}
			g.logs.full.Store(false)
			// A store that crossed the bound meanwhile found full set and
			// left it to us: look once more.
			if g.logs.Bytes() <= g.h.cfg.MaxLogBytes || !g.logs.full.CompareAndSwap(false, true) {
				return
			}
		}
	})
	if !ok {
		g.logs.full.Store(false)
	}
}

// trimLog takes a snapshot keeping only the newest entries that fit in a
// quarter of MaxLogBytes: raft keeps TrailingLogs entries after a snapshot
// whatever their size, so the setting is lowered for this one.
func (g *Group) trimLog() {
	rc := g.raft.ReloadableConfig()
	trailing := rc.TrailingLogs
	if n := g.logs.tailWithin(g.h.cfg.MaxLogBytes / 4); n < trailing {
		rc.TrailingLogs = n
		_ = g.raft.ReloadConfig(rc)
		defer func() {
			rc.TrailingLogs = trailing
			_ = g.raft.ReloadConfig(rc)
		}()
	}
	if err := g.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		g.h.log.Debug("snapshot for log size failed", "group", g.ID, "err", err)
	}
}

// LogBytes is the approximate memory this replica's Raft log holds.
func (g *Group) LogBytes() int64 { return g.logs.Bytes() }

// Raft is the underlying hashicorp/raft instance, for what Group does not
// wrap (stats, barriers, configuration futures).
func (g *Group) Raft() *raft.Raft { return g.raft }

// Leader returns the leader's server id and address as this replica knows
// them; empty while unknown.
func (g *Group) Leader() (raft.ServerID, raft.ServerAddress) {
	addr, id := g.raft.LeaderWithID()
	return id, addr
}

// IsLeader reports whether this replica believes it leads the group.
func (g *Group) IsLeader() bool { return g.raft.State() == raft.Leader }

// Apply replicates cmd and returns the FSM's response once it is applied on
// this (leader) replica. An error wrapping ErrTimeout means the outcome is
// unknown; ErrNotLeader means the entry was not appended.
func (g *Group) Apply(ctx context.Context, cmd []byte) (interface{}, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, fmt.Errorf("%w: %w", ErrTimeout, context.DeadlineExceeded)
		}
	}
	g.h.mux.stats.applies.Add(1)
	// Not through do: no closure on the write path.
	if err := g.begin(); err != nil {
		return nil, err
	}
	defer g.end()
	// The timeout bounds only the hand-over to raft's main loop: one
	// runtime timer per call, no goroutine, so that a busy loop cannot hold
	// the caller past its deadline. The wait for the outcome goes through
	// the group's one waiter goroutine.
	f := g.raft.Apply(cmd, timeout)
	if err := g.applies.wait(ctx, f); err != nil {
		return nil, err
	}
	return f.Response(), nil
}

// do starts a raft operation and waits for it (see wait), unless the
// replica is shutting down (ErrClosed: not started).
func (g *Group) do(ctx context.Context, start func() raft.Future) error {
	if err := g.begin(); err != nil {
		return err
	}
	defer g.end()
	return g.wait(ctx, start())
}

// begin counts an operation under way, unless the replica is shutting
// down; end uncounts it. See drain.
func (g *Group) begin() error {
	g.calls.Lock()
	defer g.calls.Unlock()
	if g.calls.closing {
		return fmt.Errorf("%w: group %d is shutting down", ErrClosed, g.ID)
	}
	g.calls.n++
	return nil
}

func (g *Group) end() {
	g.calls.Lock()
	defer g.calls.Unlock()
	g.calls.n--
	if g.calls.n == 0 && g.calls.idle != nil {
		close(g.calls.idle)
		g.calls.idle = nil
	}
}

// drain refuses new operations and waits, at most d, for those under way.
//
// The reason is a hashicorp/raft v1.8.0 bug: its FSM goroutine returns on
// shutdown without taking the batches of committed entries queued for it,
// and the futures of those entries are never answered. An Apply that
// commits just as the replica shuts down would leave its caller, and
// Host.Close waiting for that caller, hanging for ever
// (TestApplyRacingCloseReturns). Operations under way end within about a
// leader lease: committed, or failed when the leader steps down.
func (g *Group) drain(d time.Duration) {
	g.calls.Lock()
	g.calls.closing = true
	if g.calls.n == 0 {
		g.calls.Unlock()
		return
	}
	idle := make(chan struct{})
	g.calls.idle = idle
	g.calls.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
}

// wait waits for a raft future while honouring ctx. Raft always completes
// futures (with ErrRaftShutdown at the latest), so the helper goroutine
// that waits past ctx always ends; the host waits for it on Close.
func (g *Group) wait(ctx context.Context, f raft.Future) error {
	if ctx.Done() == nil {
		return mapErr(f.Error())
	}
	done := make(chan error, 1)
	g.h.mux.stats.goroutines.Add(1)
	if !g.h.spawn(func() { done <- f.Error() }) {
		return mapErr(f.Error()) // closing: raft answers every future promptly
	}
	select {
	case err := <-done:
		return mapErr(err)
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// Refused before it was appended: certainly not applied.
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrLeaderLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}

// VerifyLeader confirms with a quorum that this replica still leads, by a
// heartbeat round whose requests all leave after the call began. Callers
// that arrive while a round is under way share the next one.
//
// hashicorp/raft's own VerifyLeader may count a heartbeat that was sent
// before the call (its notify map takes the answer of whatever heartbeat is
// in flight), which is not enough for a linearizable read; see
// docs/raftgroup.md.
func (g *Group) VerifyLeader(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	rd := g.verify.join(g)
	select {
	case <-rd.done:
		return rd.err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

// AddVoter adds a voting replica (one configuration change; raft catches it
// up by log or snapshot).
func (g *Group) AddVoter(ctx context.Context, id raft.ServerID, addr string) error {
	return g.changeConfiguration(ctx, func() raft.Future { return g.raft.AddVoter(id, raft.ServerAddress(addr), 0, 0) })
}

// changeConfiguration runs one configuration change. The lease is off
// while it is under way (the new voters' acks are not known yet) and then
// follows the new voters.
func (g *Group) changeConfiguration(ctx context.Context, start func() raft.Future) error {
	g.lease.changing.Add(1)
	defer g.lease.changing.Add(-1)
	term := g.raft.CurrentTerm()
	err := g.do(ctx, start)
	if g.readyTerm.Load() == term {
		// No lease until the next term if the configuration is unknown.
		var voters []raft.ServerID
		if servers, cerr := g.Configuration(); cerr == nil {
			voters = voterIDs(servers)
		}
		g.lease.begin(term, voters)
	}
	return err
}

// AddNonvoter adds a replica that receives the log but does not vote, to
// be promoted with AddVoter once it is catching up.
func (g *Group) AddNonvoter(ctx context.Context, id raft.ServerID, addr string) error {
	return g.changeConfiguration(ctx, func() raft.Future { return g.raft.AddNonvoter(id, raft.ServerAddress(addr), 0, 0) })
}

// RemoveServer removes a replica from the configuration.
func (g *Group) RemoveServer(ctx context.Context, id raft.ServerID) error {
	return g.changeConfiguration(ctx, func() raft.Future { return g.raft.RemoveServer(id, 0, 0) })
}

// TransferLeadership hands leadership to id, or, when id is empty, to a
// voter that answers.
//
// It refuses (ErrTransferRefused) unless the target answered its last
// AppendEntries, within the last heartbeat time-out, and no transfer of
// this group failed within the last 2×ElectionTimeout + RPCTimeout. The
// reason is a hashicorp/raft bug (hashicorp/raft#696, seen here by the
// Jepsen-style suite): a transfer that times out while the target's
// replication goroutine is busy leaves a request in that goroutine's
// one-slot channel. The next transfer then blocks sending to it; if the
// goroutine is stopped first, the transfer never ends. raft keeps its
// "transfer in progress" flag set for good, and that replica refuses every
// write and barrier while it leads, forever. A target that answers
// promptly takes the request at once, and the pause after a failure gives a
// slow one time to take it.
func (g *Group) TransferLeadership(ctx context.Context, id raft.ServerID, addr string) error {
	rc := g.raft.ReloadableConfig()
	cooldown := 2*rc.ElectionTimeout + g.h.cfg.RPCTimeout
	if t := g.transferFailed.Load(); t != 0 && time.Since(time.Unix(0, t)) < cooldown {
		return fmt.Errorf("%w: group %d: a transfer failed less than %v ago", ErrTransferRefused, g.ID, cooldown)
	}
	if id == "" {
		servers, err := g.Configuration()
		if err != nil {
			return err
		}
		for _, s := range servers {
			if s.Suffrage == raft.Voter && s.ID != g.h.id && g.trans.answering(s.Address, rc.HeartbeatTimeout) {
				id, addr = s.ID, string(s.Address)
				break
			}
		}
		if id == "" {
			return fmt.Errorf("%w: group %d: no voter has answered lately", ErrTransferRefused, g.ID)
		}
	} else if !g.trans.answering(raft.ServerAddress(addr), rc.HeartbeatTimeout) {
		return fmt.Errorf("%w: group %d: %s has not answered lately", ErrTransferRefused, g.ID, addr)
	}
	err := g.do(ctx, func() raft.Future { return g.raft.LeadershipTransferToServer(id, raft.ServerAddress(addr)) })
	if err != nil {
		g.transferFailed.Store(time.Now().UnixNano())
	}
	return err
}

// Configuration returns the group's current servers.
func (g *Group) Configuration() ([]raft.Server, error) {
	f := g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, mapErr(err)
	}
	return f.Configuration().Servers, nil
}

// Barrier waits, on the leader, until an entry appended now is committed
// and every entry before it applied: whatever this replica's log held when
// it was called is then committed, by a majority in this leader's term.
func (g *Group) Barrier(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return g.do(ctx, func() raft.Future { return g.raft.Barrier(timeout) })
}

// Shutdown stops this replica: its transport first, so raft goroutines
// blocked on peers return at once, then raft itself. Idempotent.
func (g *Group) Shutdown() error {
	g.shutdownOnce.Do(func() {
		if g.raft == nil {
			return
		}
		g.drain(2 * g.raft.ReloadableConfig().HeartbeatTimeout)
		g.raft.DeregisterObserver(g.observer)
		_ = g.trans.Close()
		g.shutdownErr = g.raft.Shutdown().Error()
		g.applies.close()
		g.h.mu.Lock()
		if g.h.mu.groups[g.ID] == g {
			g.h.retireLocked(g)
		}
		delete(g.h.mu.groups, g.ID)
		delete(g.h.mu.byRaft, g.raft)
		g.h.mu.Unlock()
	})
	return g.shutdownErr
}

// ReadIndex returns an index such that, once this replica's state machine
// has applied it, a read from that state is linearizable: the commit index
// when the call began, confirmed by a leadership round sent after it. A
// new leader first commits a barrier in its own term (until then its
// commit index may lag what earlier leaders committed).
func (g *Group) ReadIndex(ctx context.Context) (uint64, error) {
	if err := g.termCommitted(ctx); err != nil {
		return 0, err
	}
	index := g.raft.CommitIndex()
	if err := g.VerifyLeader(ctx); err != nil {
		return 0, err
	}
	return index, nil
}

// termCommitted makes sure an entry of the current term has committed on
// this leader, with one barrier per term.
func (g *Group) termCommitted(ctx context.Context) error {
	term := g.raft.CurrentTerm()
	if g.readyTerm.Load() == term {
		return nil
	}
	if err := g.do(ctx, func() raft.Future { return g.raft.Barrier(0) }); err != nil {
		return err
	}
	if g.raft.CurrentTerm() == term {
		g.readyTerm.Store(term)
		// Every entry of earlier terms has committed, configurations
		// included: the latest configuration is the committed one.
		if servers, err := g.Configuration(); err == nil && g.lease.changing.Load() == 0 {
			g.lease.begin(term, voterIDs(servers))
		}
	}
	return nil
}

// LeaseIndex starts a read under this replica's leader lease. It returns
// the commit index and the term; once the state machine has applied
// FSMIndex(index), read, then call ConfirmLease(term): if it holds, the
// read was linearizable — no other replica can have been elected before
// the confirmation, so the state read covered every write committed when
// LeaseIndex was called. A pause anywhere in between fails the
// confirmation instead of serving stale data. ok is false when this
// replica does not lead with a lease (ReadIndex is the way then).
//
// Cost: atomic loads, no lock, no clock reading (ConfirmLease takes one).
func (g *Group) LeaseIndex() (index, term uint64, ok bool) {
	term = g.raft.CurrentTerm()
	if g.raft.State() != raft.Leader {
		return 0, 0, false
	}
	if g.readyTerm.Load() != term || !g.lease.usable(term) {
		return 0, 0, false
	}
	return g.raft.CommitIndex(), term, true
}

// ConfirmLease reports whether this replica still leads in term under a
// valid lease, and the wall clock reading (unix nanoseconds) the check
// was made at, for deciding expiry of what was read.
func (g *Group) ConfirmLease(term uint64) (wall int64, ok bool) {
	wall, ok = g.lease.valid(term)
	if !ok || g.raft.State() != raft.Leader || g.raft.CurrentTerm() != term || g.readyTerm.Load() != term {
		return wall, false
	}
	g.lease.hits.Add(1)
	return wall, true
}

// LeaseMissed counts n reads this leader served another way (ReadIndex)
// for want of a valid lease.
func (g *Group) LeaseMissed(n int) { g.lease.misses.Add(uint64(n)) }

// LeaseStats counts the reads this replica served under its lease (hits:
// ConfirmLease held) and those its caller reported served another way for
// want of one (misses: LeaseMissed), once per read.
func (g *Group) LeaseStats() (hits, misses uint64) {
	return g.lease.hits.Load(), g.lease.misses.Load()
}

// FSMIndex maps a log index to the last entry at or below it that the state
// machine sees: raft does not hand no-op and barrier entries to the FSM,
// so an FSM is caught up to index once it has applied FSMIndex(index).
//
// The last answer is cached: reads under a lease ask for the same commit
// index until the next write commits.
func (g *Group) FSMIndex(index uint64) uint64 {
	if c := g.fsmIndex.Load(); c != nil && c[0] == index {
		return c[1]
	}
	i := g.fsmIndexOf(index)
	g.fsmIndex.Store(&[2]uint64{index, i})
	return i
}

func (g *Group) fsmIndexOf(index uint64) uint64 {
	s := g.logs
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := index; i > 0; i-- {
		if len(s.logs) == 0 || i < s.first {
			// Compacted away: this replica's state came from (or went into)
			// a snapshot covering everything up to here, so there is
			// nothing left to wait for. (Returning i instead could wait
			// forever when the entries before a snapshot were no-ops.)
			return 0
		}
		if i > s.lastLocked() {
			continue
		}
		switch s.logs[i-s.first].Type {
		case raft.LogCommand, raft.LogConfiguration:
			return i
		}
	}
	return 0
}

// ReplicaState is what a replica tells a quorum read about itself.
type ReplicaState struct {
	// LastIndex is the index of the last entry stored (committed or not).
	LastIndex uint64
	// Applied: the state machine reflects every entry up to here.
	Applied uint64
	// ConfigIndex is the log index of the latest configuration, and
	// Voters its voters: a quorum read trusts the newest one it sees.
	ConfigIndex uint64
	Voters      []raft.ServerID
}

// State reports this replica's ReplicaState; fsmApplied returns the index
// of the last entry the state machine applied (raft does not hand it
// no-op and barrier entries, so it may trail raft's applied index).
func (g *Group) State(fsmApplied func() uint64) (ReplicaState, error) {
	servers, err := g.Configuration()
	if err != nil {
		return ReplicaState{}, err
	}
	st := ReplicaState{Voters: voterIDs(servers), ConfigIndex: max(g.logs.latestConfig(), g.snaps.configIndex.Load())}
	st.Applied = g.AppliedThrough(fsmApplied)
	st.LastIndex = g.raft.LastIndex()
	return st, nil
}

// AppliedThrough is the log index up to which the state machine reflects
// every entry: raft's applied index once the state machine has caught up
// with it, else the state machine's own.
func (g *Group) AppliedThrough(fsmApplied func() uint64) uint64 {
	a := g.raft.AppliedIndex() // entries up to a are committed and handed to the FSM
	f := fsmApplied()
	if f >= g.FSMIndex(a) {
		return max(a, f)
	}
	return f
}
