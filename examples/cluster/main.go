// Command cluster shows GridKV in one command: it starts a cluster on
// loopback in this process, writes and reads through different nodes,
// shows where a key lives, measures throughput and latency, then closes a
// node and shows that service goes on.
//
//	go run ./examples/cluster              # 3 nodes
//	go run ./examples/cluster -n 5 -seconds 5
//
// Or one node per terminal, forming one cluster:
//
//	go run ./examples/cluster -single -gossip 127.0.0.1:7946
//	go run ./examples/cluster -single -join 127.0.0.1:7946
//	go run ./examples/cluster -single -join 127.0.0.1:7946
//
// In -single mode the node reads commands from standard input:
// set KEY VALUE, get KEY, del KEY, locate KEY, members, quit.
//
// With -v, GridKV's warnings (Raft's among them: elections, leaders
// stepping down) go to standard error.
//
// Every call here that the cluster may answer with "try again" goes
// through retry (or claim, for CompareAndSwap): see them at the end.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/loadgen"
)

func main() {
	n := flag.Int("n", 3, "nodes to start in this process")
	seconds := flag.Duration("seconds", 2*time.Second, "length of each throughput run")
	clients := flag.Int("clients", 64, "concurrent clients in the throughput runs")
	single := flag.Bool("single", false, "run one node (use several terminals to form a cluster)")
	join := flag.String("join", "", "-single: gossip address of a running node to join")
	gossipAddr := flag.String("gossip", "127.0.0.1:0", "-single: this node's gossip address")
	bind := flag.String("bind", "127.0.0.1:0", "-single: this node's Raft/RPC address")
	verbose := flag.Bool("v", false, "log GridKV's warnings to standard error")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}

	var err error
	if *single {
		err = runSingle(*join, *gossipAddr, *bind)
	} else {
		err = runCluster(*n, *clients, *seconds)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

var logger = slog.New(slog.NewTextHandler(io.Discard, nil))

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func runCluster(n, clients int, seconds time.Duration) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	step("starting %d nodes on loopback: node-1 bootstraps a new cluster, the others join it through its gossip address", n)
	var nodes []*gridkv.DB
	defer func() {
		for _, db := range nodes {
			db.Close()
		}
	}()
	for i := 1; i <= n; i++ {
		cfg := gridkv.Config{NodeID: fmt.Sprint("node-", i), Timing: gridkv.LocalTiming(), Logger: logger}
		if i > 1 {
			cfg.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := gridkv.Open(cfg)
		if err != nil {
			return err
		}
		nodes = append(nodes, db)
		fmt.Printf("    %-7s raft+rpc %-16s gossip %s\n", db.NodeID(), db.Addr(), db.GossipAddr())
	}

	step("waiting until every replica group has a leader and min(3, nodes) replicas")
	start := time.Now()
	readyCtx, cancelReady := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelReady()
	done := make(chan error, 1)
	go func() { done <- nodes[len(nodes)-1].WaitReady(readyCtx) }()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
			waiting = false
		case <-time.After(time.Second):
			fmt.Printf("    ... %v, leaders add replicas on the new nodes one change at a time\n", time.Since(start).Round(100*time.Millisecond))
		}
	}
	fmt.Printf("    ready after %v\n", time.Since(start).Round(time.Millisecond))
	printMembers(nodes[0])

	first, last := nodes[0], nodes[len(nodes)-1]
	step("writing 100 keys through %s, reading them back through %s", first.NodeID(), last.NodeID())
	for i := 0; i < 100; i++ {
		key, value := fmt.Sprint("user:", i), []byte(fmt.Sprint("profile ", i))
		if err := retry(ctx, func(ctx context.Context) error { return first.Set(ctx, key, value) }); err != nil {
			return err
		}
	}
	for _, mode := range []struct {
		name string
		opts []gridkv.ReadOption
	}{{"default (linearizable)", nil}, {"ReadIndex()", []gridkv.ReadOption{gridkv.ReadIndex()}}, {"Quorum(2)", []gridkv.ReadOption{gridkv.Quorum(2)}}, {"Stale()", []gridkv.ReadOption{gridkv.Stale()}}} {
		found, err := countFound(ctx, last, mode.opts...)
		if err != nil {
			return err
		}
		fmt.Printf("    %-24s %d of 100 found\n", mode.name, found)
	}
	ok, err := claim(ctx, last, "lock:report", []byte(last.NodeID()))
	if err != nil {
		return err
	}
	fmt.Printf("    claim(lock:report for %s) with CompareAndSwap from absent: got it=%v\n", last.NodeID(), ok)

	const key = "user:42"
	loc, err := first.Locate(key)
	if err != nil {
		return err
	}
	step("where does %q live? range %d of 1024, in replica group %d, leader %s, replicas %v", key, loc.Range, loc.Group, loc.Leader, loc.Replicas)

	step("throughput: %d clients spread over %d nodes, 10,000 keys, 64-byte values, %v per run", clients, len(nodes), seconds)
	if err := loadgen.Preload(ctx, nodes, 10000, 64); err != nil {
		return err
	}
	for _, w := range loadgen.Standard(clients, seconds) {
		w.Progress = func(done int64) { fmt.Printf("\r    %-10s ... %d ops", w.Name, done) }
		r := loadgen.Run(ctx, nodes, w)
		fmt.Printf("\r    %s\n", r)
	}

	if len(nodes) < 3 {
		return nil
	}
	var victim *gridkv.DB
	for _, db := range nodes {
		if db.NodeID() == loc.Leader {
			victim = db
		}
	}
	if victim == nil {
		victim = nodes[1]
	}
	var rest []*gridkv.DB
	for _, db := range nodes {
		if db != victim {
			rest = append(rest, db)
		}
	}
	step("closing %s, the leader of %q's replica group (it hands its leaderships over and leaves)", victim.NodeID(), key)
	if err := victim.Close(); err != nil {
		fmt.Printf("    close: %v\n", err)
	}
	start = time.Now()
	other := rest[len(rest)-1]
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := retry(wctx, func(ctx context.Context) error { return other.Set(ctx, key, []byte("still here")) }); err != nil {
		return err
	}
	var v []byte
	if err := retry(wctx, func(ctx context.Context) (err error) { v, err = rest[0].Get(ctx, key); return err }); err != nil {
		return err
	}
	loc, _ = other.Locate(key)
	fmt.Printf("    wrote through %s and read %q through %s %v after the close; the group's leader is now %s\n",
		other.NodeID(), v, rest[0].NodeID(), time.Since(start).Round(time.Millisecond), loc.Leader)
	found, err := countFound(wctx, rest[0])
	if err != nil {
		return err
	}
	fmt.Printf("    %d of the 100 keys written earlier still hold their value (all but %s, rewritten above)\n", found, key)
	printMembers(rest[0])
	step("closing the remaining nodes")
	return nil
}

// countFound reads user:0..99 back through db and counts the values that
// are there and right.
func countFound(ctx context.Context, db *gridkv.DB, opts ...gridkv.ReadOption) (int, error) {
	found := 0
	for i := 0; i < 100; i++ {
		var v []byte
		err := retry(ctx, func(ctx context.Context) (err error) {
			v, err = db.Get(ctx, fmt.Sprint("user:", i), opts...)
			return err
		})
		switch {
		case err == nil && string(v) == fmt.Sprint("profile ", i):
			found++
		case err != nil && !errors.Is(err, gridkv.ErrNotFound):
			return found, err
		}
	}
	return found, nil
}

func printMembers(db *gridkv.DB) {
	fmt.Printf("    members as %s sees them:\n", db.NodeID())
	for _, m := range db.Members() {
		fmt.Printf("      %-7s raft+rpc %-16s gossip %-16s leads %d groups\n", m.ID, m.Addr, m.GossipAddr, m.Leads)
	}
}

func runSingle(join, gossipAddr, bind string) error {
	cfg := gridkv.Config{GossipAddr: gossipAddr, BindAddr: bind, Timing: gridkv.LocalTiming(), Logger: logger}
	if join != "" {
		cfg.Seeds = []string{join}
	}
	db, err := gridkv.Open(cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	fmt.Printf("node %s: raft+rpc %s, gossip %s\n", db.NodeID(), db.Addr(), db.GossipAddr())
	fmt.Printf("start more nodes with: go run ./examples/cluster -single -join %s\n", db.GossipAddr())
	fmt.Println("commands: set KEY VALUE | get KEY | del KEY | locate KEY | members | quit")
	in := bufio.NewScanner(os.Stdin)
	for fmt.Print("> "); in.Scan(); fmt.Print("> ") {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		switch {
		case f[0] == "set" && len(f) >= 3:
			err = db.Set(ctx, f[1], []byte(strings.Join(f[2:], " ")))
			report("ok", err)
		case f[0] == "get" && len(f) == 2:
			v, err := db.Get(ctx, f[1])
			report(fmt.Sprintf("%q", v), err)
		case f[0] == "del" && len(f) == 2:
			report("ok", db.Delete(ctx, f[1]))
		case f[0] == "locate" && len(f) == 2:
			loc, err := db.Locate(f[1])
			report(fmt.Sprintf("range %d, group %d, leader %s, replicas %v", loc.Range, loc.Group, loc.Leader, loc.Replicas), err)
		case f[0] == "members":
			printMembers(db)
		case f[0] == "quit":
			cancel()
			return nil
		default:
			fmt.Println("commands: set KEY VALUE | get KEY | del KEY | locate KEY | members | quit")
		}
		cancel()
	}
	return nil
}

func report(ok string, err error) {
	switch {
	case err == nil:
		fmt.Println(ok)
	case errors.Is(err, gridkv.ErrNotFound):
		fmt.Println("(not found)")
	default:
		fmt.Println("error:", err)
	}
}

// retry calls op until it succeeds, fails for good, or ctx ends, giving
// each attempt at most 5s. Two errors mean "try again":
//   - ErrUnavailable: the replica group has no leader or quorum right now (an
//     election, a node leaving); nothing was applied.
//   - ErrTimeout: the attempt ran out of time, or leadership or the
//     connection to the leader was lost mid-write: a write's outcome is
//     unknown, it may or may not have been applied.
//
// So retry is only for calls that are safe to repeat whatever the first
// attempt did: reads, and writes that are idempotent (Set of a given
// value, Delete): applying one twice leaves the same state as once. A
// CompareAndSwap is not: if an attempt that timed out did swap, its retry
// finds the new value and reports false. See claim for what to do then.
func retry(ctx context.Context, op func(ctx context.Context) error) error {
	backoff := 20 * time.Millisecond
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(attempt)
		cancel()
		if err == nil || ctx.Err() != nil ||
			!(errors.Is(err, gridkv.ErrTimeout) || errors.Is(err, gridkv.ErrUnavailable)) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// claim takes the lock at key for owner, a value no other claimant uses,
// with CompareAndSwap from absent. A CAS is not blindly retryable (see
// retry), so when it fails or its outcome is unknown, claim re-reads the
// key and decides from what is there: owner means the lock is ours (an
// earlier attempt did apply), another value means someone else holds it,
// and absent means no attempt applied, so it tries again.
func claim(ctx context.Context, db *gridkv.DB, key string, owner []byte) (bool, error) {
	for {
		ok, err := db.CompareAndSwap(ctx, key, nil, owner)
		if err == nil && ok {
			return true, nil
		}
		if err != nil && (ctx.Err() != nil ||
			!(errors.Is(err, gridkv.ErrTimeout) || errors.Is(err, gridkv.ErrUnavailable))) {
			return false, err
		}
		var held []byte
		err = retry(ctx, func(ctx context.Context) (err error) { held, err = db.Get(ctx, key); return err })
		if !errors.Is(err, gridkv.ErrNotFound) {
			return err == nil && bytes.Equal(held, owner), err
		}
	}
}
