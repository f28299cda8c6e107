package gridkv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
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
