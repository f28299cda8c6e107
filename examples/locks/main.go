// Command locks shows a lock that expires, with fencing tokens, on a
// GridKV cluster of three nodes started in this process:
//
//	go run ./examples/locks
//
// A worker takes the lock with CompareAndSwap from absent and a TTL, so
// the lock frees itself if its holder dies. Its fencing token is the lock
// key's version, read with GetEntry: every write of a key gives it a
// greater version, so each new holder's token is greater than all earlier
// holders'. The storage the lock protects remembers the greatest token it
// has seen and refuses a write that carries a smaller one. A holder that
// stalls past its TTL (a long GC pause, a partition) and then writes,
// believing it still holds the lock, is refused, though nothing told it
// that it lost the lock. Release is owner-only: CompareAndDelete with the
// holder's own value.
//
// With -v, GridKV's warnings go to standard error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

const (
	lockKey = "lock:nightly-report"
	ttl     = 2 * time.Second
)

func main() {
	verbose := flag.Bool("v", false, "log GridKV's warnings to standard error")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := run(logger); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// storage is the resource the lock protects. It keeps the greatest
// fencing token it has seen and refuses a write with a smaller one: that
// writer's lock expired and another holder has written since. (A real
// store would check the token in the same transaction as the write.)
type storage struct {
	mu     sync.Mutex
	newest uint64
	lines  []string
}

func (s *storage) write(token uint64, line string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.newest {
		return fmt.Errorf("refused: token %d is older than %d", token, s.newest)
	}
	s.newest = token
	s.lines = append(s.lines, line)
	return nil
}

// acquire takes the lock for owner if it is free and returns its fencing
// token. The token is read after the swap, and only if the value is still
// owner's: the lock may have expired and been taken by another meanwhile.
// (A swap that ends in ErrTimeout may or may not have applied; the caller
// can read the key to find out, as examples/sessions does.)
func acquire(ctx context.Context, db *gridkv.DB, owner string) (token uint64, ok bool, err error) {
	ok, err = db.CompareAndSwap(ctx, lockKey, nil, []byte(owner), gridkv.WithTTL(ttl))
	if err != nil || !ok {
		return 0, false, err
	}
	e, err := db.GetEntry(ctx, lockKey)
	switch {
	case errors.Is(err, gridkv.ErrNotFound):
		return 0, false, nil // expired already
	case err != nil:
		return 0, false, err
	case string(e.Value) != owner:
		return 0, false, nil
	}
	return e.Version, true, nil
}

func run(logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var nodes []*gridkv.DB
	defer func() {
		for _, db := range nodes {
			db.Close()
		}
	}()
	for i := 1; i <= 3; i++ {
		cfg := gridkv.Config{NodeID: fmt.Sprint("node-", i), Timing: gridkv.LocalTiming(), Logger: logger}
		if i > 1 {
			cfg.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := gridkv.Open(cfg)
		if err != nil {
			return err
		}
		nodes = append(nodes, db)
	}
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			return err
		}
	}
	fmt.Println("3 nodes ready; worker A calls through node-1, worker B through node-3")
	a, b := nodes[0], nodes[2]
	store := &storage{}

	tokenA, ok, err := acquire(ctx, a, "A")
	if err != nil || !ok {
		return fmt.Errorf("worker A could not take the free lock: %v %v", ok, err)
	}
	fmt.Printf("A takes %s (TTL %v), fencing token %d\n", lockKey, ttl, tokenA)
	if err := store.write(tokenA, "A: report part 1"); err != nil {
		return err
	}
	fmt.Printf("A writes with token %d: accepted\n", tokenA)

	if _, ok, err := acquire(ctx, b, "B"); err != nil || ok {
		return fmt.Errorf("worker B took a held lock: %v %v", ok, err)
	}
	fmt.Println("B tries to take the lock: held by A, refused")

	fmt.Printf("A stalls (a long GC pause) and does nothing while its TTL runs out; B retries every 100ms\n")
	start := time.Now()
	var tokenB uint64
	for {
		tokenB, ok, err = acquire(ctx, b, "B")
		if err != nil {
			return err
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	fmt.Printf("B takes the lock %v later, fencing token %d (greater than A's)\n", time.Since(start).Round(100*time.Millisecond), tokenB)
	if err := store.write(tokenB, "B: report part 1"); err != nil {
		return err
	}
	fmt.Printf("B writes with token %d: accepted\n", tokenB)

	// A wakes up, still believing it holds the lock.
	err = store.write(tokenA, "A: report part 2")
	if err == nil {
		return errors.New("the storage accepted a write from an expired lock")
	}
	fmt.Printf("A wakes up and writes with token %d: %v\n", tokenA, err)
	if released, err := a.CompareAndDelete(ctx, lockKey, []byte("A")); err != nil || released {
		return fmt.Errorf("worker A released B's lock: %v %v", released, err)
	}
	fmt.Println("A releases the lock: not its own any more, nothing deleted")
	if released, err := b.CompareAndDelete(ctx, lockKey, []byte("B")); err != nil || !released {
		return fmt.Errorf("worker B could not release its lock: %v %v", released, err)
	}
	if _, err := a.GetEntry(ctx, lockKey); !errors.Is(err, gridkv.ErrNotFound) {
		return fmt.Errorf("the lock is still there after its release: %v", err)
	}
	fmt.Println("B releases the lock: deleted, the lock is free")
	fmt.Printf("the storage holds %q\n", store.lines)
	return nil
}
