package gridkv

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestPickWork(t *testing.T) {
	add := func(id string) confStep { return confStep{stepAdd, peer{raft.ServerID(id), id + ":1"}} }
	work := func(r int, targets ...string) groupWork {
		w := groupWork{r: r}
		for _, id := range targets {
			w.steps = append(w.steps, add(id))
		}
		return w
	}
	type picked struct {
		r       int
		targets string // the steps' targets, in the order to try them
	}
	cases := []struct {
		name           string
		work           []groupWork
		busy           []int
		slow           []string
		free, slowFree int
		want           []picked
	}{
		{"all fit", []groupWork{work(0, "a"), work(1, "b"), work(2, "c")}, nil, nil, 8, 4,
			[]picked{{0, "a"}, {1, "b"}, {2, "c"}}},
		{"busy groups skipped", []groupWork{work(0, "a"), work(1, "b"), work(2, "c")}, []int{1}, nil, 8, 4,
			[]picked{{0, "a"}, {2, "c"}}},
		{"no more than free", []groupWork{work(0, "a"), work(1, "b"), work(2, "c")}, nil, nil, 2, 1,
			[]picked{{0, "a"}, {1, "b"}}},
		{"none free", []groupWork{work(0, "a")}, nil, nil, 0, 0, nil},
		{"slow targets' groups after the others", []groupWork{work(0, "x"), work(1, "b"), work(2, "x"), work(3, "c")}, nil, []string{"x"}, 8, 4,
			[]picked{{1, "b"}, {3, "c"}, {0, "x"}, {2, "x"}}},
		{"slow targets' groups capped", []groupWork{work(0, "x"), work(1, "b"), work(2, "x"), work(3, "c")}, nil, []string{"x"}, 8, 1,
			[]picked{{1, "b"}, {3, "c"}, {0, "x"}}},
		{"slow capped to free", []groupWork{work(0, "x"), work(1, "b"), work(2, "x")}, nil, []string{"x"}, 2, 4,
			[]picked{{1, "b"}, {0, "x"}}},
		{"negative slowFree", []groupWork{work(0, "x"), work(1, "b")}, nil, []string{"x"}, 8, -1,
			[]picked{{1, "b"}}},
		{"steps to slow targets tried last", []groupWork{work(0, "a", "x", "b"), work(1, "x", "y")}, nil, []string{"x"}, 8, 4,
			[]picked{{0, "a,b,x"}, {1, "y,x"}}},
		{"busy groups skipped before the slow ones", []groupWork{work(0, "x"), work(1, "x")}, []int{0}, []string{"x"}, 8, 1,
			[]picked{{1, "x"}}},
	}
	for _, c := range cases {
		busy := map[int]bool{}
		for _, r := range c.busy {
			busy[r] = true
		}
		slow := map[raft.ServerID]bool{}
		for _, id := range c.slow {
			slow[raft.ServerID(id)] = true
		}
		orig := slices.Clone(c.work[0].steps)
		var got []picked
		for _, w := range pickWork(c.work, busy, slow, c.free, c.slowFree) {
			var ts []string
			for _, st := range w.steps {
				ts = append(ts, string(st.to.id))
			}
			got = append(got, picked{w.r, strings.Join(ts, ",")})
		}
		want := c.want
		if !slices.Equal(got, want) {
			t.Errorf("%s: picked %v, want %v", c.name, got, want)
		}
		if !slices.Equal(c.work[0].steps, orig) {
			t.Errorf("%s: the caller's steps were reordered", c.name)
		}
	}
}

// The runner never runs two step sequences of one group at once, nor more
// groups than its limit, however often and from however many goroutines
// it is asked; a group is started again once its steps end.
func TestStepRunnerOneStepPerGroup(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait()
	s := newStepRunner(&wg, 2, time.Second)
	const groups = 4
	var active [groups]atomic.Int32
	var running, overlaps, overLimit atomic.Int32
	gate := make(chan struct{})
	started := make(chan int, 100)
	run := func(w groupWork) {
		if active[w.r].Add(1) > 1 {
			overlaps.Add(1)
		}
		if running.Add(1) > 2 {
			overLimit.Add(1)
		}
		select {
		case started <- w.r:
		default:
		}
		<-gate
		running.Add(-1)
		active[w.r].Add(-1)
	}
	all := func() []groupWork {
		var work []groupWork
		for r := range groups {
			work = append(work, groupWork{r: r, steps: []confStep{{stepAdd, peer{"a", "a:1"}}}})
		}
		return work
	}
	s.startAll(all(), run)
	first := []int{<-started, <-started}
	slices.Sort(first)
	if !slices.Equal(first, []int{0, 1}) {
		t.Fatalf("started %v first, want [0 1]", first)
	}
	// Both slots held: nothing more starts, not even the groups in flight.
	for range 10 {
		s.startAll(all(), run)
	}
	s.mu.Lock()
	busy := len(s.mu.busy)
	s.mu.Unlock()
	if busy != 2 || len(started) != 0 {
		t.Fatalf("%d groups busy, %d more started, want 2 and 0", busy, len(started))
	}
	close(gate)
	wg.Wait()
	// Hammered from several goroutines with the gate open: each run ends
	// at once, and the checks in run catch any overlap.
	var callers sync.WaitGroup
	for range 4 {
		callers.Add(1)
		go func() {
			defer callers.Done()
			for range 200 {
				s.startAll(all(), run)
			}
		}()
	}
	callers.Wait()
	wg.Wait()
	for len(started) > 0 {
		<-started
	}
	if overlaps.Load() != 0 || overLimit.Load() != 0 {
		t.Fatalf("%d overlapping runs of one group, %d runs beyond the limit", overlaps.Load(), overLimit.Load())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mu.busy) != 0 || s.mu.running != 0 || s.mu.slowRunning != 0 {
		t.Fatalf("after every run ended: busy %v, running %d, slow running %d", s.mu.busy, s.mu.running, s.mu.slowRunning)
	}
}

// Steps worked out from one configuration are stale once the group has
// another: runGroup makes none of them (a step that had just removed a
// server, then "promote" it, would add it back as a voter).
func TestGroupWorkStaleAfterConfigurationChange(t *testing.T) {
	db := openT(t, Config{Timing: LocalTiming()})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var w groupWork
	for r, rep := range db.replicaList() {
		if rep.group.IsLeader() {
			w.r, w.rep = r, rep
			break
		}
	}
	if w.rep == nil {
		t.Fatal("no group led")
	}
	servers, err := w.rep.group.Configuration()
	if err != nil {
		t.Fatal(err)
	}
	w.servers = servers
	if w.stale() {
		t.Fatal("stale at the configuration it was worked out from")
	}
	// A configuration change: a non-voter that does not exist (the
	// reconciler removes it again, which is another change).
	if err := w.rep.group.AddNonvoter(ctx, "ghost#1", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if !w.stale() {
		t.Fatal("not stale after a configuration change")
	}
}
