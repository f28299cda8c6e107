package gridkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/raftgroup"
)

// orphanSlack is how much later than two reconcile intervals a test
// accepts an orphan's drop: the machine running the tests is loaded, and
// while a join's configuration changes go on the leader answers "a
// configuration change is under way" and the replica asks again only on
// a later pass. Only ever a bound for a drop to happen, never for one not
// to.
const orphanSlack = 10 * time.Second

// A 4th node joins a cluster of 3 and placement moves replicas onto it;
// every drop notice the leaders send to the replicas they remove is lost.
// Each removed replica, on a live node, finds out itself and is gone
// within two reconcile intervals (and some slack for the loaded machine).
func TestOrphanReplicaDropsItself(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1}
	nodes := formCluster(t, 3, cfg)

	type removal struct {
		r       int
		node    *DB
		orphan  *replica
		removed time.Time
	}
	removals := make(chan removal, 64)
	var all []*DB // set before the join; read by the hook
	lose := func(r int, to raft.ServerID) bool {
		for _, n := range all {
			if n.host.ID() == to {
				select {
				case removals <- removal{r: r, node: n, orphan: n.replica(r), removed: time.Now()}:
				default:
				}
			}
		}
		return false // lost
	}
	c := cfg
	c.BootstrapExpect, c.NodeID, c.Logger = 0, "n3", quiet
	c.Seeds = []string{nodes[0].GossipAddr()}
	all = nodes
	for _, n := range nodes {
		n.orphans.lostDrop.Store(&lose)
	}
	db, err := Open(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.orphans.lostDrop.Store(&lose)

	within := 2*cfg.Timing.ReconcileInterval + orphanSlack
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	seen := 0
	for seen < 2 {
		var rm removal
		select {
		case rm = <-removals:
		case <-timeout.C:
			if seen == 0 {
				t.Fatal("no replica of a live node was removed within 60s of the join")
			}
			return
		}
		if rm.orphan == nil {
			continue // already gone
		}
		seen++
		testutil.Eventually(t, within-time.Since(rm.removed), "the removed replica to drop itself", func() bool {
			return rm.node.replica(rm.r) != rm.orphan
		})
		t.Logf("group %d: replica on %s removed, its drop notice lost; gone %v later",
			rm.r, rm.node.cfg.NodeID, time.Since(rm.removed).Round(time.Millisecond))
	}
}

// A replica a leader prepared (reqPrepare) is not in the group's
// configuration until the leader adds it: it is left alone meanwhile, and
// only dropped if no leader added it by the end of that window.
func TestPreparedReplicaIsNotAnOrphan(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1, ReplicaCount: 2}
	nodes := formCluster(t, 3, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A group and a node without a replica of it (3 nodes, 2 replicas).
	g, outsider := -1, (*DB)(nil)
	for r := range nodes[0].groupCount() {
		for _, n := range nodes {
			if n.replica(r) == nil {
				g, outsider = r, n
			}
		}
	}
	if outsider == nil {
		t.Fatal("every node holds every group")
	}
	// Prepared as a leader would, and never added.
	ans, err := nodes[0].host.Call(ctx, outsider.host.ID(), outsider.host.Addr(),
		encodeRequest(reqPrepare, g, binary.AppendUvarint(nil, 0)))
	if err == nil {
		err = answerErr(ans)
	}
	if err != nil {
		t.Fatal(err)
	}
	prepared := outsider.replica(g)
	if prepared == nil {
		t.Fatal("no replica after reqPrepare")
	}
	// Several passes in which it hears from nobody and is in no
	// configuration: it stays.
	passes := time.NewTimer(4 * cfg.Timing.ReconcileInterval)
	defer passes.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		if outsider.replica(g) != prepared {
			t.Fatal("a freshly prepared replica was dropped as an orphan")
		}
		select {
		case <-passes.C:
			waiting = false
		case <-tick.C:
		}
	}
	// Once the leader should have added it, it is an orphan.
	outsider.orphans.prepared.Store(g, time.Now().Add(-time.Hour))
	testutil.Eventually(t, 2*cfg.Timing.ReconcileInterval+orphanSlack, "the replica never added to drop itself", func() bool {
		return outsider.replica(g) != prepared
	})
}

// The membership answer: a leader answers from its committed
// configuration; a follower never answers (it redirects), so no replica
// drops itself on a follower's word.
func TestServeMembership(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1}
	nodes := formCluster(t, 3, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ask := func(n *DB, id raft.ServerID) []byte {
		rep := n.replica(0)
		return n.serveMembership(ctx, rep, appendDrop(nil, id, rep.gen))
	}
	// The leader's answer. Leadership may move while the test runs (a
	// loaded machine, the race detector): an answer that is not OK is
	// asked again of whoever leads then, if the node asked no longer
	// leads in the term it led in (within a second), or if it says a
	// configuration change is under way. Any other answer fails the test.
	leaderSays := func(id raft.ServerID) []byte {
		var got []byte
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the leader of group 0 to answer for %s", id), func() bool {
			for _, n := range nodes {
				rep := n.replica(0)
				if rep == nil {
					continue
				}
				term := rep.group.Raft().CurrentTerm()
				if !rep.group.IsLeader() {
					continue
				}
				got = ask(n, id)
				switch {
				case len(got) > 0 && got[0] == stOK:
					return true
				case bytes.Contains(got, []byte("a configuration change is under way")):
				case !testutil.Within(time.Second, func() bool { return !rep.group.IsLeader() || rep.group.Raft().CurrentTerm() != term }):
					t.Fatalf("the leader (%s) in its own term %d answered membership of %s: %q", n.cfg.NodeID, term, id, got)
				}
				return false
			}
			return false
		})
		return got
	}
	for _, n := range nodes {
		if got := leaderSays(n.host.ID()); !bytes.Equal(got, []byte{stOK, 1}) {
			t.Errorf("membership of %s: %q, want OK and member", n.cfg.NodeID, got)
		}
	}
	if got := leaderSays(raftgroup.ServerID("n9", 1)); !bytes.Equal(got, []byte{stOK, 0}) {
		t.Errorf("membership of a server never in the group: %q, want OK and not a member", got)
	}
	for _, n := range nodes {
		rep := n.replica(0)
		if got := n.serveMembership(ctx, rep, appendDrop(nil, n.host.ID(), rep.gen+1)); len(got) == 0 || got[0] != stInvalid {
			t.Errorf("membership asked of another creation on %s: %q, want refused", n.cfg.NodeID, got)
		}
	}
	// A follower never answers. A node counts as a follower for an answer
	// only if it was in the follower state when asked and its term did not
	// change meanwhile: a follower in a term never leads in it (it would
	// first stand as a candidate, in the next term).
	followers := map[*DB]bool{} // the nodes that answered as followers
	testutil.Eventually(t, 10*time.Second, "an answer from each follower", func() bool {
		for _, n := range nodes {
			rep := n.replica(0)
			term := rep.group.Raft().CurrentTerm()
			if rep.group.Raft().State() != raft.Follower {
				continue
			}
			got := ask(n, raftgroup.ServerID("n9", 1))
			if rep.group.Raft().CurrentTerm() != term {
				continue
			}
			followers[n] = true
			if len(got) == 0 || got[0] == stOK {
				t.Errorf("a follower (%s) answered membership: %q", n.cfg.NodeID, got)
			}
		}
		return len(followers) >= len(nodes)-1
	})
}
