package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
)

// TestStatsAndApplyWithoutGoroutinePerCall: Applies under a context are
// waited for by the group's one waiter goroutine, not one per call; the
// counters see the frames, writes, reads and appended entries.
func TestStatsAndApplyWithoutGoroutinePerCall(t *testing.T) {
	// 200 Applies through one leader, whose counters are checked: slow
	// timings keep a stall from electing another.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	leader := c.hosts[c.waitLeader(0)]
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
	// The cut-off leader keeps leading (and its Applies pending) for
	// about a second.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	li := c.waitLeader(0)
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

// TestDetailedStats: with DetailedStats, the per-peer counters add up to
// the host's, the histograms count every write and every append, and
// Commits and the lease counters keep what a replica shut down had.
// Without it, none of that is counted.
func TestDetailedStats(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(cfg *Config) { cfg.DetailedStats = true })
	c.waitLeaders(1, 10*time.Second)
	for i := 0; i < 20; i++ {
		c.setViaLeader(0, fmt.Sprint("k", i), "v")
	}
	// A leader that has sent AppendEntries with entries: the writes', or,
	// elected since, its own first entry (soon after it is elected).
	li := -1
	eventually(t, 10*time.Second, "a leader that has sent entries", func() bool {
		li = c.leader(0)
		return li >= 0 && c.hosts[li].Stats().EntriesPerAppend.Count() > 0
	})
	leader := c.hosts[li]
	// Heartbeats keep flowing, and a write is counted for the host before
	// its peer: the per-peer sums cannot pass a host snapshot taken after.
	peers, st := leader.PeerStats(), leader.Stats()
	if len(peers) != 2 {
		t.Fatalf("PeerStats of %d peers, want 2: %+v", len(peers), peers)
	}
	var frames, writes uint64
	for _, p := range peers {
		if p.FramesWritten == 0 || p.BytesWritten < p.FramesWritten || p.FramesRead == 0 || p.BytesRead == 0 || p.Reads == 0 {
			t.Fatalf("peer %s: %+v", p.Addr, p)
		}
		frames += p.FramesWritten
		writes += p.Writes
	}
	if frames > st.FramesWritten || writes > st.Writes {
		t.Fatalf("per-peer frames %d and writes %d above the host's %+v", frames, writes, st)
	}
	// Stats reads the histograms before the counters, and a write or an
	// append is counted before it is observed: a histogram cannot count
	// more than its counter, however much traffic runs meanwhile.
	if n := st.FramesPerWrite.Count(); n == 0 || n > st.Writes || st.FramesPerWrite.Sum != st.FramesWritten {
		t.Fatalf("frames per write: %+v against %d writes", st.FramesPerWrite, st.Writes)
	}
	if n := st.EntriesPerAppend.Count(); n == 0 || n > st.AppendEntries {
		t.Fatalf("entries per append: %+v against %d appends", st.EntriesPerAppend, st.AppendEntries)
	}
	if st.Commits < 20 {
		t.Fatalf("Commits %d after 20 applies", st.Commits)
	}
	// A replica shut down keeps its counts in the host's.
	follower := c.hosts[(li+1)%3]
	before := follower.Stats()
	if before.Commits == 0 {
		t.Fatal("a follower counted no commits")
	}
	if err := follower.Group(0).Shutdown(); err != nil {
		t.Fatal(err)
	}
	if got := follower.Stats().Commits; got < before.Commits {
		t.Fatalf("Commits fell from %d to %d when the replica shut down", before.Commits, got)
	}

	plain := newTestCluster(t, 1, 1)
	plain.waitLeaders(1, 10*time.Second)
	if ps, st := plain.hosts[0].PeerStats(), plain.hosts[0].Stats(); ps != nil || st.FramesPerWrite.Count() != 0 {
		t.Fatalf("without DetailedStats: %+v, %+v", ps, st)
	}
}

func TestSizesBuckets(t *testing.T) {
	var c sizeCounts
	for _, n := range []int{0, 1, 2, 3, 4, 5, 256, 257, 1 << 20} {
		c.observe(n)
	}
	s := c.sizes(0)
	want := [SizeBuckets]uint64{0: 2, 1: 1, 2: 2, 3: 1, 8: 1, 9: 2}
	if s.Buckets != want {
		t.Fatalf("buckets %v, want %v", s.Buckets, want)
	}
	if SizeBound(0) != 1 || SizeBound(3) != 8 || SizeBound(SizeBuckets-2) != 256 || !math.IsInf(SizeBound(SizeBuckets-1), 1) {
		t.Fatal("bounds")
	}
}
