package gridkv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Every node, leader of the key's range or not, reads a write made through
// another node with Quorum(2) and Quorum(3), at once.
func TestQuorumReadSeesLatestWrite(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), GroupsPerNode: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		key, val := fmt.Sprint("k", i), fmt.Sprint("v", i)
		if err := nodes[i%3].Set(ctx, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
		for j, db := range nodes {
			for _, q := range []int{2, 3} {
				got, err := db.Get(ctx, key, Quorum(q))
				if err != nil || string(got) != val {
					t.Fatalf("node %d Quorum(%d) Get(%s) = %q, %v; want %q", j, q, key, got, err, val)
				}
			}
		}
	}
	if _, err := nodes[1].Get(ctx, "absent", Quorum(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent key: %v", err)
	}
}

// With the range's leader cut off, a follower still serves Quorum(2) reads
// (once a new leader commits what the old one left uncommitted), and they
// see the last acknowledged write; with two replicas gone, it is
// ErrUnavailable.
func TestQuorumReadWithoutLeader(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), GroupsPerNode: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nodes[0].Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	r := groupOf(nodes[0], "k")
	leader, _ := waitLeaderAmong(t, nodes, r, 10*time.Second)
	nodes[leader].crash()
	f := (leader + 1) % 3
	got, err := nodes[f].Get(ctx, "k", Quorum(2))
	if err != nil || string(got) != "v1" {
		t.Fatalf("Quorum(2) after the leader crashed: %q, %v", got, err)
	}
	nodes[(leader+2)%3].crash()
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := nodes[f].Get(short, "k", Quorum(2)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Quorum(2) with one replica of three: %v, want ErrUnavailable", err)
	}
	if got, err := nodes[f].Get(short, "k", Quorum(1)); err != nil || string(got) != "v1" {
		t.Fatalf("Quorum(1) with one replica of three: %q, %v", got, err)
	}
}
