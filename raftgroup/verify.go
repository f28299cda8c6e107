package raftgroup

import (
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// verifier runs leadership-confirming heartbeat rounds for one group, one at
// a time; callers arriving during a round wait for the next, so every
// caller's round was sent entirely after it arrived.
type verifier struct {
	mu      sync.Mutex
	running bool
	next    *verifyRound // gathers callers while a round runs
}

type verifyRound struct {
	done chan struct{}
	err  error
}

func (v *verifier) join(g *Group) *verifyRound {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.next == nil {
		v.next = &verifyRound{done: make(chan struct{})}
	}
	rd := v.next
	if !v.running {
		v.running = true
		v.next = nil
		if !g.h.spawn(func() { v.loop(g, rd) }) {
			v.running = false
			rd.err = ErrClosed
			close(rd.done)
		}
	}
	return rd
}

// loop runs rounds until no caller waits for another.
func (v *verifier) loop(g *Group, rd *verifyRound) {
	for {
		rd.err = g.verifyRound()
		close(rd.done)
		v.mu.Lock()
		rd = v.next
		v.next = nil
		if rd == nil {
			v.running = false
			v.mu.Unlock()
			return
		}
		v.mu.Unlock()
	}
}

// verifyRound sends one heartbeat to every other voter and succeeds when a
// quorum (counting this leader) accepted it in the current term, and this
// replica is still leader in that term afterwards.
func (g *Group) verifyRound() error {
	r := g.raft
	if r.State() != raft.Leader {
		return fmt.Errorf("%w: group %d", ErrNotLeader, g.ID)
	}
	term := r.CurrentTerm()
	servers, err := g.Configuration()
	if err != nil {
		return err
	}
	self := g.h.id
	voters, selfVotes := 0, 0
	var peers []raft.Server
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if s.ID == self {
			selfVotes = 1
		} else {
			peers = append(peers, s)
		}
	}
	need := voters/2 + 1
	addr := []byte(g.h.Addr())
	acks := make(chan bool, len(peers))
	for _, p := range peers {
		req := &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(self), Addr: addr},
			Term:      term,
			//lint:ignore SA1019 raft still reads it from old peers
			Leader: addr,
		}
		sent := g.h.spawn(func() {
			var resp raft.AppendEntriesResponse
			at := g.lease.now()
			err := g.trans.roundTripWithin(g.trans.m.beatTimeout, p.ID, p.Address, kindAppendEntries, false,
				func(b []byte) []byte { return appendAppendEntriesRequest(b, req) }, &resp)
			ok := err == nil && resp.Success && resp.Term == term
			if ok {
				g.lease.ack(p.ID, term, at)
			}
			acks <- ok
		})
		if !sent {
			acks <- false
		}
	}
	got, pending := selfVotes, len(peers)
	for pending > 0 && got < need && got+pending >= need {
		if <-acks {
			got++
		}
		pending--
	}
	if got < need {
		return fmt.Errorf("%w: group %d: %d of %d voters confirmed leadership", ErrLeaderLost, g.ID, got, voters)
	}
	if r.State() != raft.Leader || r.CurrentTerm() != term {
		return fmt.Errorf("%w: group %d: stepped down during the round", ErrLeaderLost, g.ID)
	}
	return nil
}
