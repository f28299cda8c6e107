package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startCluster opens n nodes: the first bootstraps, the others join it.
// The cluster starts with 2 replica groups and grows to 2 per node as they
// join (gridkv grows the group count with membership), moving ranges
// while the test runs.
func startCluster(t *testing.T, n int) []*gridkv.DB {
	t.Helper()
	cfg := gridkv.Config{Timing: gridkv.LocalTiming(), Logger: quiet, GroupsPerNode: 2, NodeID: "n0"}
	first, err := gridkv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*gridkv.DB{first}
	t.Cleanup(func() {
		for _, db := range nodes {
			db.Close()
		}
	})
	for i := 1; i < n; i++ {
		cfg.NodeID = fmt.Sprint("n", i)
		cfg.Seeds = []string{first.GossipAddr()}
		db, err := gridkv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, db)
	}
	waitReady(t, nodes)
	return nodes
}

func waitReady(t *testing.T, nodes []*gridkv.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatalf("%s: %v", db.NodeID(), err)
		}
	}
}

func TestEveryKeyReadableEverywhereInEveryMode(t *testing.T) {
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprint(size, "nodes"), func(t *testing.T) {
			nodes := startCluster(t, size)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const keys = 50
			for i := 0; i < keys; i++ {
				if err := nodes[i%size].Set(ctx, fmt.Sprint("key", i), []byte(fmt.Sprint("value", i))); err != nil {
					t.Fatal(err)
				}
			}
			modes := map[string][]gridkv.ReadOption{"default": nil, "readindex": {gridkv.ReadIndex()}, "quorum": {gridkv.Quorum(2)}}
			for name, opts := range modes {
				for _, db := range nodes {
					for i := 0; i < keys; i++ {
						v, err := db.Get(ctx, fmt.Sprint("key", i), opts...)
						if err != nil || string(v) != fmt.Sprint("value", i) {
							t.Fatalf("%s read of key%d on %s: %q, %v", name, i, db.NodeID(), v, err)
						}
					}
				}
			}
			// Stale reads converge.
			for _, db := range nodes {
				for i := 0; i < keys; i++ {
					deadline := time.Now().Add(10 * time.Second)
					for {
						v, err := db.Get(ctx, fmt.Sprint("key", i), gridkv.Stale())
						if err == nil && string(v) == fmt.Sprint("value", i) {
							break
						}
						if time.Now().After(deadline) {
							t.Fatalf("stale read of key%d on %s never converged: %q %v", i, db.NodeID(), v, err)
						}
						<-time.After(10 * time.Millisecond)
					}
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for _, db := range nodes {
				for {
					loc, err := db.Locate("key1")
					if err == nil && len(loc.Replicas) == 3 && loc.Leader != "" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("Locate on %s: %+v %v", db.NodeID(), loc, err)
					}
					<-time.After(20 * time.Millisecond)
				}
			}
			if got := len(nodes[size-1].Members()); got != size {
				t.Fatalf("Members: %d, want %d", got, size)
			}
		})
	}
}

func TestCASRaceHasOneWinner(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := 0; round < 5; round++ {
		key := fmt.Sprint("lock", round)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for c := 0; c < 30; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, err := nodes[c%3].CompareAndSwap(ctx, key, nil, []byte(fmt.Sprint("owner", c)))
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d winners", round, wins.Load())
		}
	}
}

func TestTTLExpiresEverywhere(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A TTL long enough for the forwarded Get below to come first on a
	// loaded machine (the race detector), short enough to wait out.
	if err := nodes[0].Set(ctx, "session", []byte("x"), gridkv.WithTTL(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, err := nodes[2].Get(ctx, "session"); err != nil || string(v) != "x" {
		t.Fatalf("before expiry: %q %v", v, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, db := range nodes {
		for {
			_, err := db.Get(ctx, "session")
			if errors.Is(err, gridkv.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still returns the expired key: %v", db.NodeID(), err)
			}
			<-time.After(20 * time.Millisecond)
		}
	}
}

// A node closed under write load loses no acknowledged write and the rest
// keep serving.
func TestNodeClosedUnderLoad(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	acked := map[string]string{}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := nodes[1+w%2] // the survivors
			for i := 0; !stop.Load(); i++ {
				key, val := fmt.Sprintf("w%d-%d", w, i), fmt.Sprint(i)
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				err := db.Set(wctx, key, []byte(val))
				wcancel()
				if err == nil {
					mu.Lock()
					acked[key] = val
					mu.Unlock()
				}
			}
		}()
	}
	<-time.After(500 * time.Millisecond)
	if err := nodes[0].Close(); err != nil {
		t.Logf("close: %v", err)
	}
	<-time.After(1500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for key, val := range acked {
		v, err := nodes[1+len(key)%2].Get(ctx, key)
		if err != nil || string(v) != val {
			t.Fatalf("acknowledged %s=%s reads %q, %v", key, val, v, err)
		}
	}
	if err := nodes[2].Set(ctx, "after", []byte("ok")); err != nil {
		t.Fatal("survivors stopped serving:", err)
	}
}

// Nodes started at the same moment with BootstrapExpect form one cluster:
// every range has exactly one leader and its replicas on the three nodes.
func TestSimultaneousStartFormsOneCluster(t *testing.T) {
	// Every node names the others as seeds.
	nodes := testutil.OpenTogether(t, context.Background(), 3, func(ctx context.Context, i int, addrs []string) (*gridkv.DB, error) {
		return gridkv.OpenContext(ctx, gridkv.Config{NodeID: fmt.Sprint("s", i), GossipAddr: addrs[i],
			Seeds: testutil.Seeds(addrs, i), BootstrapExpect: 3, Timing: gridkv.LocalTiming(), Logger: quiet, GroupsPerNode: 6})
	})
	t.Cleanup(func() {
		for _, db := range nodes {
			db.Close()
		}
	})
	waitReady(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 32; i++ {
		if err := nodes[i%3].Set(ctx, fmt.Sprint("k", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for _, db := range nodes {
		if n := len(db.Members()); n != 3 {
			t.Fatalf("%s sees %d members", db.NodeID(), n)
		}
		for i := 0; i < 32; i++ {
			if _, err := db.Get(ctx, fmt.Sprint("k", i)); err != nil {
				t.Fatalf("%s: k%d: %v", db.NodeID(), i, err)
			}
		}
	}
	// One cluster: every node agrees on each key's replica set.
	for i := 0; i < 32; i++ {
		var first []string
		for _, db := range nodes {
			loc, err := db.Locate(fmt.Sprint("k", i))
			if err != nil || len(loc.Replicas) != 3 {
				t.Fatalf("%s: Locate k%d: %+v %v", db.NodeID(), i, loc, err)
			}
			if first == nil {
				first = loc.Replicas
			} else if fmt.Sprint(first) != fmt.Sprint(loc.Replicas) {
				t.Fatalf("k%d: replicas %v vs %v", i, first, loc.Replicas)
			}
		}
	}
}

func TestErrorClass(t *testing.T) {
	got := errorClass("gridkv: timed out\nraftgroup: rpc to 127.0.0.1:4512 timed out after 1.5s")
	if want := "gridkv: timed out raftgroup: rpc to #:# timed out after #s"; got != want {
		t.Fatalf("errorClass = %q, want %q", got, want)
	}
}
