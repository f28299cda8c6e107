package gridkv

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

// A node that drops every Raft and RPC frame (it neither answers nor
// refuses) joins together with a healthy one. The steps toward the
// unresponsive node wait out their StepTimeout, again every time they are
// tried; the groups whose placement leaves it out still converge within
// about one StepTimeout and a few ReconcileIntervals, where a reconciler
// that made its leaders' steps one after another would spend a
// StepTimeout per group toward that node on every pass.
func TestReconcileAroundUnresponsiveNode(t *testing.T) {
	faults := faultnet.New(1)
	tm := LocalTiming()
	tm.StepTimeout = 2 * time.Second
	base := Config{Timing: tm, GroupsPerNode: 6, Logger: quiet}
	hooked := func(c Config) (*DB, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := open(ctx, c, &testhook.Hooks{Faults: faults, FixedGroups: true})
		if err == nil {
			t.Cleanup(func() { db.Close() })
		}
		return db, err
	}

	// a, b and c form the cluster together: 18 groups, kept at 18.
	ids := []string{"a", "b", "c", "e", "x"}
	formed := testutil.OpenTogether(t, context.Background(), 3, func(ctx context.Context, i int, addrs []string) (*DB, error) {
		c := base
		c.NodeID, c.GossipAddr, c.Seeds, c.BootstrapExpect = ids[i], addrs[i], testutil.Seeds(addrs, i), 3
		return open(ctx, c, &testhook.Hooks{Faults: faults, FixedGroups: true})
	})
	for _, db := range formed {
		t.Cleanup(func() { db.Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, db := range formed {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// e joins, healthy. x joins with every frame to and from its Raft/RPC
	// address dropped (its gossip is untouched: it stays a member, and in
	// the placement target).
	join := func(id, bind string) (*DB, error) {
		c := base
		c.NodeID, c.BindAddr, c.Seeds = id, bind, []string{formed[0].GossipAddr()}
		return hooked(c)
	}
	e, err := join("e", "")
	if err != nil {
		t.Fatal(err)
	}
	nodes := append(slices.Clone(formed), e)
	// x's address is picked before it opens, so that its frames drop from
	// the start.
	var xAddr string
	x := testutil.OpenTogether(t, context.Background(), 1, func(_ context.Context, _ int, addrs []string) (*DB, error) {
		xAddr = addrs[0]
		for _, db := range nodes {
			faults.Set(db.host.Addr(), xAddr, faultnet.Rule{Drop: 1})
			faults.Set(xAddr, db.host.Addr(), faultnet.Rule{Drop: 1})
		}
		return join("x", xAddr)
	})[0]
	t.Cleanup(faults.HealAll) // first, so that the nodes close without waiting on x
	if x.host.Addr() != xAddr {
		t.Fatalf("x advertises %s, not its BindAddr %s", x.host.Addr(), xAddr)
	}
	joined := time.Now()

	rc := formed[0].cfg.ReplicaCount
	var free, toX []int // groups whose target leaves x out, and the others
	moving := 0         // of the free ones, those whose replicas move
	for r := range formed[0].groupCount() {
		target := placement.Replicas(r, ids, rc)
		if slices.Contains(target, "x") {
			toX = append(toX, r)
			continue
		}
		free = append(free, r)
		if slices.Contains(target, "e") {
			moving++
		}
	}
	if len(toX) < 2 || moving == 0 {
		t.Fatalf("placement moves %d groups to x and %d of the others to e: the test needs both", len(toX), moving)
	}

	// Bounded: one StepTimeout for the one step that may hold a group's
	// slot, MemberDelay before the joins count, and a few passes for each
	// group's add, promote and remove (and the new replica's catch-up).
	within := tm.StepTimeout + tm.MemberDelay + 8*tm.ReconcileInterval
	deadline := joined.Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var behind []int
	for {
		behind = behind[:0]
		for _, r := range free {
			if !groupAtTarget(nodes, r, placement.Replicas(r, ids, rc)) {
				behind = append(behind, r)
			}
		}
		if len(behind) == 0 || time.Now().After(deadline) {
			break
		}
		<-tick.C
	}
	took := time.Since(joined)
	if len(behind) > 0 {
		t.Fatalf("groups %v of %v (placement leaves x out) not at their target %v after x and e joined (bound %v)", behind, free, took.Round(time.Millisecond), within)
	}
	t.Logf("%d groups without x (%d moving to e) at their target %v after x and e joined (bound %v); %d groups wait for x",
		len(free), moving, took.Round(time.Millisecond), within, len(toX))
	for _, r := range toX {
		if groupAtTarget(nodes, r, placement.Replicas(r, ids, rc)) {
			t.Errorf("group %d reached a target with x, which answers nothing", r)
		}
	}
}

// groupAtTarget reports whether group r's leader, among nodes, has exactly
// the target's nodes as voters and no other server.
func groupAtTarget(nodes []*DB, r int, target []string) bool {
	for _, db := range nodes {
		rep := db.replica(r)
		if rep == nil || !rep.group.IsLeader() {
			continue
		}
		servers, err := rep.group.Configuration()
		if err != nil || len(servers) != len(target) {
			return false
		}
		for _, s := range servers {
			node, _, err := raftgroup.ParseServerID(s.ID)
			if err != nil || s.Suffrage != raft.Voter || !slices.Contains(target, node) {
				return false
			}
		}
		return true
	}
	return false
}
