package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
)

// TestStatsAndApplyWithoutGoroutinePerCall: Applies under a context are
// waited for by the group's one waiter goroutine, not one per call; the
// counters see the frames, writes, reads and appended entries.
func TestStatsAndApplyWithoutGoroutinePerCall(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	leader := c.hosts[c.leader(0)]
	g := leader.Group(0)
	before := leader.Stats()

	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				data, _ := fsm.Encode(fsm.SetOp(0, fmt.Sprint("k", w, "-", i), []byte("v"), 0))
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := g.Apply(ctx, data)
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	after := leader.Stats()
	if n := after.Applies - before.Applies; n != writers*each {
		t.Fatalf("Applies counted %d, want %d", n, writers*each)
	}
	// A leader serves no Host.Call and answers few requests here: only
	// stray votes could start goroutines, never one per Apply.
	if n := after.Goroutines - before.Goroutines; n >= writers*each/2 {
		t.Fatalf("%d goroutines started for %d Applies", n, writers*each)
	}
	if after.AppendEntries == before.AppendEntries || after.Entries-before.Entries < after.AppendEntries-before.AppendEntries {
		t.Fatalf("append counters: %+v then %+v", before, after)
	}
	if after.Writes == before.Writes || after.FramesWritten-before.FramesWritten < after.Writes-before.Writes {
		t.Fatalf("write counters: %+v then %+v", before, after)
	}
	if after.Reads == before.Reads || after.FramesRead == before.FramesRead {
		t.Fatalf("read counters: %+v then %+v", before, after)
	}
}

// TestApplyHonoursContextWhileQueued: a caller whose context ends gets
// ErrTimeout at once, even queued behind an earlier future the waiter is
// blocked on.
func TestApplyHonoursContextWhileQueued(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		// The cut-off leader keeps leading (and its Applies pending) for
		// about a second.
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	})
	c.waitLeaders(1, 15*time.Second)
	li := c.leader(0)
	g := c.hosts[li].Group(0)
	for i, h := range c.hosts {
		if i != li {
			c.faults.Partition(c.hosts[li].Addr(), h.Addr())
		}
	}
	data, _ := fsm.Encode(fsm.SetOp(0, "k", []byte("v"), 0))
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := g.Apply(ctx, data)
		first <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := g.Apply(ctx, data)
	if d := time.Since(start); !errors.Is(err, ErrTimeout) || d > 800*time.Millisecond {
		t.Fatalf("Apply with a 50ms context on a cut-off leader: %v after %v", err, d)
	}
	if err := <-first; err == nil {
		t.Fatal("an Apply on a cut-off leader committed")
	}
}
