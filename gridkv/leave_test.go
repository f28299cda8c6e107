package gridkv

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/testutil"
)

func TestLeaveSafe(t *testing.T) {
	voter := func(id string) raft.Server { return raft.Server{ID: raft.ServerID(id), Suffrage: raft.Voter} }
	nonvoter := func(id string) raft.Server { return raft.Server{ID: raft.ServerID(id), Suffrage: raft.Nonvoter} }
	cases := []struct {
		name         string
		servers      []raft.Server
		live         []string // besides self
		member, safe bool
	}{
		{"not a member", []raft.Server{voter("a"), voter("b")}, []string{"a", "b"}, false, true},
		{"sole voter", []raft.Server{voter("self")}, nil, true, false},
		{"sole voter and a non-voter", []raft.Server{voter("self"), nonvoter("b")}, []string{"b"}, true, false},
		{"2 to 1", []raft.Server{voter("self"), voter("a")}, []string{"a"}, true, true},
		{"2 to 1, the other down", []raft.Server{voter("self"), voter("a")}, nil, true, false},
		{"3 to 2", []raft.Server{voter("self"), voter("a"), voter("b")}, []string{"a", "b"}, true, true},
		{"3 to 2, one down", []raft.Server{voter("self"), voter("a"), voter("b")}, []string{"a"}, true, false},
		{"4 to 3, one down", []raft.Server{voter("self"), voter("a"), voter("b"), voter("c")}, []string{"a", "b"}, true, true},
		{"5 to 4, two down", []raft.Server{voter("self"), voter("a"), voter("b"), voter("c"), voter("d")}, []string{"a", "b"}, true, false},
		{"non-voters do not count", []raft.Server{voter("self"), voter("a"), nonvoter("b")}, []string{"a", "b"}, true, true},
		{"self a non-voter", []raft.Server{nonvoter("self"), voter("a")}, []string{"a"}, true, true},
	}
	for _, c := range cases {
		live := map[raft.ServerID]bool{}
		for _, id := range c.live {
			live[raft.ServerID(id)] = true
		}
		member, safe := leaveSafe(c.servers, "self", func(id raft.ServerID) bool { return live[id] })
		if member != c.member || safe != c.safe {
			t.Errorf("%s: member %v safe %v, want %v %v", c.name, member, safe, c.member, c.safe)
		}
	}
}

// After a graceful Close shrinks two nodes to one, the survivor is the
// only server of every range as soon as Close returns (it did not add the
// closing node back meanwhile) and then reads its own state directly
// (sole); a node joining later gets replicas again, and sole is dropped
// first.
func TestCloseLeavesSoleVoterThenRegrows(t *testing.T) {
	open := func(id string, seeds ...string) *DB {
		db, err := Open(Config{NodeID: id, Timing: LocalTiming(), Logger: quiet, GroupsPerNode: 8, Seeds: seeds})
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	a := open("a")
	defer a.Close()
	b := open("b", a.GossipAddr())
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range []*DB{a, b} {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 32; i++ {
		if err := b.Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Close has taken b out of every range: no reconciliation needed.
	for r, rep := range a.replicaList() {
		servers, err := rep.group.Configuration()
		if err != nil || len(servers) != 1 || servers[0].ID != a.host.ID() {
			t.Fatalf("range %d: servers %v, %v", r, servers, err)
		}
	}
	testutil.Eventually(t, 30*time.Second, "every range of the survivor sole", func() bool {
		for _, rep := range a.replicaList() {
			if !rep.sole.Load() {
				return false
			}
		}
		return true
	})
	for i := 0; i < 32; i++ {
		if v, err := a.Get(ctx, fmt.Sprint("k", i)); err != nil || string(v) != fmt.Sprint("v", i) {
			t.Fatalf("k%d: %q, %v", i, v, err)
		}
	}

	c := open("c", a.GossipAddr())
	defer c.Close()
	for _, db := range []*DB{a, c} {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for r, rep := range a.replicaList() {
		if rep.sole.Load() {
			t.Fatalf("range %d still sole with two replicas", r)
		}
	}
	for i := 0; i < 32; i++ {
		if err := c.Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint("w", i))); err != nil {
			t.Fatal(err)
		}
		for _, db := range []*DB{a, c} {
			if v, err := db.Get(ctx, fmt.Sprint("k", i)); err != nil || string(v) != fmt.Sprint("w", i) {
				t.Fatalf("%s: k%d: %q, %v", db.NodeID(), i, v, err)
			}
		}
	}
}

// Closing one of 4 nodes (3 replicas per group) re-replicates its
// replicas onto the others before it takes them out: no group's
// configuration, polled on every node while Close runs, ever has fewer
// than 3 voters, and once Close returns every group has 3 voters again,
// none of them the closed node's, without waiting for the reconciler.
func TestCloseReReplicatesFirst(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 4, GroupsPerNode: 1, ReplicaCount: 3}
	nodes := formCluster(t, 4, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 64 {
		if err := nodes[0].Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	leaving, stay := nodes[3], nodes[:3]
	gone := leaving.host.ID()
	voters := func(servers []raft.Server) int {
		n := 0
		for _, s := range servers {
			if s.Suffrage == raft.Voter {
				n++
			}
		}
		return n
	}
	done := make(chan struct{})
	fewest := make(chan string, 1)
	go func() {
		defer close(fewest)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range nodes {
				for r, rep := range n.replicaList() {
					// A replica being added has no configuration until the
					// leader sends it one.
					if servers, err := rep.group.Configuration(); err == nil && len(servers) > 0 && voters(servers) < 3 {
						fewest <- fmt.Sprintf("group %d on %s: %d voters: %v", r, n.cfg.NodeID, voters(servers), servers)
						return
					}
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	err := leaving.Close()
	took := time.Since(start)
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	if bad, ok := <-fewest; ok {
		t.Fatalf("a group went below ReplicaCount while a node closed: %s", bad)
	}
	t.Logf("Close took %v", took.Round(time.Millisecond))
	for r := range stay[0].groupCount() {
		// The closed node handed its leaderships away; an election may
		// still be under way.
		_, leader := waitLeaderAmong(t, stay, r, 10*time.Second)
		servers, err := leader.group.Configuration()
		if err != nil {
			t.Fatal(err)
		}
		if voters(servers) != 3 || slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == gone }) {
			t.Errorf("group %d right after Close: %v, want 3 voters without %s", r, servers, gone)
		}
	}
	for i := range 64 {
		if v, err := stay[1].Get(ctx, fmt.Sprint("k", i)); err != nil || string(v) != fmt.Sprint("v", i) {
			t.Fatalf("k%d after the close: %q, %v", i, v, err)
		}
	}
}

// With one replica per group, a closing node's groups have it as their
// only voter: it adds a replica on the node that stays, hands over, and
// is removed, so the data it held is still there after Close.
func TestCloseMovesSoleReplicas(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 2, GroupsPerNode: 2, ReplicaCount: 1}
	nodes := formCluster(t, 2, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	held := 0
	for _, rep := range nodes[1].replicaList() {
		if rep != nil {
			held++
		}
	}
	if held == 0 {
		t.Fatal("the node to close holds no group")
	}
	for i := range 64 {
		if err := nodes[0].Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[1].Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		if v, err := nodes[0].Get(ctx, fmt.Sprint("k", i)); err != nil || string(v) != fmt.Sprint("v", i) {
			t.Fatalf("k%d after the close of the node that held %d groups alone: %q, %v", i, held, v, err)
		}
	}
}
