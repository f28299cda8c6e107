package gridkv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// When two of three nodes crash at once, every range loses its majority:
// requests fail with ErrUnavailable once failure detection has noticed,
// instead of waiting out the caller's deadline.
func TestLostMajorityIsUnavailable(t *testing.T) {
	var nodes []*DB
	for i := 0; i < 3; i++ {
		cfg := Config{NodeID: fmt.Sprint("n", i), Timing: LocalTiming(), Logger: quiet, GroupsPerNode: 8}
		if i > 0 {
			cfg.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, db)
	}
	defer nodes[0].Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	nodes[1].crash()
	nodes[2].crash()
	deadline := time.Now().Add(30 * time.Second)
	for {
		short, cancelShort := context.WithTimeout(ctx, time.Second)
		err := nodes[0].Set(short, "k", []byte("w"))
		cancelShort()
		if errors.Is(err, ErrUnavailable) {
			break
		}
		if err == nil {
			t.Fatal("a write succeeded without a majority")
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %v, want ErrUnavailable", err)
		}
	}
	start := time.Now()
	if _, err := nodes[0].Get(ctx, "k"); !errors.Is(err, ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("Get: %v after %v", err, time.Since(start))
	}
}

// majorityGone fails requests fast only on a configuration that is the
// group's as this replica knows it; the last two cases are a replica
// whose configuration is stale, and they must be forwarded, not failed.
// The first of them failed the suite: a node just back from a partition
// held a replica whose configuration did not include the node (a replica
// removed, or prepared and not added; two of its three voters were
// incarnations that had since restarted), and for up to 15 s every request
// through that node for that group failed "no majority".
func TestMajorityGone(t *testing.T) {
	voter := func(id string) raft.Server { return raft.Server{ID: raft.ServerID(id), Suffrage: raft.Voter} }
	nonvoter := func(id string) raft.Server { return raft.Server{ID: raft.ServerID(id), Suffrage: raft.Nonvoter} }
	live := func(ids ...string) map[raft.ServerID]bool {
		m := map[raft.ServerID]bool{}
		for _, id := range ids {
			m[raft.ServerID(id)] = true
		}
		return m
	}
	cases := []struct {
		name    string
		servers []raft.Server
		live    map[raft.ServerID]bool
		leaders []raft.ServerID
		want    string // "up/voters" when gone, "" when not
	}{
		{"all live", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "b/1", "c/1"), nil, ""},
		{"a majority live", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "b/1"), nil, ""},
		{"a minority live", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1"), nil, "1/3"},
		{"half of four live", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1"), voter("d/1")}, live("a/1", "b/1"), nil, "2/4"},
		{"non-voters do not count", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1"), nonvoter("d/1")}, live("a/1", "d/1"), nil, "1/3"},
		{"an old incarnation is not live", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "b/2", "c/1"), nil, ""},
		{"two old incarnations", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "b/2", "c/2"), nil, "1/3"},
		{"a voter here announces it leads: still judged", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "b/2", "c/2"),
			[]raft.ServerID{"a/1"}, "1/3"},
		{"this node a non-voter being caught up: judged", []raft.Server{voter("b/1"), voter("c/1"), voter("d/1"), nonvoter("a/1")}, live("a/1", "b/1"),
			nil, "1/3"},
		{"this node not in the configuration: not judged", []raft.Server{voter("b/1"), voter("c/1"), voter("d/1")}, live("a/1", "b/1"), nil, ""},
		{"a leader that is not a voter here: not judged", []raft.Server{voter("a/1"), voter("b/1"), voter("c/1")}, live("a/1", "e/1"),
			[]raft.ServerID{"e/1"}, ""},
	}
	for _, c := range cases {
		up, voters, gone := majorityGone("a/1", c.servers, c.live, c.leaders)
		got := ""
		if gone {
			got = fmt.Sprintf("%d/%d", up, voters)
		}
		if got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
