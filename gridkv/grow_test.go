package gridkv

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/placement"
)

func TestNextLayoutStep(t *testing.T) {
	created := []fsm.Created{{Gen: 2, Servers: []fsm.Server{{ID: "a"}}}, {Gen: 3, Servers: []fsm.Server{{ID: "b"}}}}
	for _, c := range []struct {
		name string
		cur  fsm.Layout
		want int
		step layoutStep
	}{
		{"nothing logged", fsm.Layout{}, 8, layoutStep{layoutInit, 6}},
		{"as wanted", fsm.Layout{Epoch: 1, Genesis: 6, Groups: 6}, 6, layoutStep{kind: layoutDone}},
		{"never shrinks", fsm.Layout{Epoch: 1, Genesis: 6, Groups: 6}, 4, layoutStep{kind: layoutDone}},
		{"create the first new group", fsm.Layout{Epoch: 1, Genesis: 6, Groups: 6}, 8, layoutStep{layoutCreate, 6}},
		{"create the next", fsm.Layout{Epoch: 2, Genesis: 6, Groups: 6, Created: created[:1]}, 8, layoutStep{layoutCreate, 7}},
		{"all created: start them", fsm.Layout{Epoch: 3, Genesis: 6, Groups: 6, Created: created}, 8, layoutStep{layoutStart, 8}},
		{"members left meanwhile: start what exists", fsm.Layout{Epoch: 3, Genesis: 6, Groups: 6, Created: created}, 6, layoutStep{layoutStart, 8}},
		{"placed", fsm.Layout{Epoch: 4, Genesis: 6, Groups: 8, Created: created}, 8, layoutStep{kind: layoutDone}},
	} {
		if got := nextLayoutStep(c.cur, 6, c.want); got != c.step {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.step)
		}
	}
}

// A 4th node joins a cluster formed by 3 (GroupsPerNode 2: 6 groups): the
// layout grows to 8 groups, the ranges whose placement changed (about 1/4,
// all to the new groups) and only those move, each range is Owned by
// exactly one group, and every key reads back from every node.
func TestJoinGrowsGroups(t *testing.T) {
	cfg := Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 2}
	nodes := formCluster(t, 3, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	ranges := nodes[0].cfg.Ranges
	if g := nodes[0].lay.Load().groups; g != 6 {
		t.Fatalf("formed with %d groups, want 6", g)
	}

	const keys = 3000
	want := map[string]string{}
	for i := range keys {
		want[fmt.Sprint("k", i)] = fmt.Sprint(strings.Repeat("v", 100), i)
	}
	writeAll(ctx, t, nodes, want)

	c := cfg
	c.BootstrapExpect, c.NodeID, c.Logger, c.Seeds = 0, "n3", quiet, []string{nodes[0].GossipAddr()}
	joined := time.Now()
	db, err := Open(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	nodes = append(nodes, db)

	owners := waitLayoutSettled(t, nodes, 8, 120*time.Second)
	settle := time.Since(joined)
	moved, bytes := 0, int64(0)
	for r := range ranges {
		before, after := placement.GroupOf(r, 6), placement.GroupOf(r, 8)
		rec := recordAt(nodes, owners[r], r)
		switch {
		case owners[r] != after:
			t.Fatalf("range %d owned by group %d, placed at %d", r, owners[r], after)
		case before == after && rec.Epoch != 1:
			t.Fatalf("range %d stayed at group %d yet is at epoch %d: it moved", r, after, rec.Epoch)
		case before != after:
			if rec.Epoch != 3 || after < 6 {
				t.Fatalf("range %d moved from %d to %d, at epoch %d", r, before, after, rec.Epoch)
			}
			moved++
			for _, n := range nodes {
				if rep := n.replica(after); rep != nil {
					bytes += rep.fsm.RangeTally(r).Bytes
					break
				}
			}
		}
	}
	frac := float64(moved) / float64(ranges)
	t.Logf("4th join: %d of %d ranges moved (%.3f, ideal 0.25), %d bytes of keys and values moved, settled %v after Open",
		moved, ranges, frac, bytes, settle.Round(time.Millisecond))
	if frac < 0.25*0.8 || frac > 0.25*1.2 {
		t.Fatalf("moved %.3f of the ranges, want 1/4 within 20%%", frac)
	}
	checkReads(ctx, t, nodes, want, nil)
	checkReads(ctx, t, nodes, want, []ReadOption{Stale()})
}

// writeAll writes want through the nodes, 16 writers at a time.
func writeAll(ctx context.Context, t *testing.T, nodes []*DB, want map[string]string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	work := make(chan string)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				if err := nodes[w%len(nodes)].Set(ctx, k, []byte(want[k])); err != nil {
					select {
					case errs <- fmt.Errorf("Set(%q): %w", k, err):
					default:
					}
				}
			}
		}()
	}
	for k := range want {
		work <- k
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// checkReads reads every key of want from every node with opts.
func checkReads(ctx context.Context, t *testing.T, nodes []*DB, want map[string]string, opts []ReadOption) {
	t.Helper()
	for _, db := range nodes {
		for k, v := range want {
			if got, err := db.Get(ctx, k, opts...); err != nil || string(got) != v {
				t.Fatalf("%s: Get(%q, %d options) = %q, %v; want %q", db.NodeID(), k, len(opts), got, err, v)
			}
		}
	}
}

// waitLayoutSettled waits until every node's layout places ranges over
// groups groups and every range is Owned by exactly one group, and in no
// handoff, on every replica, and the group its placement names if that
// group was created after formation; it returns each range's owner.
func waitLayoutSettled(t testing.TB, nodes []*DB, groups int, within time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(within)
	ranges := nodes[0].cfg.Ranges
	for {
		why := ""
		for _, db := range nodes {
			if l := db.lay.Load(); l.groups != groups && why == "" {
				why = fmt.Sprintf("%s places over %d groups", db.NodeID(), l.groups)
			}
		}
		owners := make([]int, ranges)
		for r := 0; r < ranges && why == ""; r++ {
			owner, count := -1, 0
			for g := range groups {
				for _, db := range nodes {
					rep := db.replica(g)
					if rep == nil {
						continue
					}
					switch rec := rep.fsm.Range(r); rec.State {
					case fsm.Frozen, fsm.Incoming, fsm.Sealed:
						why = fmt.Sprintf("range %d is %s in group %d", r, rec.State, g)
					case fsm.Owned:
						if owner != g {
							count++
						}
						owner = g
					}
				}
			}
			if why == "" && count != 1 {
				why = fmt.Sprintf("range %d is Owned by %d groups", r, count)
			}
			// The rebalancer moves a range whose placement names a group
			// created since formation there (rebalance).
			if to := placement.GroupOf(r, groups); why == "" && to >= nodes[0].lay.Load().genesisGroups && owner != to {
				why = fmt.Sprintf("range %d is Owned by group %d, placed at %d", r, owner, to)
			}
			owners[r] = owner
		}
		if why == "" {
			return owners
		}
		if time.Now().After(deadline) {
			t.Fatalf("layout not settled after %v: %s", within, why)
		}
		<-time.After(50 * time.Millisecond)
	}
}

// A group created with a server that is gone (it crashed, or left, before
// it started the group) never elects a leader: the coordinator creates it
// again with the members there are, as a Raft group of its own, and then
// places ranges over it. Here group 1 is logged by hand with a second
// server that never existed.
func TestCreatedGroupWithAGoneServerIsCreatedAgain(t *testing.T) {
	a := openCluster(t, 1, Config{Timing: LocalTiming(), GroupsPerNode: 1})[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := map[string]string{}
	for i := range 200 {
		want[fmt.Sprint("k", i)] = fmt.Sprint("v", i)
	}
	writeAll(ctx, t, []*DB{a}, want)

	rep := a.replica(0)
	testutil.Eventually(t, 10*time.Second, "the first layout logged", func() bool { return rep.fsm.Layout().Epoch > 0 })
	cur := rep.fsm.Layout()
	if cur.Groups != 1 || cur.Exists() != 1 {
		t.Fatalf("layout %+v, want 1 group", cur)
	}
	servers := []fsm.Server{
		{ID: string(a.host.ID()), Address: a.host.Addr()},
		{ID: "ghost/1", Address: "127.0.0.1:1"},
	}
	if err := a.applyLayoutCommand(ctx, rep, fsm.CreateGroupOp(cur.Epoch, 1, servers)); err != nil {
		t.Fatal(err)
	}
	first := rep.fsm.Layout().Gen(1)

	owners := waitLayoutSettled(t, []*DB{a}, 2, 30*time.Second)
	l := rep.fsm.Layout()
	c, _ := l.Group(1)
	if c.Gen <= first || len(c.Servers) != 1 || c.Servers[0].ID != string(a.host.ID()) {
		t.Fatalf("group 1 created at %d with %v; first created at %d", c.Gen, c.Servers, first)
	}
	if g := a.replica(1); g == nil || g.gen != c.Gen {
		t.Fatalf("replica of group 1: %+v, want gen %d", g, c.Gen)
	}
	moved := 0
	for r, g := range owners {
		if g != placement.GroupOf(r, 2) {
			t.Fatalf("range %d owned by group %d, placed at %d", r, g, placement.GroupOf(r, 2))
		}
		if g == 1 {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no range moved to group 1")
	}
	checkReads(ctx, t, []*DB{a}, want, nil)
}

// A drop notice names the creation of the group it is about; one from
// another creation, or naming another server, is refused.
func TestDropNoticeNamesTheCreation(t *testing.T) {
	for _, c := range []struct {
		body    []byte
		id      raft.ServerID
		gen     uint64
		wantsOK bool
	}{
		{appendDrop(nil, "n1/7", 0), "n1/7", 0, true},
		{appendDrop(nil, "n1/7", 12), "n1/7", 12, true},
		{[]byte("n1/7"), "n1/7", 0, true}, // without the creation: 0
		{append(appendDrop(nil, "n1/7", 12), 1), "", 0, false},
	} {
		id, gen, ok := parseDrop(c.body)
		if ok != c.wantsOK || (ok && (id != c.id || gen != c.gen)) {
			t.Errorf("parseDrop(%q) = %q, %d, %v", c.body, id, gen, ok)
		}
	}
}

// Layouts are ordered by group 0's creation first, then epoch: after a
// partition heals, the side whose group 0 was recovered never adopts the
// superseded side's layout, whatever its epoch, and the superseded side
// adopts the recovered one's although its epoch is lower.
func TestLayoutOrderedByGroup0Creation(t *testing.T) {
	self := []fsm.Server{{ID: "a"}}
	recovered := func(epoch, gen0 uint64) fsm.Layout {
		return fsm.Layout{Epoch: epoch, Genesis: 3, Groups: 3,
			Recovered: []fsm.Recovered{{Group: 0, Created: fsm.Created{Gen: gen0, Servers: self}}}}
	}
	plain := func(epoch uint64) fsm.Layout { return fsm.Layout{Epoch: epoch, Genesis: 3, Groups: 3} }
	for _, c := range []struct {
		name       string
		known, got fsm.Layout
		adopt      bool
	}{
		{"a higher epoch of the same creation", plain(3), plain(4), true},
		{"a lower epoch of the same creation", plain(4), plain(3), false},
		{"the superseded creation's, at a higher epoch", recovered(6, 5), plain(9), false},
		{"a newer creation's, at a lower epoch", plain(9), recovered(6, 5), true},
		{"a newer recovery of group 0", recovered(6, 5), recovered(8, 8), true},
		{"an older recovery of group 0, at a higher epoch", recovered(8, 8), recovered(9, 5), false},
	} {
		known, ok := newLayout(64, 3).layoutOf(c.known)
		if !ok {
			t.Fatalf("%s: the known layout was not adopted", c.name)
		}
		next, ok := known.layoutOf(c.got)
		if ok != c.adopt || ok && (next.epoch != c.got.Epoch || next.creation != c.got.Gen(0)) {
			t.Errorf("%s: adopted %v (epoch %d, creation %d), want %v", c.name, ok, next.epoch, next.creation, c.adopt)
		}
		if got := known.supersededBy(c.got.Gen(0), c.got.Epoch); got != c.adopt {
			t.Errorf("%s: supersededBy = %v, want %v", c.name, got, c.adopt)
		}
	}
	// What gossip announces is ordered the same way.
	members := []gossip.Member{
		{Meta: gossip.Meta{NodeID: "old", Groups: 3, GenesisGroups: 3, LayoutEpoch: 9}},
		{Meta: gossip.Meta{NodeID: "new", Groups: 3, GenesisGroups: 3, LayoutEpoch: 6, LayoutCreation: 5}},
	}
	if best, ok, err := clusterLayout(members); err != nil || !ok || best.NodeID != "new" {
		t.Fatalf("clusterLayout = %+v, %v, %v; want member new's", best, ok, err)
	}
}
