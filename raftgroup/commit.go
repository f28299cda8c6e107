package raftgroup

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// commitNotifier tells followers a leader's new commit index soon after it
// advances. hashicorp/raft sends it only with the next AppendEntries: new
// entries, or an empty one after CommitTimeout to 2×CommitTimeout (1 to
// 2 s here). Until then a follower has stored an entry but cannot apply
// it, which made Quorum reads wait and Stale reads lag.
//
// After an AppendEntries is acknowledged, the notifier waits commitDelay for
// raft to advance the commit index (and for a following AppendEntries to
// carry it anyway), then sends every follower that has not been sent the
// current commit index an empty AppendEntries carrying it, with
// PrevLogEntry set to that index and PrevLogTerm to its term on this
// leader. A follower accepts it only if its log holds that entry in that
// term, so, by the Log Matching property, its log matches the leader's up
// to the index it then commits: the same check raft makes before
// committing from any AppendEntries. The answers go to the notifier, not to
// raft's replication state, and count for the lease like any acked
// AppendEntries.
//
// Nothing runs while no AppendEntries is acknowledged: an idle group costs
// nothing.
type commitNotifier struct {
	gt *groupTransport

	mu    sync.Mutex
	peers map[raft.ServerID]notifyPeer
	armed bool // a firing is scheduled or under way; counted in wg
	timer *time.Timer
	shut  bool
	wg    sync.WaitGroup
}

type notifyPeer struct {
	addr raft.ServerAddress
	sent uint64 // the highest commit index sent to it
}

// commitDelay: long enough for raft's leader loop to advance the commit
// index after an ack, short against a replication round.
const commitDelay = time.Millisecond

// sent records the commit index an AppendEntries to peer carried.
func (n *commitNotifier) sent(id raft.ServerID, addr raft.ServerAddress, commit uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peers == nil {
		n.peers = make(map[raft.ServerID]notifyPeer)
	}
	p := n.peers[id]
	p.addr = addr
	p.sent = max(p.sent, commit)
	n.peers[id] = p
}

// acked arms the notifier after an AppendEntries carrying entries was
// acknowledged.
func (n *commitNotifier) acked() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.armed || n.shut {
		return
	}
	n.armed = true
	n.wg.Add(1)
	if n.timer == nil {
		n.timer = time.AfterFunc(commitDelay, n.fire)
	} else {
		n.timer.Reset(commitDelay)
	}
}

func (n *commitNotifier) fire() {
	defer n.wg.Done()
	r := n.gt.raft.Load()
	n.mu.Lock()
	n.armed = false
	if n.shut || r == nil || r.State() != raft.Leader {
		n.mu.Unlock()
		return
	}
	term := r.CurrentTerm()
	commit := r.CommitIndex()
	var to []raft.ServerID
	var addrs []raft.ServerAddress
	for id, p := range n.peers {
		if p.sent < commit {
			to, addrs = append(to, id), append(addrs, p.addr)
			p.sent = commit
			n.peers[id] = p
		}
	}
	n.mu.Unlock()
	if len(to) == 0 {
		return
	}
	var entry raft.Log
	if err := n.gt.logs.GetLog(commit, &entry); err != nil || entry.Term == 0 {
		return // compacted away: the next AppendEntries will carry it
	}
	id, addr := n.gt.selfID, []byte(n.gt.m.addr)
	for i, peer := range to {
		req := &raft.AppendEntriesRequest{
			RPCHeader:         raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: addr},
			Term:              term,
			PrevLogEntry:      commit,
			PrevLogTerm:       entry.Term,
			LeaderCommitIndex: commit,
			//lint:ignore SA1019 raft still reads it from old peers
			Leader: addr,
		}
		var resp raft.AppendEntriesResponse
		at := n.gt.lease.now()
		n.gt.m.start(string(addrs[i]), incarnationOf(peer), n.gt.group, kindAppendEntries, false,
			func(b []byte) []byte { return appendAppendEntriesRequest(b, req) },
			func(body []byte, err error) {
				if err == nil && decodeResponse(body, &resp) == nil && resp.Success && resp.Term == term {
					n.gt.lease.ack(peer, term, at)
				}
			})
	}
}

// close stops the notifier and waits for a firing under way (its sends
// end on their own: done callbacks, no goroutines).
func (n *commitNotifier) close() {
	n.mu.Lock()
	n.shut = true
	if n.armed && n.timer.Stop() {
		n.armed = false
		n.wg.Done() // the firing will not run
	}
	n.mu.Unlock()
	n.wg.Wait()
}
