package gridkv

import (
	"context"
	"fmt"
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
