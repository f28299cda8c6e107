package gridkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/placement"
)

// keysIn returns n keys of range r (of ranges), with prefix.
func keysIn(prefix string, r, ranges, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		if k := fmt.Sprint(prefix, i); placement.RangeOf(k, ranges) == r {
			out = append(out, k)
		}
	}
	return out
}

// recordAt is group g's record of range r on the first node that has a
// replica of g and has applied at least as far as the others.
func recordAt(nodes []*DB, g, r int) fsm.RangeRecord {
	var best fsm.RangeRecord
	var applied uint64
	for _, db := range nodes {
		if db.isClosed() {
			continue
		}
		if rep := db.replica(g); rep != nil && rep.fsm.Applied() >= applied {
			best, applied = rep.fsm.Range(r), rep.fsm.Applied()
		}
	}
	return best
}

// waitSettled waits until range r is Owned by exactly one group and no
// group holds it in a handoff state, on every live replica; it returns
// the owner.
func waitSettled(t *testing.T, nodes []*DB, r int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		owner, owners, moving := -1, 0, 0
		for g := range nodes[0].groupCount() {
			for _, db := range nodes {
				if db.isClosed() {
					continue
				}
				rep := db.replica(g)
				if rep == nil {
					continue
				}
				switch rec := rep.fsm.Range(r); rec.State {
				case fsm.Frozen, fsm.Incoming, fsm.Sealed:
					moving++
				case fsm.Owned:
					if owner != g {
						owners++
					}
					owner = g
				}
			}
		}
		if owners == 1 && moving == 0 {
			return owner
		}
		if time.Now().After(deadline) {
			t.Fatalf("range %d not settled after %v: %d owners, %d handoff records", r, within, owners, moving)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// checkKeys reads every key of want from every live node, in each
// linearizable mode.
func checkKeys(ctx context.Context, t *testing.T, nodes []*DB, want map[string]string) {
	t.Helper()
	for _, db := range nodes {
		if db.isClosed() {
			continue
		}
		for k, v := range want {
			for _, opt := range [][]ReadOption{nil, {ReadIndex()}, {Quorum(2)}} {
				got, err := db.Get(ctx, k, opt...)
				switch {
				case v == "" && !errors.Is(err, ErrNotFound):
					t.Fatalf("%s: Get(%q, %v) = %q, %v; want not found", db.NodeID(), k, opt, got, err)
				case v != "" && (err != nil || string(got) != v):
					t.Fatalf("%s: Get(%q, %v) = %q, %v; want %q", db.NodeID(), k, opt, got, err, v)
				}
			}
		}
	}
}

// A range with data, TTL keys among them, moves to another group and
// back; every node reads every key at each step, writes go on after each
// move, the records end Gone/Owned at the right epochs, and a short TTL
// still expires after the copy. Then a move whose target leader dies
// mid-copy completes or rolls back, and a ~1 MB range's move is timed.
func TestMoveRange(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1})
	for _, db := range nodes {
		db.handoffTimeout.Store(int64(3 * time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ranges := nodes[0].cfg.Ranges
	lay := nodes[0].lay.Load()

	t.Run("back and forth", func(t *testing.T) {
		const r = 7
		from := lay.genesis(r)
		to := (from + 1) % lay.groups
		want := map[string]string{}
		for i, k := range keysIn("k", r, ranges, 40) {
			var opts []WriteOption
			if i%4 == 0 {
				opts = append(opts, WithTTL(time.Hour))
			}
			if err := nodes[i%3].Set(ctx, k, []byte("v"+k), opts...); err != nil {
				t.Fatal(err)
			}
			want[k] = "v" + k
		}
		short := keysIn("short", r, ranges, 1)[0]
		if err := nodes[0].Set(ctx, short, []byte("x"), WithTTL(1500*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if err := nodes[1].moveRange(ctx, r, to); err != nil {
			t.Fatal(err)
		}
		if rec := recordAt(nodes, from, r); rec.State != fsm.Gone || rec.Epoch != 3 || rec.Peer != to {
			t.Fatalf("source record %+v, want Gone(3) to %d", rec, to)
		}
		if rec := recordAt(nodes, to, r); rec.State != fsm.Owned || rec.Epoch != 3 {
			t.Fatalf("target record %+v, want Owned(3)", rec)
		}
		checkKeys(ctx, t, nodes, want)
		// Writes after the move, from every node (two still route to the
		// source and learn from its WrongGroup answer).
		for i, k := range keysIn("k", r, ranges, 40)[:9] {
			if err := nodes[i%3].Set(ctx, k, []byte("w"+k)); err != nil {
				t.Fatal(err)
			}
			want[k] = "w" + k
		}
		if g, e := nodes[2].lay.Load().routes.lookup(r); g != to || e != 3 {
			t.Fatalf("node 2 routes range %d to group %d at epoch %d, want %d at 3", r, g, e, to)
		}
		if err := nodes[2].moveRange(ctx, r, from); err != nil {
			t.Fatal(err)
		}
		if rec := recordAt(nodes, from, r); rec.State != fsm.Owned || rec.Epoch != 5 {
			t.Fatalf("source record after the move back %+v, want Owned(5)", rec)
		}
		checkKeys(ctx, t, nodes, want)
		{
			k := keysIn("cas", r, ranges, 1)[0]
			if ok, err := nodes[0].CompareAndSwap(ctx, k, nil, []byte("1")); err != nil || !ok {
				t.Fatalf("CAS of an absent key after the moves: %v, %v", ok, err)
			}
			want[k] = "1"
		}
		// The short TTL was copied verbatim: it expires on time at the
		// range's current owner.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := nodes[0].Get(ctx, short)
			if errors.Is(err, ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the short TTL key never expired: %v", err)
			}
			<-time.After(20 * time.Millisecond)
		}
		if owner := waitSettled(t, nodes, r, 10*time.Second); owner != from {
			t.Fatalf("owner %d, want %d", owner, from)
		}
	})

	t.Run("frozen time of 1 MB", func(t *testing.T) {
		const r = 11
		from := lay.genesis(r)
		to := (from + 2) % lay.groups
		val := strings.Repeat("x", 1000)
		keys := keysIn("big", r, ranges, 1000)
		for i, k := range keys {
			if err := nodes[i%3].Set(ctx, k, []byte(val)); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := nodes[0].moveRange(ctx, r, to); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		t.Logf("moved range %d (%d keys, %.2f MB) from group %d to %d: writes refused for at most %v",
			r, len(keys), float64(len(keys)*(len(val)+len(keys[0])))/1e6, from, to, took)
		if got, err := nodes[1].Get(ctx, keys[len(keys)-1]); err != nil || string(got) != val {
			t.Fatalf("after the move: %q, %v", got, err)
		}
	})

	t.Run("target leader dies mid-copy", func(t *testing.T) {
		// The target group's leader dies between two chunks of the copy;
		// node 0, which asks for the move, survives. Who leads the target
		// when the copy reaches its second chunk is known only then (the
		// leader may move on a loaded machine), so every node carries the
		// hook (consulted only by the target's leader): on nodes 1 and 2,
		// the first to reach a chunk after the first becomes the victim
		// and stops there; node 0 only notes that it copied past the first
		// chunk. A move that ends uncut is retried with another range only
		// if it succeeded and node 0 led the target through the copy.
		defer func() {
			for _, db := range nodes {
				db.chunkHook.Store(nil)
			}
		}()
		const attempts = 5
		val := strings.Repeat("y", 1000)
		want := map[string]string{}
		tried := map[int]bool{}
		for attempt := 1; ; attempt++ {
			// A target group that node 1 or 2 leads now, if any.
			to := attempt % lay.groups
			for i, found := 1, false; i < 3 && !found; i++ {
				for g, rep := range nodes[i].replicaList() {
					if rep.group.IsLeader() {
						to, found = g, true
						break
					}
				}
			}
			r := -1
			for c := range ranges {
				if g, _ := nodes[0].lay.Load().routes.lookup(c); g != to && !tried[c] {
					r = c
					break
				}
			}
			if r < 0 {
				t.Fatalf("no range left to move to group %d", to)
			}
			tried[r] = true
			for i, k := range keysIn("mid", r, ranges, 3000) { // ~3 MB: three chunks
				if err := nodes[0].Set(ctx, k, []byte(val)); err != nil {
					t.Fatal(err)
				}
				if i%300 == 0 {
					want[k] = val
				}
			}
			stopped := make(chan struct{})
			var once sync.Once
			var victim atomic.Int32
			victim.Store(-1)
			var driverCopied atomic.Bool
			for i, db := range nodes {
				hook := func(rng int, cursor string) bool {
					switch {
					case rng != r || cursor == "":
						return true
					case i == 0:
						driverCopied.Store(true)
						return true
					case victim.CompareAndSwap(-1, int32(i)) || victim.Load() == int32(i):
						once.Do(func() { close(stopped) })
						return false // dead from here on
					}
					return true
				}
				db.chunkHook.Store(&hook)
			}
			moved := make(chan error, 1)
			go func() { moved <- nodes[0].moveRange(ctx, r, to) }()
			var err error
			ended := false
			select {
			case <-stopped:
			case err = <-moved:
				ended = true
			case <-ctx.Done():
				t.Fatal("the copy never reached its second chunk")
			}
			if ended && victim.Load() < 0 {
				if err == nil && driverCopied.Load() && attempt < attempts {
					t.Logf("attempt %d: node 0 led group %d through the copy of range %d; again with another range", attempt, to, r)
					continue
				}
				t.Fatalf("the move ended before the copy was cut (attempt %d, node 0 copied past the first chunk: %v): %v",
					attempt, driverCopied.Load(), err)
			}
			v := int(victim.Load())
			nodes[v].crash()
			if !ended {
				err = <-moved
			}
			t.Logf("move of range %d after the target leader's (node %d's) crash: %v", r, v, err)
			owner := waitSettled(t, nodes, r, 15*time.Second)
			if err == nil && owner != to {
				t.Fatalf("the move succeeded but group %d owns range %d", owner, r)
			}
			live := []*DB{nodes[0], nodes[3-v]}
			checkKeys(ctx, t, live, want)
			return
		}
	})
}
