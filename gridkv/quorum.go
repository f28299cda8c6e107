package gridkv

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/raftgroup"
)

// Quorum reads (Get with Quorum(q)), after "Linearizable Quorum Reads in
// Paxos" (Charapko, Ailijiang, Demirbas, HotStorage 2019), coordinated by
// a node that holds a replica of the range, leader or not:
//
//  1. Ask every voter of the range for its state (reqQuorumState): last
//     log index stored (committed or not), the index its state machine has
//     applied through, its latest configuration, and the key's value as
//     of at least that applied index.
//  2. Once the replies from voters of the newest configuration seen number
//     q (and, for q > ReplicaCount/2, a majority of that configuration),
//     let M be the largest last index among them. A write acknowledged
//     before the read began is stored on a majority, so M covers it.
//  3. Answer with the value of a reply whose applied index is at least M,
//     waiting for the remaining replies if needed (the leader's has usually
//     applied M: followers learn the commit index one AppendEntries later);
//     if none has, ask the most caught-up one to wait until it has applied
//     M and read then (reqQuorumWait).
//
// With q > ReplicaCount/2 this is linearizable without the leader. With a
// smaller q the replies need not include a replica holding the latest
// write: the read is bounded-stale (see Quorum), and step 3 answers at
// once with the reply that has applied the most.

// quorumRead serves key of range rg with Quorum(q) from this node, which
// holds rep, a replica of rg. It returns a read answer (status byte first).
func (db *DB) quorumRead(ctx context.Context, rep *replica, rg int, key string, q int) []byte {
	servers, err := rep.group.Configuration()
	if err != nil {
		return append([]byte{stUnavailable}, err.Error()...)
	}
	type reply struct {
		from raft.ServerID
		addr string
		st   raftgroup.ReplicaState
		ans  []byte
		ok   bool
	}
	var voters []raft.Server
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s)
		}
	}
	replies := make(chan reply, len(voters))
	// The creation asked for is rep's, whose configuration the voters are
	// from (the layout may not name it yet: a recovered one, say).
	wg := wireGroup(rg, rep.gen)
	req := encodeRequest(reqQuorumState, wg, []byte(key))
	timeout := db.host.RPCTimeout()
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	self := db.host.ID()
	for _, v := range voters {
		if v.ID == self {
			continue
		}
		v := v
		db.host.CallAsync(v.ID, string(v.Address), req, timeout, func(ans []byte, err error) {
			r := reply{from: v.ID, addr: string(v.Address)}
			if err == nil && len(ans) > 0 && ans[0] == stOK {
				r.st, r.ans, r.ok = decodeQuorumState(ans[1:])
			}
			replies <- r
		})
	}
	// mostApplied is the reply among rs whose replica has applied the most.
	mostApplied := func(rs []reply) reply {
		best := rs[0]
		for _, r := range rs {
			if r.st.Applied > best.st.Applied {
				best = r
			}
		}
		return best
	}
	pending := len(voters)
	var got []reply
	var m uint64 // the largest stored index of the first quorum; 0 until it answered
	if slices.ContainsFunc(voters, func(s raft.Server) bool { return s.ID == self }) {
		pending--
		if st, ans, ok := db.quorumState(rep, key); ok {
			got = append(got, reply{from: self, st: st, ans: ans, ok: true})
		}
	}
	// Phase 2, once started: a remote replica's answer after it applied m,
	// or polls of this node's own replica.
	var waited chan []byte
	var poll *time.Timer
	var pollC <-chan time.Time
	backoff := 100 * time.Microsecond
	var waitStart time.Time
	defer func() {
		if poll != nil {
			poll.Stop()
		}
		if !waitStart.IsZero() {
			db.quorumWaits.Add(1)
			db.quorumWaitNanos.Add(int64(time.Since(waitStart)))
		}
	}()
	for {
		// The newest configuration among the replies decides who counts.
		var newest raftgroup.ReplicaState
		for _, r := range got {
			if r.st.ConfigIndex >= newest.ConfigIndex {
				newest = r.st
			}
		}
		var counted []reply
		for _, r := range got {
			if slices.Contains(newest.Voters, r.from) {
				counted = append(counted, r)
			}
		}
		need := min(q, len(newest.Voters))
		if q > db.cfg.ReplicaCount/2 {
			need = max(need, len(newest.Voters)/2+1)
		}
		if m == 0 && len(newest.Voters) > 0 && len(counted) >= need {
			for _, r := range counted {
				m = max(m, r.st.LastIndex)
			}
			if q <= db.cfg.ReplicaCount/2 {
				// Bounded-stale: the reply that has applied the most. An
				// entry stored but not applied may never apply where it is
				// (the leader that would commit it is gone, and the replica
				// is cut off from any majority): the read must not wait
				// for it.
				return mostApplied(counted).ans
			}
		}
		if m > 0 {
			best := mostApplied(counted)
			if best.st.Applied+db.quorumSlack >= m {
				return best.ans
			}
			// The most caught-up replica is asked to answer once it has
			// applied m; meanwhile the other replies may bring one that
			// has (the leader's, usually: followers learn the commit
			// index one AppendEntries later).
			if waited == nil && pollC == nil {
				waitStart = time.Now()
				if best.from == self {
					poll = time.NewTimer(backoff)
					pollC = poll.C
				} else {
					waited = make(chan []byte, 1)
					body := binary.AppendUvarint(nil, m)
					db.host.CallAsync(best.from, best.addr, encodeRequest(reqQuorumWait, wg, append(body, key...)), timeout,
						func(ans []byte, err error) {
							if err != nil || len(ans) == 0 {
								ans = append([]byte{stUnavailable}, fmt.Sprint("quorum read: waiting replica: ", err)...)
							}
							waited <- ans
						})
				}
			}
		} else if pending == 0 {
			return append([]byte{stUnavailable}, fmt.Sprintf("group %d: %d of the %d replicas a Quorum(%d) read needs answered", rg, len(counted), need, q)...)
		}
		select {
		case r := <-replies:
			pending--
			if r.ok {
				got = append(got, r)
			}
		case ans := <-waited:
			return ans
		case <-pollC:
			if rep.group.AppliedThrough(rep.fsm.Applied) >= m {
				return db.readAnswer(rep, key, true)
			}
			backoff = min(2*backoff, 5*time.Millisecond)
			poll.Reset(backoff)
		case <-ctx.Done():
			return append([]byte{stUnavailable}, fmt.Sprintf("group %d: Quorum(%d) read: %v", rg, q, ctx.Err())...)
		}
	}
}

// quorumState is this replica's answer to reqQuorumState: ok is false when
// it is not a voter of its own latest configuration (removed from the
// range, it must not answer).
func (db *DB) quorumState(rep *replica, key string) (raftgroup.ReplicaState, []byte, bool) {
	st, err := rep.group.State(rep.fsm.Applied)
	if err != nil || !slices.Contains(st.Voters, db.host.ID()) {
		return st, nil, false
	}
	// Read after taking Applied: the state read is at least that recent.
	return st, db.readAnswer(rep, key, true), true
}

// readAppliedThrough reads key once this replica's state machine reflects
// every entry up to m. Followers learn the commit index from the leader's
// next AppendEntries, so the wait polls, backing off from 100µs to 5ms.
func (db *DB) readAppliedThrough(ctx context.Context, rep *replica, key string, m uint64) []byte {
	backoff := 100 * time.Microsecond
	for rep.group.AppliedThrough(rep.fsm.Applied) < m {
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return append([]byte{stUnavailable}, fmt.Sprintf("waiting to apply index %d: %v", m, ctx.Err())...)
		}
		backoff = min(2*backoff, 5*time.Millisecond)
	}
	return db.readAnswer(rep, key, true)
}

func appendQuorumState(b []byte, st raftgroup.ReplicaState, ans []byte) []byte {
	b = binary.AppendUvarint(b, st.LastIndex)
	b = binary.AppendUvarint(b, st.Applied)
	b = binary.AppendUvarint(b, st.ConfigIndex)
	b = binary.AppendUvarint(b, uint64(len(st.Voters)))
	for _, v := range st.Voters {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return append(b, ans...)
}

func decodeQuorumState(b []byte) (st raftgroup.ReplicaState, ans []byte, ok bool) {
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	var nv uint64
	var ok1, ok2, ok3, ok4 bool
	st.LastIndex, ok1 = next()
	st.Applied, ok2 = next()
	st.ConfigIndex, ok3 = next()
	nv, ok4 = next()
	if !ok1 || !ok2 || !ok3 || !ok4 || nv > 64 {
		return st, nil, false
	}
	for i := uint64(0); i < nv; i++ {
		l, ok := next()
		if !ok || l > uint64(len(b)) {
			return st, nil, false
		}
		st.Voters = append(st.Voters, raft.ServerID(b[:l]))
		b = b[l:]
	}
	if len(b) == 0 {
		return st, nil, false
	}
	return st, b, true
}
