package raftgroup

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// groupTransport is the raft.Transport of one group on one node: a view of
// the node's shared mux that tags every frame with the group id.
//
// Threading: every method is safe for concurrent use, as raft requires.
type groupTransport struct {
	m     *mux
	group uint64

	consumeCh chan raft.RPC
	heartbeat atomic.Pointer[func(raft.RPC)]

	// Requests that found consumeCh full wait here, in arrival order, for
	// one drainer goroutine, so a slow group never blocks the connection's
	// reader (and with it every other group).
	qmu      sync.Mutex
	overflow []raft.RPC
	draining bool
	// Answers raft owes, in the order the requests reached it; one
	// responder goroutine, running only while some are owed, sends them.
	answers    []pendingAnswer
	responding bool
	shut       bool // set under qmu before Close waits for wg

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup // drainer and responder

	// Leader leases: the leader's acks, and the follower's vote guard.
	// raft is set once NewRaft returns; nil before.
	lease  *lease
	guard  voteGuard
	raft   atomic.Pointer[raft.Raft]
	logs   *logStore
	selfID raft.ServerID
	notify commitNotifier

	// How each follower answered AppendEntries lately (a leader's view),
	// for Group.TransferLeadership's health check.
	healthMu sync.Mutex
	health   map[raft.ServerAddress]appendHealth
}

type appendHealth struct{ lastOK, lastFail time.Time }

// noteAppend records the outcome of one AppendEntries to target.
func (gt *groupTransport) noteAppend(target raft.ServerAddress, ok bool) {
	now := time.Now()
	gt.healthMu.Lock()
	defer gt.healthMu.Unlock()
	if gt.health == nil {
		gt.health = make(map[raft.ServerAddress]appendHealth)
	}
	h := gt.health[target]
	if ok {
		h.lastOK = now
	} else {
		h.lastFail = now
	}
	gt.health[target] = h
}

// answering reports whether target's last AppendEntries succeeded, within
// the last d.
func (gt *groupTransport) answering(target raft.ServerAddress, d time.Duration) bool {
	gt.healthMu.Lock()
	defer gt.healthMu.Unlock()
	h, ok := gt.health[target]
	return ok && time.Since(h.lastOK) < d && h.lastFail.Before(h.lastOK)
}

// lazy reports whether an AppendEntries may linger: heartbeats and empty
// appends that only carry the commit index. Nobody waits on those but raft's
// own timers (VerifyLeader sends its heartbeats eagerly).
func lazy(args *raft.AppendEntriesRequest) bool { return len(args.Entries) == 0 }

var (
	_ raft.Transport   = (*groupTransport)(nil)
	_ raft.WithPreVote = (*groupTransport)(nil)
	_ raft.WithClose   = (*groupTransport)(nil)
)

func newGroupTransport(m *mux, group uint64, l *lease) (*groupTransport, error) {
	gt := &groupTransport{m: m, group: group, consumeCh: make(chan raft.RPC, 64), closed: make(chan struct{}), lease: l,
		guard: voteGuard{clock: l.clock, timeout: l.heartbeat}}
	gt.notify.gt = gt
	if err := m.register(gt); err != nil {
		return nil, err
	}
	return gt, nil
}

// pendingAnswer is where raft's answer to one request goes.
type pendingAnswer struct {
	p    *peer
	h    frameHeader
	lazy bool
	ch   chan raft.RPCResponse // nil: the caller waits for the answer itself
}

// dispatch hands an incoming request to raft without blocking the caller,
// and arranges for its answer to be sent. It reports false once the group
// is closed.
func (gt *groupTransport) dispatch(rpc raft.RPC, ans pendingAnswer) bool {
	gt.qmu.Lock()
	defer gt.qmu.Unlock()
	if gt.shut {
		return false
	}
	if ans.ch != nil {
		gt.answers = append(gt.answers, ans)
		if !gt.responding {
			gt.responding = true
			gt.m.stats.goroutines.Add(1)
			gt.wg.Add(1)
			go func() { defer gt.wg.Done(); gt.respondLoop() }()
		}
	}
	if !gt.draining {
		select {
		case gt.consumeCh <- rpc:
			return true
		default:
		}
		gt.draining = true
		gt.m.stats.goroutines.Add(1)
		gt.wg.Add(1)
		go func() { defer gt.wg.Done(); gt.drain() }()
	}
	gt.overflow = append(gt.overflow, rpc)
	return true
}

// respondLoop sends raft's answers in the order the requests reached it
// (raft's main loop answers one request before taking the next, so the
// head of the queue is the one being answered).
func (gt *groupTransport) respondLoop() {
	for {
		gt.qmu.Lock()
		if len(gt.answers) == 0 {
			gt.responding = false
			gt.answers = nil
			gt.qmu.Unlock()
			return
		}
		a := gt.answers[0]
		gt.answers[0] = pendingAnswer{}
		gt.answers = gt.answers[1:]
		gt.qmu.Unlock()
		select {
		case res := <-a.ch:
			gt.noteAnswer(res)
			respond(a.p, a.h, a.lazy, res.Response, res.Error)
		case <-gt.closed:
			return
		}
	}
}

func (gt *groupTransport) drain() {
	for {
		gt.qmu.Lock()
		if len(gt.overflow) == 0 {
			gt.draining = false
			gt.overflow = nil
			gt.qmu.Unlock()
			return
		}
		rpc := gt.overflow[0]
		gt.overflow[0] = raft.RPC{}
		gt.overflow = gt.overflow[1:]
		gt.qmu.Unlock()
		select {
		case gt.consumeCh <- rpc:
		case <-gt.closed:
			return
		}
	}
}

func (gt *groupTransport) heartbeatHandler() func(raft.RPC) {
	if p := gt.heartbeat.Load(); p != nil {
		return *p
	}
	return nil
}

// Consumer implements raft.Transport.
func (gt *groupTransport) Consumer() <-chan raft.RPC { return gt.consumeCh }

// LocalAddr implements raft.Transport: the node's listen address.
func (gt *groupTransport) LocalAddr() raft.ServerAddress { return raft.ServerAddress(gt.m.addr) }

// SetHeartbeatHandler implements raft.Transport.
func (gt *groupTransport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	if cb == nil {
		gt.heartbeat.Store(nil)
		return
	}
	gt.heartbeat.Store(&cb)
}

// EncodePeer implements raft.Transport.
func (gt *groupTransport) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer implements raft.Transport.
func (gt *groupTransport) DecodePeer(b []byte) raft.ServerAddress { return raft.ServerAddress(b) }

// Close implements raft.WithClose; raft calls it on shutdown.
func (gt *groupTransport) Close() error {
	gt.closeOnce.Do(func() {
		gt.notify.close()
		gt.m.unregister(gt)
		gt.qmu.Lock()
		gt.shut = true // no wg.Add after this: dispatch checks it under qmu
		close(gt.closed)
		gt.qmu.Unlock()
	})
	gt.wg.Wait()
	return nil
}

var errGroupClosed = errors.New("raftgroup: group transport closed")

// roundTrip sends one request to server id at target and waits for its
// answer, for at most the RPC timeout. The frame names id's incarnation, so
// a new incarnation at the same address refuses it (see the wire format).
func (gt *groupTransport) roundTrip(id raft.ServerID, target raft.ServerAddress, kind byte, lazy bool, encode func([]byte) []byte, resp interface{}) error {
	return gt.roundTripWithin(gt.m.timeout, id, target, kind, lazy, encode, resp)
}

func (gt *groupTransport) roundTripWithin(timeout time.Duration, id raft.ServerID, target raft.ServerAddress, kind byte, lazy bool, encode func([]byte) []byte, resp interface{}) error {
	type answer struct {
		body []byte
		err  error
	}
	done := make(chan answer, 1)
	gt.m.startWithin(string(target), incarnationOf(id), gt.group, kind, lazy, timeout, encode, func(body []byte, err error) { done <- answer{body, err} })
	select {
	case a := <-done:
		if a.err != nil {
			return a.err
		}
		return decodeResponse(a.body, resp)
	case <-gt.closed:
		return errGroupClosed
	}
}

// AppendEntries implements raft.Transport.
// Heartbeats (empty appends) give up after mux.beatTimeout.
func (gt *groupTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	timeout := gt.m.timeout
	if lazy(args) {
		timeout = gt.m.beatTimeout
	}
	sent := gt.lease.now()
	gt.notify.sent(id, target, args.LeaderCommitIndex)
	gt.countAppend(args)
	err := gt.roundTripWithin(timeout, id, target, kindAppendEntries, lazy(args), func(b []byte) []byte { return appendAppendEntriesRequest(b, args) }, resp)
	ok := err == nil && resp.Success
	gt.noteAppend(target, ok)
	if ok && resp.Term == args.Term {
		gt.lease.ack(id, args.Term, sent)
		if len(args.Entries) > 0 {
			gt.notify.acked()
		}
	}
	return err
}

// countAppend counts an AppendEntries that carries entries (see Stats).
func (gt *groupTransport) countAppend(args *raft.AppendEntriesRequest) {
	if n := len(args.Entries); n > 0 {
		gt.m.stats.appendEntries.Add(1)
		gt.m.stats.entries.Add(uint64(n))
		if d := gt.m.detail; d != nil {
			d.entriesPerAppend.observe(n)
		}
	}
}

// noteAnswer arms the vote guard when this replica answers an
// AppendEntries as a success.
func (gt *groupTransport) noteAnswer(res raft.RPCResponse) {
	if r, ok := res.Response.(*raft.AppendEntriesResponse); ok && res.Error == nil && r.Success {
		gt.guard.noteAck()
	}
}

// intercept answers, before raft sees them, the requests the lease rules
// refuse: a RequestVote while the vote guard holds (unless the candidate
// runs at its leader's request), and a TimeoutNow that is not from this
// replica's leader in its current term (a delayed or duplicated one would
// start an election in the middle of a lease). It reports whether it
// answered.
func (gt *groupTransport) intercept(cmd interface{}, term uint64) (resp interface{}, err error, answered bool) {
	r := gt.raft.Load()
	switch c := cmd.(type) {
	case *raft.RequestVoteRequest:
		if c.LeadershipTransfer || !gt.guard.refuses() {
			return nil, nil, false
		}
		if r == nil {
			return nil, errVoteRefused, true
		}
		self := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(gt.selfID), Addr: []byte(gt.m.addr)}
		return &raft.RequestVoteResponse{RPCHeader: self, Term: r.CurrentTerm()}, nil, true
	case *raft.TimeoutNowRequest:
		if r == nil {
			return nil, errStaleTimeoutNow, true
		}
		_, leader := r.LeaderWithID()
		if leader == "" || leader != raft.ServerID(c.ID) || r.CurrentTerm() != term {
			return nil, errStaleTimeoutNow, true
		}
	}
	return nil, nil, false
}

var (
	errVoteRefused     = errors.New("raftgroup: vote refused: heard from a leader within the heartbeat time-out")
	errStaleTimeoutNow = errors.New("raftgroup: TimeoutNow dropped: not from this replica's leader in its current term")
)

// RequestVote implements raft.Transport.
func (gt *groupTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return gt.roundTrip(id, target, kindRequestVote, false, func(b []byte) []byte { return appendRequestVoteRequest(b, args) }, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (gt *groupTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return gt.roundTrip(id, target, kindRequestPreVote, false, func(b []byte) []byte { return appendRequestPreVoteRequest(b, args) }, resp)
}

// TimeoutNow implements raft.Transport.
// The frame carries this leader's term, and the lease of that term ends
// before it leaves: the target may win at once.
func (gt *groupTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	var term uint64
	if r := gt.raft.Load(); r != nil {
		term = r.CurrentTerm()
	}
	gt.lease.suspend(term)
	return gt.roundTrip(id, target, kindTimeoutNow, false, func(b []byte) []byte { return appendTimeoutNow(b, args.RPCHeader, term) }, resp)
}

// InstallSnapshot implements raft.Transport.
func (gt *groupTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return gt.m.installSnapshot(string(target), incarnationOf(id), gt.group, args, resp, data)
}

// AppendEntriesPipeline implements raft.Transport.
func (gt *groupTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	select {
	case <-gt.closed:
		return nil, errGroupClosed
	default:
	}
	p := &pipeline{
		gt: gt, id: id, target: target, to: incarnationOf(id),
		slots:    make(chan struct{}, maxInflight),
		doneCh:   make(chan raft.AppendFuture, maxInflight),
		shutdown: make(chan struct{}),
	}
	return p, nil
}

// maxInflight bounds pipelined AppendEntries per follower, counting those
// answered but not yet taken by raft; raft's sender blocks beyond it. Two
// overlaps preparing the next request with waiting for the last answer,
// and makes entries that arrive meanwhile travel together: the larger
// batches beat deeper pipelines (hashicorp/raft#541 found the same, and
// NetworkTransport defaults to 2). Measured here: 128 gave 2.6 entries per
// request and fewer ops/s.
const maxInflight = 2

// pipeline delivers answers to raft in the order the requests were sent,
// from the connection's reader, with no goroutine of its own: a finished
// request waits in queue until every earlier one has finished too.
type pipeline struct {
	gt       *groupTransport
	id       raft.ServerID
	target   raft.ServerAddress
	to       uint64        // the follower's incarnation
	slots    chan struct{} // a slot is held from send until raft reads the answer
	doneCh   chan raft.AppendFuture
	shutdown chan struct{}

	mu        sync.Mutex
	queue     []*appendFuture
	closeOnce sync.Once
}

// AppendEntries implements raft.AppendPipeline.
func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		t := time.NewTimer(p.gt.m.timeout)
		defer t.Stop()
		select {
		case p.slots <- struct{}{}:
		case <-t.C:
			return nil, errRPCTimeout // raft stopped reading answers
		case <-p.shutdown:
			return nil, raft.ErrPipelineShutdown
		case <-p.gt.closed:
			return nil, raft.ErrPipelineShutdown
		}
	}
	f := &appendFuture{start: time.Now(), args: args, resp: resp, done: make(chan struct{}), p: p}
	sent := p.gt.lease.now()
	p.gt.notify.sent(p.id, p.target, args.LeaderCommitIndex)
	p.gt.countAppend(args)
	p.mu.Lock()
	p.queue = append(p.queue, f)
	p.mu.Unlock()
	p.gt.m.start(string(p.target), p.to, p.gt.group, kindAppendEntries, lazy(args),
		func(b []byte) []byte { return appendAppendEntriesRequest(b, args) },
		func(body []byte, err error) {
			if err == nil {
				err = decodeResponse(body, resp)
			}
			ok := err == nil && resp.Success
			p.gt.noteAppend(p.target, ok)
			if ok && resp.Term == args.Term {
				p.gt.lease.ack(p.id, args.Term, sent)
				if len(args.Entries) > 0 {
					p.gt.notify.acked()
				}
			}
			f.err = err
			close(f.done)
			p.deliver()
		})
	return f, nil
}

// deliver hands raft every finished future at the head of the queue.
// doneCh has room for all of them: each holds a slot until raft reads it.
func (p *pipeline) deliver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.queue) > 0 {
		f := p.queue[0]
		select {
		case <-f.done:
		default:
			return
		}
		p.queue[0] = nil
		p.queue = p.queue[1:]
		select {
		case p.doneCh <- f:
		case <-p.shutdown:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (p *pipeline) Consumer() <-chan raft.AppendFuture { return p.doneCh }

// Close implements raft.AppendPipeline.
func (p *pipeline) Close() error {
	p.closeOnce.Do(func() { close(p.shutdown) })
	return nil
}

type appendFuture struct {
	start    time.Time
	args     *raft.AppendEntriesRequest
	resp     *raft.AppendEntriesResponse
	done     chan struct{}
	err      error
	p        *pipeline
	released atomic.Bool
}

func (f *appendFuture) Error() error {
	<-f.done
	return f.err
}
func (f *appendFuture) Start() time.Time                    { return f.start }
func (f *appendFuture) Request() *raft.AppendEntriesRequest { return f.args }

// Response implements raft.AppendFuture. Raft reads it once for each future
// it takes from Consumer, which frees the future's pipeline slot.
func (f *appendFuture) Response() *raft.AppendEntriesResponse {
	if f.released.CompareAndSwap(false, true) {
		<-f.p.slots
	}
	return f.resp
}
