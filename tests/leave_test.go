package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testutil"
)

// Bounds of the shrink tests, generous for a loaded 2-core machine: within
// closeBound of a Close returning, each survivor must take a write and a
// read in every range, and its client must see a write and a read started
// after Close returned succeed; Close itself must return within
// closeReturns. Then, once each has served every range, every survivor
// must serve all of them in a single round too, so a range served once and
// lost again is caught. (How long the clients' writes and reads stalled is
// logged, not asserted.)
const (
	closeBound   = 20 * time.Second
	closeReturns = 15 * time.Second
)

// Two nodes (the examples/sessions layout: 64 ranges, two replicas each);
// one is closed; the other serves every key written before and takes new
// writes.
func TestCloseShrinksTwoToOne(t *testing.T) {
	testCloseShrinks(t, 2)
}

// Three nodes closed one by one, 3 s apart, down to one.
func TestCloseShrinksThreeToTwoToOne(t *testing.T) {
	testCloseShrinks(t, 3)
}

// setAgain sets key to val, and again while the write fails with an
// unknown outcome or no reachable leader: 64 groups per node under the race
// detector on a loaded machine elect again now and then, and a write whose
// leader lost leadership mid-commit reports ErrTimeout. Setting the same
// value again is harmless.
func setAgain(ctx context.Context, t *testing.T, db *gridkv.DB, key, val string) {
	t.Helper()
	for {
		err := db.Set(ctx, key, []byte(val))
		if err == nil {
			return
		}
		if ctx.Err() != nil || !errors.Is(err, gridkv.ErrTimeout) && !errors.Is(err, gridkv.ErrUnavailable) {
			t.Fatalf("set %s: %v", key, err)
		}
		t.Logf("set %s: %v; again", key, err)
		select { // a pause, bounded by ctx, before asking again
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func testCloseShrinks(t *testing.T, size int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The examples/sessions layout: 64 ranges, ReplicaCount 3.
	cfg := gridkv.Config{Timing: gridkv.LocalTiming(), Logger: quiet, GroupsPerNode: 64}
	c, err := StartCluster(ctx, ClusterOptions{Nodes: size, Base: &cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	probes := probeKeys(t, c.Nodes[0].DB())
	ld := newShrinkLoad(c.Nodes)
	// Keys written before any Close, through every node.
	ld.start(ctx, t, closeBound)
	defer ld.stop()

	// Close the nodes in order, leaving the last one.
	for i := 0; i < size-1; i++ {
		closing := c.Nodes[i]
		ld.clients[i].halt() // its client would see ErrClosed
		start := time.Now()
		if err := closing.DB().Close(); err != nil {
			t.Logf("close %s: %v", closing.Name, err)
		}
		closed := time.Now()
		took := closed.Sub(start)
		if took > closeReturns {
			t.Errorf("Close of %s took %v", closing.Name, took)
		}
		survivors := ld.clients[i+1:]
		served := make([]map[string]bool, len(survivors)) // per survivor, the ranges it served since the Close
		for j := range served {
			served[j] = map[string]bool{}
		}
		testutil.Eventually(t, closeBound, fmt.Sprintf("every survivor serving every range after %s closed", closing.Name), func() bool {
			all := true
			for j, cl := range survivors {
				if !servesEveryRange(cl.node.DB(), probes, served[j]) || !cl.wroteAndReadSince(closed) {
					all = false
				}
			}
			return all
		})
		testutil.Eventually(t, closeBound, fmt.Sprintf("every survivor serving every range in one round after %s closed", closing.Name), func() bool {
			for _, cl := range survivors {
				if !servesEveryRange(cl.node.DB(), probes, map[string]bool{}) {
					return false
				}
			}
			return true
		})
		// Keep the load on for 3 s after the Close before the next one (or
		// the end), so that the gap measured covers the settling too.
		testutil.Eventually(t, 30*time.Second, "3 s of load after the close", func() bool {
			return time.Since(start) >= 3*time.Second
		})
		end := time.Now()
		for _, cl := range survivors {
			s := cl.stats(start, end)
			t.Logf("%d→%d, close of %s took %v; client on %s: first success %v after Close began, longest gap without success %v, %d failed ops%s",
				size-i, size-i-1, closing.Name, took.Round(time.Millisecond), cl.node.Name,
				s.first.Round(time.Millisecond), s.gap.Round(time.Millisecond), s.failed, s.sample)
		}
	}
	ld.stop()
	if err := ld.violation(); err != nil {
		t.Fatal(err)
	}

	survivor := c.Nodes[size-1].DB()
	readyCtx, readyCancel := context.WithTimeout(ctx, 30*time.Second)
	defer readyCancel()
	if err := survivor.WaitReady(readyCtx); err != nil {
		t.Fatalf("the survivor is not ready alone: %v", err)
	}
	if n := len(survivor.Members()); n != 1 {
		t.Fatalf("the survivor sees %d members", n)
	}
	// Every acknowledged write reads back, linearizably, from the survivor.
	n := 0
	ld.acked.Range(func(k, v any) bool {
		n++
		got, err := survivor.Get(ctx, k.(string))
		if err != nil || string(got) != v.(string) {
			t.Fatalf("acknowledged %s=%s reads %q, %v", k, v, got, err)
		}
		return true
	})
	t.Logf("%d acknowledged keys read back from the survivor", n)
	if err := survivor.Set(ctx, "after", []byte("ok")); err != nil {
		t.Fatal("the survivor takes no write:", err)
	}
}

// probeKeys returns a key in each of the 64 replica groups.
func probeKeys(t *testing.T, db *gridkv.DB) []string {
	byRange := map[int]string{}
	for i := 0; len(byRange) < 64; i++ {
		key := fmt.Sprint("probe-", i)
		loc, err := db.Locate(key)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := byRange[loc.Group]; !ok {
			byRange[loc.Group] = key
		}
	}
	var keys []string
	for _, k := range byRange {
		keys = append(keys, k)
	}
	return keys
}

// servesEveryRange reports whether db has taken a write, and read it back,
// in the range of each probe key: served holds the probes it did in
// earlier calls, and each call tries the others (all at once, a write and
// its read within 3s, the machine being loaded) and adds those it does.
func servesEveryRange(db *gridkv.DB, probes []string, served map[string]bool) bool {
	var todo []string
	for _, key := range probes {
		if !served[key] {
			todo = append(todo, key)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, key := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			val := fmt.Sprint(time.Now().UnixNano())
			if err := db.Set(ctx, key, []byte(val)); err != nil {
				return
			}
			if got, err := db.Get(ctx, key); err != nil || string(got) != val {
				return
			}
			mu.Lock()
			served[key] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	return len(served) == len(probes)
}

// shrinkLoad runs one client per node: each writes new keys (each written
// once) and reads back, with default (linearizable) reads, keys whose write
// was acknowledged.
type shrinkLoad struct {
	clients []*shrinkClient
	acked   sync.Map // key -> value
	wg      sync.WaitGroup
	bad     atomic.Pointer[string] // a read that returned a wrong value
}

type shrinkClient struct {
	ld     *shrinkLoad
	node   *Node
	halted atomic.Bool
	paused atomic.Bool // no ops while set: its node is restarting

	mu       sync.Mutex
	ok       []time.Time // when each successful op ended
	failures []time.Time
	errs     []string
	lastW    time.Time // start of the last successful write
	lastR    time.Time // start of the last successful read
	writes   []writeAt // every write's end and outcome, in order
}

// writeAt is when a write ended, and whether it succeeded.
type writeAt struct {
	at time.Time
	ok bool
}

func newShrinkLoad(nodes []*Node) *shrinkLoad {
	ld := &shrinkLoad{}
	for _, n := range nodes {
		ld.clients = append(ld.clients, &shrinkClient{ld: ld, node: n})
	}
	return ld
}

// start writes 200 keys ("before-i") through the clients' nodes in turn,
// acknowledged for the clients to read, then starts the clients and waits
// (up to within) until each has 20 successes. The caller stops them.
func (ld *shrinkLoad) start(ctx context.Context, t *testing.T, within time.Duration) {
	t.Helper()
	for i := range 200 {
		key, val := fmt.Sprint("before-", i), fmt.Sprint("v", i)
		setAgain(ctx, t, ld.clients[i%len(ld.clients)].node.DB(), key, val)
		ld.acked.Store(key, val)
	}
	for _, cl := range ld.clients {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); cl.run() }()
	}
	testutil.Eventually(t, within, "load running on every node", func() bool {
		for _, cl := range ld.clients {
			if cl.successes() < 20 {
				return false
			}
		}
		return true
	})
}

func (ld *shrinkLoad) stop() {
	for _, cl := range ld.clients {
		cl.halt()
	}
	ld.wg.Wait()
}

func (ld *shrinkLoad) violation() error {
	if p := ld.bad.Load(); p != nil {
		return fmt.Errorf("%s", *p)
	}
	return nil
}

func (cl *shrinkClient) halt() { cl.halted.Store(true) }

func (cl *shrinkClient) run() {
	var keys []string // acknowledged keys this client may read
	cl.ld.acked.Range(func(k, _ any) bool { keys = append(keys, k.(string)); return true })
	pace := time.NewTicker(2 * time.Millisecond) // a light load
	defer pace.Stop()
	for i := 0; !cl.halted.Load(); i++ {
		<-pace.C
		if cl.paused.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		began := time.Now()
		if i%2 == 0 {
			key, val := fmt.Sprintf("%s-%d", cl.node.Name, i), fmt.Sprint(i)
			err := cl.node.DB().Set(ctx, key, []byte(val))
			if err == nil {
				cl.ld.acked.Store(key, val)
				keys = append(keys, key)
			}
			cl.record(true, began, err)
		} else {
			key := keys[rand.IntN(len(keys))]
			got, err := cl.node.DB().Get(ctx, key)
			if want, _ := cl.ld.acked.Load(key); err == nil && string(got) != want.(string) {
				msg := fmt.Sprintf("%s read %s = %q after %q was acknowledged", cl.node.Name, key, got, want)
				cl.ld.bad.CompareAndSwap(nil, &msg)
			}
			cl.record(false, began, err)
		}
		cancel()
	}
}

func (cl *shrinkClient) record(write bool, began time.Time, err error) {
	if cl.halted.Load() {
		return // its node may be closing: not the survivors' view
	}
	now := time.Now()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if write {
		cl.writes = append(cl.writes, writeAt{now, err == nil})
	}
	if err != nil {
		cl.failures = append(cl.failures, now)
		cl.errs = append(cl.errs, err.Error())
		return
	}
	cl.ok = append(cl.ok, now)
	if write {
		cl.lastW = began
	} else {
		cl.lastR = began
	}
}

func (cl *shrinkClient) successes() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return len(cl.ok)
}

func (cl *shrinkClient) wroteAndReadSince(t time.Time) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.lastW.After(t) && cl.lastR.After(t)
}

type shrinkStats struct {
	first  time.Duration // from Close's start to the first success after it
	gap    time.Duration // the longest time without a success, from the last one before Close began
	failed int
	sample string // a few failure messages
}

func (cl *shrinkClient) stats(from, to time.Time) shrinkStats {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var s shrinkStats
	i := sort.Search(len(cl.ok), func(i int) bool { return !cl.ok[i].Before(from) })
	prev := from
	if i > 0 {
		prev = cl.ok[i-1]
	}
	if i < len(cl.ok) {
		s.first = cl.ok[i].Sub(from)
	} else {
		s.first = to.Sub(from)
	}
	for ; i < len(cl.ok) && !cl.ok[i].After(to); i++ {
		s.gap = max(s.gap, cl.ok[i].Sub(prev))
		prev = cl.ok[i]
	}
	s.gap = max(s.gap, to.Sub(prev))
	seen := map[string]bool{}
	for j, at := range cl.failures {
		if at.Before(from) || at.After(to) {
			continue
		}
		s.failed++
		if e := errorClass(cl.errs[j]); !seen[e] && len(seen) < 3 {
			seen[e] = true
			s.sample += "; " + e
		}
	}
	return s
}
