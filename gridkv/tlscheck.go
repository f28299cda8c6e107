package gridkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/raftgroup"
)

// With Config.TLS, gossip alone does not make a member: anyone who can
// reach the gossip port (and has the GossipKey, if any) can appear in it.
// A member counts (placement, routing, Members, Locate, WaitReady) only
// once this node has completed a round trip with its incarnation over
// mutual TLS at its RPC address (Host.Ping): both sides accepted the
// other's certificate. Until then it is treated like a member not yet up
// for MemberDelay, and MemberDelay runs from that round trip. A member
// whose handshake fails is tried again every tlsRetry. Without TLS every
// gossip member counts at once, as before.

// tlsRetry is how long after a failed round trip a member is tried again.
const tlsRetry = time.Second

// tlsCheck remembers which members' incarnations passed the round trip.
//
// Threading: safe for concurrent use.
type tlsCheck struct {
	host *raftgroup.Host
	self raft.ServerID

	mu struct {
		sync.Mutex
		byID map[raft.ServerID]*tlsState
	}
}

type tlsState struct {
	addr    string
	ok      bool
	probing bool
	retry   time.Time // after a failure: when to try again
}

func newTLSCheck(host *raftgroup.Host) *tlsCheck {
	c := &tlsCheck{host: host, self: host.ID()}
	c.mu.byID = map[raft.ServerID]*tlsState{}
	return c
}

// filter returns the members of ms that count: this node, and those that
// passed the round trip at the address they announce. A member whose
// gossip name is not the NodeID it announces never counts: gossip names
// are unique among live members, NodeIDs in metadata are not, so another
// member could otherwise announce the metadata of one that passed.
func (c *tlsCheck) filter(ms []gossip.Member) []gossip.Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := ms[:0:0]
	for _, m := range ms {
		if m.Name != m.Meta.NodeID {
			continue
		}
		id := memberServerID(m)
		if st := c.mu.byID[id]; id == c.self || st != nil && st.ok && st.addr == m.Meta.RPCAddr {
			out = append(out, m)
		}
	}
	return out
}

// due returns the members of ms to try now, marked as being tried, and
// forgets members no longer in ms.
func (c *tlsCheck) due(ms []gossip.Member) []gossip.Member {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	present := make(map[raft.ServerID]bool, len(ms))
	var out []gossip.Member
	for _, m := range ms {
		if m.Name != m.Meta.NodeID {
			continue // never counts (see filter), and must not reset the state of the member it names
		}
		id := memberServerID(m)
		present[id] = true
		if id == c.self {
			continue
		}
		st := c.mu.byID[id]
		if st == nil || st.addr != m.Meta.RPCAddr {
			st = &tlsState{addr: m.Meta.RPCAddr}
			c.mu.byID[id] = st
		}
		if st.ok || st.probing || now.Before(st.retry) {
			continue
		}
		st.probing = true
		out = append(out, m)
	}
	for id, st := range c.mu.byID {
		if !present[id] && !st.probing {
			delete(c.mu.byID, id)
		}
	}
	return out
}

// try makes the round trip with m (marked by due) and records the outcome.
func (c *tlsCheck) try(ctx context.Context, m gossip.Member) error {
	ctx, cancel := context.WithTimeout(ctx, c.host.RPCTimeout())
	err := c.host.Ping(ctx, memberServerID(m), m.Meta.RPCAddr)
	cancel()
	c.mu.Lock()
	if st := c.mu.byID[memberServerID(m)]; st != nil && st.addr == m.Meta.RPCAddr {
		st.probing, st.ok = false, err == nil
		if err != nil {
			st.retry = time.Now().Add(tlsRetry)
		}
	}
	c.mu.Unlock()
	return err
}

// tryAll tries every member of ms that is due, at once, and waits: it
// returns how many round trips succeeded and the last error.
func (c *tlsCheck) tryAll(ctx context.Context, ms []gossip.Member) (ok int, err error) {
	due := c.due(ms)
	errs := make(chan error, len(due))
	for _, m := range due {
		go func() { errs <- c.try(ctx, m) }()
	}
	for range due {
		if e := <-errs; e == nil {
			ok++
		} else {
			err = e
		}
	}
	return ok, err
}

func memberServerID(m gossip.Member) raft.ServerID {
	return raftgroup.ServerID(m.Meta.NodeID, m.Meta.Incarnation)
}

// members is the membership this node uses: gossip's live members, and
// with TLS only those that passed the round trip (see tlsCheck).
func (db *DB) members() []gossip.Member {
	ms := db.gsp.Members()
	if db.tls == nil {
		return ms
	}
	return db.tls.filter(ms)
}

// checkTLS starts round trips, on goroutines db.wg waits for, with the
// gossip members that are due one (see tlsCheck). Called from a loop of
// the node's own, so its wg.Add cannot race with Close's Wait.
func (db *DB) checkTLS() {
	if db.tls == nil {
		return
	}
	for _, m := range db.tls.due(db.gsp.Members()) {
		db.wg.Add(1)
		go func() {
			defer db.wg.Done()
			if err := db.tls.try(db.stopCtx, m); err != nil && db.stopCtx.Err() == nil {
				db.log.Debug("member not counted yet: no round trip over mutual TLS at its RPC address",
					"member", m.Meta.NodeID, "addr", m.Meta.RPCAddr, "err", oneLine(err.Error()))
			}
		}()
	}
}

// joinTLS is the last step of joining with TLS: a round trip with every
// member at once; Open succeeds once one has answered, and the others
// count as they answer. A node whose certificate the members do not
// accept (or that does not accept theirs) never gets one, and its Open
// fails with ErrUnavailable when joinCtx ends.
func (db *DB) joinTLS(ctx, joinCtx context.Context) error {
	if db.tls == nil {
		return nil
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := db.tls.tryAll(joinCtx, db.gsp.Members())
		if ok > 0 || len(db.members()) > 1 {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-joinCtx.Done():
			if last == nil {
				last = errors.New("no member to try")
			}
			err := fmt.Errorf("joined gossip, but no member completed a round trip over mutual TLS at its RPC address (check Config.TLS: certificates, CAs, names): %v", oneLine(last.Error()))
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %w: %v", ErrTimeout, ctx.Err(), err)
			}
			return fmt.Errorf("%w: JoinTimeout %v passed: %v", ErrUnavailable, db.cfg.JoinTimeout, err)
		case <-tick.C:
		}
	}
}
