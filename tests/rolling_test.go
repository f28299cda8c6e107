//go:build !race

// Like the scenario suite, the rolling restart runs without the race
// detector: its load and its 5 nodes under the detector's slowdown would
// measure the detector.

package tests

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

// rollingBound bounds each step of the rolling restart (a node's Close,
// its return, its ranges fully replicated again), generously for a loaded
// 2-core machine.
const rollingBound = 60 * time.Second

// A rolling restart: each node of a 5-node cluster (3 replicas per group)
// in turn is stopped and started again under its NodeID, on its
// addresses, as a new incarnation, while a client on every node writes new
// keys and reads acknowledged ones: closed gracefully (its replicas
// re-replicated first), or crashed as by kill -9. The next node goes only
// once every group has the replicas placement wants again, all holding the
// same state. No acknowledged write is lost: every one reads back at the
// end, and no read during the run returned another value. Write
// availability is logged per restart window (from the stop to placement
// restored), as seen by the clients of the other nodes.
func TestRollingRestart(t *testing.T) {
	t.Run("close", func(t *testing.T) { testRollingRestart(t, true) })
	t.Run("crash", func(t *testing.T) { testRollingRestart(t, false) })
}

func testRollingRestart(t *testing.T, graceful bool) {
	const size, replicas = 5, 3
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := gridkv.Config{Timing: gridkv.LocalTiming(), Logger: quiet, GroupsPerNode: 16, ReplicaCount: replicas}
	c, err := StartCluster(ctx, ClusterOptions{Nodes: size, Base: &cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitPlaced(t, c, replicas, "every group placed after formation")
	ld := newShrinkLoad(c.Nodes)
	ld.start(ctx, t, rollingBound)
	defer ld.stop()

	for i, n := range c.Nodes {
		ld.clients[i].paused.Store(true)
		start := time.Now()
		if !graceful {
			c.Crash(n)
		} else if err := c.Stop(n); err != nil {
			t.Fatalf("close %s: %v", n.Name, err)
		}
		closed := time.Since(start)
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
		readyCtx, readyCancel := context.WithTimeout(ctx, rollingBound)
		err := n.DB().WaitReady(readyCtx)
		readyCancel()
		if err != nil {
			t.Fatalf("%s not ready after its restart: %v", n.Name, err)
		}
		ready := time.Since(start)
		ld.clients[i].paused.Store(false)
		waitPlaced(t, c, replicas, fmt.Sprintf("every group placed again after %s restarted", n.Name))
		end := time.Now()
		// Every voter holds the same state: compared with the load paused,
		// since under it followers trail their leader by an entry or two.
		for _, cl := range ld.clients {
			cl.paused.Store(true)
		}
		if err := c.WaitConverged(rollingBound); err != nil {
			t.Fatal(err)
		}
		for _, cl := range ld.clients {
			cl.paused.Store(false)
		}
		if graceful && closed >= cfg.Timing.DrainTimeout {
			t.Errorf("the close of %s took %v: its drain timed out (DrainTimeout %v)", n.Name, closed, cfg.Timing.DrainTimeout)
		}
		var ok, failed int
		var gap time.Duration
		for j, cl := range ld.clients {
			if j == i {
				continue
			}
			s := cl.writeStats(start, end)
			ok, failed, gap = ok+s.ok, failed+s.failed, max(gap, s.gap)
		}
		t.Logf("restart of %s: stopped in %v, ready %v after, replicated again %v after; the other nodes' writes: %d ok, %d failed (%.2f%% available), longest gap without a successful write %v",
			n.Name, closed.Round(time.Millisecond), (ready - closed).Round(time.Millisecond), end.Sub(start.Add(ready)).Round(time.Millisecond),
			ok, failed, 100*float64(ok)/float64(max(ok+failed, 1)), gap.Round(time.Millisecond))
	}
	ld.stop()
	if err := ld.violation(); err != nil {
		t.Fatal(err)
	}
	// Every acknowledged write reads back, linearizably.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := 0
	db := c.Nodes[0].DB()
	ld.acked.Range(func(k, v any) bool {
		n++
		got, err := db.Get(ctx, k.(string))
		if err != nil || string(got) != v.(string) {
			t.Fatalf("acknowledged %s=%s reads %q, %v\n%s", k, v, got, err, c.Describe())
		}
		return true
	})
	t.Logf("%d acknowledged keys read back after the rolling restart", n)
}

// waitPlaced waits until every range's leader has exactly the voters
// placement wants for it over the live nodes (replicas of them), each a
// live node's current incarnation holding a replica: a restarted node
// holds its share again.
func waitPlaced(t *testing.T, c *Cluster, replicas int, what string) {
	t.Helper()
	var names []string
	for _, n := range c.Live() {
		names = append(names, n.Name)
	}
	var why string
	defer func() {
		if t.Failed() {
			t.Logf("last seen: %s", why)
		}
	}()
	testutil.Eventually(t, rollingBound, what, func() bool {
		held := map[string]bool{}
		var leaders []testhook.Replica
		for _, n := range c.Live() {
			for _, rep := range n.hook().Ranges() {
				held[rep.ServerID] = true
				if rep.Leader {
					leaders = append(leaders, rep)
				}
			}
		}
		if len(leaders) < c.groups() {
			why = fmt.Sprintf("%d of %d groups have a leader", len(leaders), c.groups())
			return false
		}
		for _, rep := range leaders {
			var nodes []string
			for _, v := range rep.Voters {
				if !held[v] {
					why = fmt.Sprintf("range %d: voter %s holds no replica", rep.Range, v)
					return false
				}
				node, _, _ := raftgroup.ParseServerID(raft.ServerID(v))
				nodes = append(nodes, node)
			}
			want := placement.Replicas(rep.Range, names, replicas)
			if slices.Sort(nodes); !slices.Equal(nodes, slices.Sorted(slices.Values(want))) {
				why = fmt.Sprintf("range %d has voters %v, placement wants %v", rep.Range, nodes, want)
				return false
			}
		}
		return true
	})
}

// writeStats are a client's writes that ended in a window.
type writeStats struct {
	ok, failed int
	gap        time.Duration // the longest time without a successful write
}

func (cl *shrinkClient) writeStats(from, to time.Time) writeStats {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var s writeStats
	prev := from
	for _, w := range cl.writes {
		if w.at.Before(from) || w.at.After(to) {
			continue
		}
		if !w.ok {
			s.failed++
			continue
		}
		s.ok++
		s.gap = max(s.gap, w.at.Sub(prev))
		prev = w.at
	}
	s.gap = max(s.gap, to.Sub(prev))
	return s
}
