package gridkv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

// formRecoverCluster forms a cluster of n nodes at once (BootstrapExpect),
// on LocalTiming with one group per node kept at n groups, each with n
// replicas (n <= 3), its Raft traffic through faults (nil: none), and waits
// until all are ready. The caller closes them.
func formRecoverCluster(t testing.TB, ctx context.Context, faults *faultnet.Net, n int) []*DB {
	t.Helper()
	nodes := testutil.OpenTogether(t, ctx, n, func(ctx context.Context, i int, addrs []string) (*DB, error) {
		c := Config{NodeID: fmt.Sprint("n", i), GossipAddr: addrs[i], Seeds: testutil.Seeds(addrs, i), BootstrapExpect: n, Timing: LocalTiming(), Logger: quiet, GroupsPerNode: 1}
		return open(ctx, c, &testhook.Hooks{Faults: faults, FixedGroups: true})
	})
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// joinRecoverCluster opens node id joining seed, with the settings of
// formRecoverCluster's nodes.
func joinRecoverCluster(t testing.TB, ctx context.Context, faults *faultnet.Net, id, seed string) *DB {
	t.Helper()
	c := Config{NodeID: id, Seeds: []string{seed}, Timing: LocalTiming(), Logger: quiet, GroupsPerNode: 1}
	db, err := open(ctx, c, &testhook.Hooks{Faults: faults, FixedGroups: true})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// writeKeys writes n keys through db and returns them with their values.
func writeKeys(t testing.TB, ctx context.Context, db *DB, prefix string, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := range n {
		k, v := fmt.Sprint(prefix, i), fmt.Sprint("v", i)
		if err := db.Set(ctx, k, []byte(v)); err != nil {
			t.Fatalf("Set(%s): %v", k, err)
		}
		out[k] = v
	}
	return out
}

// readBack reads every key of want through db, linearizably, and fails
// unless each holds its value.
func readBack(t testing.TB, ctx context.Context, db *DB, want map[string]string, opts ...ReadOption) {
	t.Helper()
	for k, v := range want {
		got, err := db.Get(ctx, k, opts...)
		if err != nil || string(got) != v {
			t.Fatalf("%s: Get(%s) = %q, %v; want %q", db.NodeID(), k, got, err, v)
		}
	}
}

// atReplicaCount reports whether every group has 3 replicas and a leader
// as db sees them.
func atReplicaCount(db *DB) bool {
	for _, g := range db.Status().Groups {
		if len(g.Replicas) != 3 || g.Leader == "" {
			return false
		}
	}
	return true
}

// recoverAll recovers every group on db, group 0 first (the others'
// recoveries are logged in it).
func recoverAll(t testing.TB, ctx context.Context, db *DB, opts ...RecoverOption) {
	t.Helper()
	for g := range db.groupCount() {
		if err := db.RecoverGroup(ctx, g, opts...); err != nil {
			t.Fatalf("RecoverGroup(%d): %v", g, err)
		}
	}
}

// crashSeen crashes the nodes crashed and waits until gossip on survivor
// counts members members (itself included): the crashed ones seen dead.
func crashSeen(tb testing.TB, survivor *DB, members int, crashed ...*DB) {
	tb.Helper()
	for _, db := range crashed {
		db.crash()
	}
	testutil.Eventually(tb, 30*time.Second, "gossip to see the crashed nodes dead", func() bool {
		return len(survivor.Members()) == members
	})
}

// Two of three nodes crash for good: every group, group 0 included, loses
// its majority. RecoverGroup on the survivor brings each back from its
// replica there as a new creation: every write the survivor had applied is
// served by a linearizable read, the groups take writes again, and once
// two new nodes join, the reconciler brings each group back to three
// replicas, which serve the same data. When those lose their majority
// too, the survivor recovers each group again.
func TestRecoverGroupAfterLostMajority(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	nodes := formRecoverCluster(t, ctx, nil, 3)
	survivor := nodes[0]
	defer survivor.Close()
	want := writeKeys(t, ctx, survivor, "k", 200)
	// The survivor's replicas apply every write before the others crash
	// (Stale reads this node's own replica): all of it must be served
	// after the recovery.
	waitSurvivorApplied(t, ctx, survivor, want)
	// A watch across the recovery: its positions are of the old creations.
	watch, err := survivor.Watch(ctx, "", WatchBuffer(1<<16))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	crashSeen(t, survivor, 1, nodes[1], nodes[2])
	st := survivor.Status()
	for _, g := range st.Groups {
		if g.LastIndex == 0 || g.LastTerm == 0 {
			t.Fatalf("group %d: LastIndex %d, LastTerm %d on a replica that applied writes", g.Group, g.LastIndex, g.LastTerm)
		}
	}
	if len(st.Groups) != 3 {
		t.Fatalf("%d groups, want 3", len(st.Groups))
	}
	// Group 1's recovery is logged in group 0, which has no quorum yet.
	if err := survivor.RecoverGroup(ctx, 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("RecoverGroup(1) before group 0 = %v, want ErrUnavailable", err)
	}
	if rep := survivor.replica(1); rep == nil || rep.gen != 0 {
		t.Fatal("the refused recovery changed group 1's replica")
	}
	old := map[int]*replica{}
	for g := range 3 {
		old[g] = survivor.replica(g)
	}
	if err := survivor.RecoverGroup(ctx, 0); err != nil {
		t.Fatalf("RecoverGroup(0): %v", err)
	}
	// Group 1's new creation is logged, and then fails to start (its Raft
	// group id is taken, before it is logged: the layout loop, or the
	// layout's adoption, would start it at once): the old replica stays,
	// as it was, but serves no request of this node, which knows it is
	// superseded.
	gen := survivor.replica(0).fsm.Layout().Epoch + 1 // FixedGroups: no other layout change
	squatter, err := survivor.host.CreateGroup(groupID(1, gen), fsm.New(fsm.Options{}), raftgroup.GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if logged, err := survivor.logRecovery(ctx, old[1]); err != nil || logged != gen {
		t.Fatalf("logRecovery(1) = %d, %v; want creation %d", logged, err, gen)
	}
	if _, err := survivor.startRecovered(1, old[1], gen); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("startRecovered with its group id taken = %v, want ErrUnavailable", err)
	}
	if survivor.replica(1) != old[1] || survivor.host.Group(groupID(1, 0)) == nil {
		t.Fatal("a failed start dropped the old replica")
	}
	for k := range want {
		if loc, _ := survivor.Locate(k); loc.Group == 1 {
			sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
			got, err := survivor.Get(sctx, k, Stale())
			scancel()
			if err == nil {
				t.Fatalf("Get(%s, Stale()) = %q from the superseded replica; want no answer", k, got)
			}
			break
		}
	}
	// Once it can, the recovery goes on, by the layout loop or by
	// RecoverGroup again, whichever comes first.
	_ = squatter.Shutdown()
	recoverAll(t, ctx, survivor)
	lay := survivor.lay.Load()
	for g := range 3 {
		rep := survivor.replica(g)
		if rep == nil || rep == old[g] || rep.gen == 0 || rep.gen != lay.gen(g) {
			t.Fatalf("group %d: replica %+v, layout creation %d: want a new creation, logged", g, rep, lay.gen(g))
		}
		if s, ok := lay.logged.RecoveredAt(g, rep.gen); !ok || s.ID != string(survivor.host.ID()) {
			t.Fatalf("group %d: creation %d is not logged as recovered from %s", g, rep.gen, survivor.host.ID())
		}
		if gs := survivor.Status().Groups[g]; gs.Group != g || gs.Creation != rep.gen {
			t.Fatalf("group %d: status %+v, want creation %d", g, gs, rep.gen)
		}
		if survivor.host.Group(groupID(g, 0)) != nil {
			t.Fatalf("group %d: the old creation's replica still runs", g)
		}
		// Again: the group is this replica alone now, nothing to do.
		if err := survivor.RecoverGroup(ctx, g); err != nil {
			t.Fatalf("RecoverGroup(%d) again: %v", g, err)
		}
	}
	readBack(t, ctx, survivor, want)
	after := writeKeys(t, ctx, survivor, "after", 50)
	// The new creations may stamp again versions of writes the old ones
	// lost: the watch cannot go on from its positions.
	testutil.Eventually(t, 10*time.Second, "the watch across the recovery to end", func() bool {
		return errors.Is(watch.Err(), ErrCompacted)
	})

	// Two new nodes: the reconciler adds a replica of each group on each.
	fresh := []*DB{
		joinRecoverCluster(t, ctx, nil, "n3", survivor.GossipAddr()),
		joinRecoverCluster(t, ctx, nil, "n4", survivor.GossipAddr()),
	}
	for _, db := range fresh {
		defer db.Close()
	}
	testutil.Eventually(t, 60*time.Second, "every group to have 3 replicas again", func() bool { return atReplicaCount(survivor) })
	for _, db := range fresh {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A majority without the survivor's replica answers it all.
	readBack(t, ctx, fresh[0], want, Quorum(2))
	readBack(t, ctx, fresh[1], after, Quorum(2))
	writeKeys(t, ctx, fresh[1], "last", 10)

	// The new creations lose their majority too: each is recovered from
	// the same survivor again, as a newer creation, not taken for the
	// recovery logged before. (Forced: gossip, with the first crash's dead
	// members still counted, takes long to see these dead.)
	gens := map[int]uint64{}
	for g := range 3 {
		gens[g] = survivor.replica(g).gen
	}
	waitSurvivorApplied(t, ctx, survivor, after)
	for _, db := range fresh {
		db.crash()
	}
	recoverAll(t, ctx, survivor, ForceRecover())
	for g := range 3 {
		if rep := survivor.replica(g); rep == nil || rep.gen <= gens[g] {
			t.Fatalf("group %d: replica %+v after a second recovery, want a creation newer than %d", g, rep, gens[g])
		}
	}
	readBack(t, ctx, survivor, want)
	readBack(t, ctx, survivor, after)
	writeKeys(t, ctx, survivor, "again", 10)
}

// RecoverGroup refuses while the group may have a quorum: in a healthy
// cluster, with one node of three crashed, and, without ForceRecover, when
// the other two are cut off but gossip still counts them alive. Forced,
// it recovers the cut-off node's groups; the old creations' replicas on
// the two others (a majority of the old configuration, which elects and
// takes writes while cut off) are superseded once the partition heals:
// they are dropped, a write through those nodes lands in the new
// creation, and what the old creation took meanwhile is lost, as
// RecoverGroup says. The groups get back to three replicas.
func TestRecoverGroupRefusesAndSupersedes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	faults := faultnet.New(1)
	nodes := formRecoverCluster(t, ctx, faults, 3)
	t.Cleanup(func() {
		faults.HealAll()
		for _, db := range nodes {
			db.Close()
		}
	})
	want := writeKeys(t, ctx, nodes[0], "k", 50)
	// n0's replicas are the ones kept: every write must have reached them
	// before the cut (a write acknowledged by n1 and n2 alone is lost by a
	// recovery from n0, as RecoverGroup says).
	waitSurvivorApplied(t, ctx, nodes[0], want)
	check := func(db *DB, opts ...RecoverOption) {
		t.Helper()
		for g := range 3 {
			if err := db.RecoverGroup(ctx, g, opts...); !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: RecoverGroup(%d) = %v, want ErrInvalid", db.NodeID(), g, err)
			}
		}
	}
	check(nodes[0])
	check(nodes[1])
	if err := nodes[0].RecoverGroup(ctx, maxGroups+1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("RecoverGroup of a group not held = %v, want ErrInvalid", err)
	}

	// n0 is cut off from n1 and n2 (Raft and RPC; gossip is untouched).
	cut := nodes[0].host.Addr()
	for _, db := range nodes[1:] {
		faults.Partition(cut, db.host.Addr())
	}
	testutil.Eventually(t, 10*time.Second, "n0 to lead no group", func() bool {
		for _, rep := range nodes[0].replicaList() {
			if rep.group.IsLeader() {
				return false
			}
		}
		return true
	})
	testutil.Eventually(t, 10*time.Second, "n0 to hear from no leader for HeartbeatTimeout", func() bool {
		for _, rep := range nodes[0].replicaList() {
			if time.Since(rep.group.LastContact()) < nodes[0].cfg.Timing.HeartbeatTimeout {
				return false
			}
		}
		return true
	})
	check(nodes[0]) // gossip counts all three alive
	testutil.Eventually(t, 10*time.Second, "n1 and n2 to lead every group", func() bool {
		for g := range 3 {
			if p := leaderOf(nodes[1].replica(g)); !p.known() || p.id == nodes[0].host.ID() {
				return false
			}
		}
		return true
	})
	// The old creation takes writes on its side while cut off, and its
	// layout moves on, past the epochs the recovery will bring.
	lost := writeKeys(t, ctx, nodes[1], "lost", 20)
	for range 6 {
		testutil.Eventually(t, 10*time.Second, "a layout change on the cut-off side", func() bool {
			for _, db := range nodes[1:] {
				if rep := db.replica(0); rep != nil && rep.group.IsLeader() {
					cur := rep.fsm.Layout()
					return db.applyLayoutCommand(ctx, rep, fsm.LayoutOp(cur.Epoch, cur.Genesis, cur.Groups)) == nil
				}
			}
			return false
		})
	}
	cutEpoch := nodes[1].lay.Load().epoch

	recoverAll(t, ctx, nodes[0], ForceRecover())
	readBack(t, ctx, nodes[0], want)
	newGen := map[int]uint64{}
	for g := range 3 {
		newGen[g] = nodes[0].replica(g).gen
	}
	for k := range lost {
		if _, err := nodes[0].Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%s) on the recovered side = %v, want ErrNotFound", k, err)
		}
	}

	// n1 still holds, and with n2 runs, the old creations (it cannot learn
	// the new layout while cut off). Asked for the new creation, as a
	// node that knows it asks, it serves nothing: its answer names no
	// leader, and the asker tries elsewhere. Asked for the old one, as
	// before, it serves.
	for g := range 3 {
		if rep := nodes[1].replica(g); rep == nil || rep.gen != 0 {
			t.Fatalf("group %d: n1's replica %+v, want the old creation", g, rep)
		}
		key := ""
		for k := range want {
			if loc, _ := nodes[0].Locate(k); loc.Group == g {
				key = k
				break
			}
		}
		read := append([]byte{byte(readStale)}, key...)
		ans, err := nodes[1].serve(ctx, encodeRequest(reqRead, wireGroup(g, newGen[g]), read))
		if err != nil || len(ans) == 0 || ans[0] != stRedirect || decodeRedirect(ans[1:]).known() {
			t.Fatalf("group %d: n1 asked for creation %d answered %q, %v; want a redirect naming no leader", g, newGen[g], ans, err)
		}
		if ans, err := nodes[1].serve(ctx, encodeRequest(reqRead, wireGroup(g, 0), read)); err != nil || len(ans) == 0 || ans[0] != stOK {
			t.Fatalf("group %d: n1 asked for the old creation answered %q, %v; want its value", g, ans, err)
		}
		frame := appendRead(encodeReads(reqWrites, 1, 0), wireGroup(g, newGen[g]), encodedSet(t, nodes[1].cfg.Ranges, key))
		ans, err = nodes[1].serve(ctx, frame)
		if err != nil {
			t.Fatal(err)
		}
		if answers, err := decodeReadAnswers(ans, 1); err != nil || answers[0][0] != stRedirect || decodeRedirect(answers[0][1:]).known() {
			t.Fatalf("group %d: n1 asked to write to creation %d answered %q, %v; want a redirect naming no leader", g, newGen[g], ans, err)
		}
	}

	if recovered := nodes[0].lay.Load(); recovered.epoch >= cutEpoch || recovered.creation != newGen[0] {
		t.Fatalf("recovered layout at epoch %d, creation %d; want below the cut-off side's %d, creation %d", recovered.epoch, recovered.creation, cutEpoch, newGen[0])
	}
	faults.HealAll()
	testutil.Eventually(t, 30*time.Second, "n1 and n2 to drop the old creations", func() bool {
		for _, db := range nodes[1:] {
			for g := range 3 {
				if rep := db.replica(g); rep != nil && rep.gen != newGen[g] {
					return false
				}
				if db.host.Group(groupID(g, 0)) != nil {
					return false
				}
			}
		}
		return true
	})
	// Layouts are ordered by group 0's creation first: every node holds
	// the recovered one, not the cut-off side's of a higher epoch.
	for _, db := range nodes {
		if l := db.lay.Load(); l.creation != newGen[0] {
			t.Fatalf("%s: layout of group 0 creation %d at epoch %d, want creation %d", db.NodeID(), l.creation, l.epoch, newGen[0])
		}
	}
	// Writes through the formerly cut-off nodes land in the new creations.
	through := writeKeys(t, ctx, nodes[2], "through", 30)
	readBack(t, ctx, nodes[0], through)
	for k := range lost {
		if _, err := nodes[1].Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%s) through n1 after the recovery = %v, want ErrNotFound (the old creation's write is lost)", k, err)
		}
	}
	testutil.Eventually(t, 60*time.Second, "every group to have 3 replicas again", func() bool { return atReplicaCount(nodes[0]) })
	for g := range 3 {
		if rep := nodes[0].replica(g); rep.gen != newGen[g] {
			t.Fatalf("group %d: creation %d, want %d", g, rep.gen, newGen[g])
		}
	}
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	readBack(t, ctx, nodes[1], want, Quorum(2))
	readBack(t, ctx, nodes[2], through, Quorum(2))
}

// BenchmarkRecoverGroup measures recoveries after two of three nodes
// crash (two fresh members already joined), each group in turn, group 0
// first: from a group's RecoverGroup call until a write to it succeeds
// (ms-to-writes, the median over groups and iterations), and from the
// first call until every group has 3 replicas again (ms-to-ReplicaCount).
// Each iteration forms its own cluster; run it with -benchtime Nx.
func BenchmarkRecoverGroup(b *testing.B) {
	var serving, replicated []time.Duration
	for range b.N {
		s, r := recoverOnce(b)
		serving, replicated = append(serving, s...), append(replicated, r)
	}
	b.ReportMetric(median(serving).Seconds()*1000, "ms-to-writes")
	b.ReportMetric(median(replicated).Seconds()*1000, "ms-to-ReplicaCount")
	b.Logf("per group, to writes: %v; to ReplicaCount: %v", serving, replicated)
}

func recoverOnce(b *testing.B) (serving []time.Duration, replicated time.Duration) {
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodes := formRecoverCluster(b, ctx, nil, 3)
	survivor := nodes[0]
	defer survivor.Close()
	writeKeys(b, ctx, survivor, "k", 100)
	// A key of each group.
	keyOf := map[int]string{}
	for i := 0; len(keyOf) < survivor.groupCount(); i++ {
		k := fmt.Sprint("w", i)
		loc, err := survivor.Locate(k)
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := keyOf[loc.Group]; !ok {
			keyOf[loc.Group] = k
		}
	}
	fresh := []*DB{
		joinRecoverCluster(b, ctx, nil, "n3", survivor.GossipAddr()),
		joinRecoverCluster(b, ctx, nil, "n4", survivor.GossipAddr()),
	}
	for _, db := range fresh {
		defer db.Close()
	}
	crashSeen(b, survivor, 3, nodes[1], nodes[2])
	b.StartTimer()
	first := time.Now()
	for g := range survivor.groupCount() {
		start := time.Now()
		if err := survivor.RecoverGroup(ctx, g); err != nil {
			b.Fatalf("RecoverGroup(%d): %v", g, err)
		}
		if err := survivor.Set(ctx, keyOf[g], []byte("x")); err != nil {
			b.Fatal(err)
		}
		serving = append(serving, time.Since(start))
	}
	testutil.Eventually(b, 60*time.Second, "every group to have 3 replicas again", func() bool { return atReplicaCount(survivor) })
	replicated = time.Since(first)
	b.StopTimer()
	return serving, replicated
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// encodedSet is a reqWrite body setting key, in a cluster of ranges
// ranges.
func encodedSet(t testing.TB, ranges int, key string) []byte {
	t.Helper()
	b, err := fsm.Encode(fsm.SetOp(placement.RangeOf(key, ranges), key, []byte("stale"), 0))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Group 0's leader stores a layout change it cannot commit (cut off from
// the others, which then crash): recovering group 0 from it applies that
// entry too, so the new creation is numbered past it, and logs itself.
func TestRecoverGroup0WithUncommittedLayoutEntry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	faults := faultnet.New(1)
	nodes := formRecoverCluster(t, ctx, faults, 3)
	t.Cleanup(func() {
		faults.HealAll()
		for _, db := range nodes {
			db.Close()
		}
	})
	leader := func() *DB {
		i, _ := waitLeaderAmong(t, nodes, 0, 10*time.Second)
		return nodes[i]
	}
	want := writeKeys(t, ctx, leader(), "k", 20)
	// Group 0's leader, cut off, appends a layout change it cannot
	// commit. Leadership may move before the cut (a loaded machine): then
	// nothing was appended, and the next leader is tried.
	var (
		survivor *DB
		rep      *replica
		before   fsm.Layout
	)
	for try := 1; ; try++ {
		survivor = leader()
		waitSurvivorApplied(t, ctx, survivor, want)
		rep = survivor.replica(0)
		testutil.Eventually(t, 10*time.Second, "the formation's layout to be logged", func() bool {
			return rep.fsm.Layout().Epoch > 0
		})
		before = rep.fsm.Layout()
		term := rep.group.Raft().CurrentTerm()
		for _, db := range nodes {
			if db != survivor {
				faults.Partition(survivor.host.Addr(), db.host.Addr())
			}
		}
		sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := survivor.applyLayoutCommand(sctx, rep, fsm.LayoutOp(before.Epoch, before.Genesis, before.Groups))
		scancel()
		if err == nil {
			t.Fatal("a layout change committed by a leader cut off from the others")
		}
		got := recoveredLayout(rep)
		if got.Epoch == before.Epoch+1 {
			break
		}
		// Not stored is a failure unless the replica no longer led when
		// it was asked (it then refuses, or fails the request for
		// leadership lost before the entry was appended).
		moved := errors.Is(err, raftgroup.ErrNotLeader) || errors.Is(err, raftgroup.ErrLeaderLost)
		if !moved || try == 5 {
			t.Fatalf("try %d: group 0's leader cut off stored no uncommitted layout change (%v, term moved: %v): its recovered layout is at epoch %d, want %d",
				try, err, rep.group.Raft().CurrentTerm() != term, got.Epoch, before.Epoch+1)
		}
		t.Logf("try %d: group 0's leader no longer led (%v); healing and trying the leader then", try, err)
		faults.HealAll()
	}
	crashSeen(t, survivor, 1, slices.DeleteFunc(slices.Clone(nodes), func(db *DB) bool { return db == survivor })...)
	if err := survivor.RecoverGroup(ctx, 0); err != nil {
		t.Fatalf("RecoverGroup(0): %v", err)
	}
	rep = survivor.replica(0)
	lay := rep.fsm.Layout()
	if rep.gen != before.Epoch+2 || lay.Gen(0) != rep.gen || lay.Epoch != rep.gen {
		t.Fatalf("group 0: creation %d, its layout at epoch %d naming creation %d; want creation %d, logged", rep.gen, lay.Epoch, lay.Gen(0), before.Epoch+2)
	}
	recoverAll(t, ctx, survivor)
	readBack(t, ctx, survivor, want)
	writeKeys(t, ctx, survivor, "after", 10)
}

// Group 0 is not recovered, unforced, from a replica whose layout is
// older than one a live member (or this node) announces: the groups
// created since would be lost.
func TestNewerLayoutMember(t *testing.T) {
	own := fsm.Layout{Epoch: 4, Genesis: 3, Groups: 3}
	member := func(id string, epoch, creation uint64) gossip.Member {
		return gossip.Member{Meta: gossip.Meta{NodeID: id, LayoutEpoch: epoch, LayoutCreation: creation}}
	}
	known := func(epoch, creation uint64) *layout {
		l := newLayout(64, 3).with(3, 3, epoch)
		l.creation = creation
		return l
	}
	for _, c := range []struct {
		name    string
		known   *layout
		members []gossip.Member
		want    string
	}{
		{"all at the replica's", known(4, 0), []gossip.Member{member("a", 4, 0), member("b", 3, 0)}, ""},
		{"a member ahead", known(4, 0), []gossip.Member{member("a", 4, 0), member("b", 6, 0)}, "b"},
		{"a member of a newer group 0 creation", known(4, 0), []gossip.Member{member("a", 2, 2)}, "a"},
		{"this node learned a newer one", known(5, 0), []gossip.Member{member("a", 4, 0)}, "(this node)"},
	} {
		m, ok := newerLayoutMember(own, c.known, c.members)
		if got := map[bool]string{true: m.NodeID}[ok]; got != c.want {
			t.Errorf("%s: %q (%v), want %q", c.name, got, ok, c.want)
		}
	}
}

// Group 0's new creation logs itself although RecoverGroup's caller gave
// up before it did: the layout's coordinator, on the node leading it,
// does.
func TestRecoveredGroup0LogsItselfWithoutTheCaller(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodes := formRecoverCluster(t, ctx, nil, 3)
	survivor := nodes[0]
	defer survivor.Close()
	want := writeKeys(t, ctx, survivor, "k", 20)
	waitSurvivorApplied(t, ctx, survivor, want)
	crashSeen(t, survivor, 1, nodes[1], nodes[2])
	// RecoverGroup(0) up to the start of the new creation, then the caller
	// is gone.
	old := survivor.replica(0)
	gen, err := survivor.logRecovery(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	// Two calls at once (the layout loop's and the caller's, say): the
	// second waits for the first's build and finds it done.
	started := make([]*replica, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range started {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started[i], errs[i] = survivor.startRecovered(0, old, gen)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || started[0] != started[1] || started[0] != survivor.replica(0) {
		t.Fatalf("startRecovered twice at once = %p, %v and %p, %v; want the one new replica", started[0], errs[0], started[1], errs[1])
	}
	testutil.Eventually(t, 10*time.Second, "group 0's new creation to log itself", func() bool {
		rep := survivor.replica(0)
		return rep.gen == gen && rep.fsm.Layout().Gen(0) == gen && survivor.lay.Load().gen(0) == gen
	})
	if err := survivor.RecoverGroup(ctx, 0); err != nil {
		t.Fatalf("RecoverGroup(0) after the creation logged itself: %v", err)
	}
	recoverAll(t, ctx, survivor)
	readBack(t, ctx, survivor, want)
}

// Unforced, a group is not recovered from a replica that is not a voter
// of its configuration (it may lack committed writes).
func TestRecoverRefusesANonVoter(t *testing.T) {
	db := openT(t, Config{Timing: LocalTiming()})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	rep := db.replica(0)
	for _, servers := range [][]raft.Server{
		{{ID: "other#1", Suffrage: raft.Voter}},
		{{ID: "other#1", Suffrage: raft.Voter}, {ID: db.host.ID(), Suffrage: raft.Nonvoter}},
	} {
		err := db.checkLostMajority(rep, servers)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not a voter") {
			t.Fatalf("checkLostMajority with configuration %v = %v, want ErrInvalid: not a voter", servers, err)
		}
	}
}

// waitSurvivorApplied waits until survivor's own replicas (Stale reads)
// have applied every write in want.
func waitSurvivorApplied(t *testing.T, ctx context.Context, survivor *DB, want map[string]string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "the survivor to apply every write", func() bool {
		for k, v := range want {
			if got, err := survivor.Get(ctx, k, Stale()); err != nil || string(got) != v {
				return false
			}
		}
		return true
	})
}
