// Command raftgroups shows GridKV's engine at work: three nodes in this
// process, each a raftgroup.Host on one TCP port, hosting many Raft groups
// (GridKV ranges) whose replicas hold fsm state machines.
//
//	go run ./examples/raftgroups            # 3 nodes, 64 groups
//	go run ./examples/raftgroups -groups 256 -seconds 3
//
// It elects leaders, writes through them, reads the writes back from every
// replica, cuts one node off the network and shows the others take over
// its groups, heals it, and measures replicated write throughput.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/fsm/fsmpb"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/raftgroup"
)

func main() {
	nodes := flag.Int("nodes", 3, "nodes (each holds a replica of every group)")
	groups := flag.Int("groups", 64, "Raft groups (ranges)")
	seconds := flag.Int("seconds", 3, "length of the throughput run")
	flag.Parse()
	if err := run(*nodes, *groups, time.Duration(*seconds)*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

type node struct {
	host *raftgroup.Host
	fsms map[raftgroup.GroupID]*fsm.FSM
}

func run(n, groups int, window time.Duration) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	faults := faultnet.New(1)
	step := func(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

	step("starting %d nodes, one TCP port each, %d Raft groups with a replica on every node", n, groups)
	var cluster []*node
	defer func() {
		for _, nd := range cluster {
			nd.host.Close()
		}
	}()
	var servers []raft.Server
	for i := 0; i < n; i++ {
		h, err := raftgroup.NewHost(raftgroup.Config{NodeID: fmt.Sprint("node", i+1), Logger: quiet, Faults: faults})
		if err != nil {
			return err
		}
		cluster = append(cluster, &node{host: h, fsms: map[raftgroup.GroupID]*fsm.FSM{}})
		servers = append(servers, raft.Server{ID: h.ID(), Address: raft.ServerAddress(h.Addr())})
		fmt.Printf("    %s  raft id %s  listening on %s\n", h.NodeID(), h.ID(), h.Addr())
	}
	for g := 0; g < groups; g++ {
		for _, nd := range cluster {
			f := fsm.New(fsm.Options{})
			if _, err := nd.host.CreateGroup(raftgroup.GroupID(g), f, raftgroup.GroupOptions{Bootstrap: servers}); err != nil {
				return err
			}
			nd.fsms[raftgroup.GroupID(g)] = f
		}
	}

	start := time.Now()
	if err := waitLeaders(cluster, groups, 30*time.Second); err != nil {
		return err
	}
	step("all %d groups elected a leader in %v", groups, time.Since(start).Round(time.Millisecond))
	printLeaders(cluster, groups)

	step("writing one key to every group through its leader")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for g := 0; g < groups; g++ {
		if err := set(ctx, cluster, raftgroup.GroupID(g), fmt.Sprint("greeting-", g), "hello"); err != nil {
			return err
		}
	}
	if err := waitReplicated(cluster, groups, "greeting-", 10*time.Second); err != nil {
		return err
	}
	fmt.Printf("    every replica on every node holds all %d keys\n", groups)

	victim := cluster[0]
	var others []string
	for _, nd := range cluster[1:] {
		others = append(others, nd.host.Addr())
	}
	step("cutting %s off the network (it leads %d groups)", victim.host.NodeID(), leads(victim, groups))
	faults.Isolate(victim.host.Addr(), others...)
	start = time.Now()
	if err := waitLeaders(cluster[1:], groups, 30*time.Second); err != nil {
		return err
	}
	step("the other nodes lead all %d groups again after %v", groups, time.Since(start).Round(time.Millisecond))
	for g := 0; g < groups; g++ {
		if err := set(ctx, cluster[1:], raftgroup.GroupID(g), fmt.Sprint("during-cut-", g), "still writable"); err != nil {
			return err
		}
	}
	fmt.Printf("    wrote %d keys while %s was cut off\n", groups, victim.host.NodeID())
	faults.HealAll()
	if err := waitReplicated(cluster, groups, "during-cut-", 30*time.Second); err != nil {
		return err
	}
	step("healed: %s caught up on everything written while it was away", victim.host.NodeID())
	printLeaders(cluster, groups)

	for _, batch := range []int{1, 64} {
		step("throughput for %v: 64 writers spread over the groups, %d operation(s) per log entry", window, batch)
		ops, lat, err := throughput(cluster, groups, batch, window)
		if err != nil {
			return err
		}
		fmt.Printf("    %.0f operations/s  entry latency p50 %v  p99 %v\n", ops, lat[0], lat[1])
	}
	step("closing the nodes")
	return nil
}

func leader(cluster []*node, g raftgroup.GroupID) *raftgroup.Group {
	for _, nd := range cluster {
		if gr := nd.host.Group(g); gr != nil && gr.IsLeader() {
			return gr
		}
	}
	return nil
}

func leads(nd *node, groups int) int {
	count := 0
	for g := 0; g < groups; g++ {
		if gr := nd.host.Group(raftgroup.GroupID(g)); gr != nil && gr.IsLeader() {
			count++
		}
	}
	return count
}

func waitLeaders(cluster []*node, groups int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for g := 0; g < groups; g++ {
		for leader(cluster, raftgroup.GroupID(g)) == nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("group %d has no leader after %v", g, within)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func printLeaders(cluster []*node, groups int) {
	for _, nd := range cluster {
		fmt.Printf("    %s leads %d groups\n", nd.host.NodeID(), leads(nd, groups))
	}
}

// genesis makes a group's state machines own range 0, where every key of
// this tour lives; applying it again changes nothing.
var genesis, _ = fsm.Encode(fsm.GenesisOp([]int{0}))

// set writes key in range 0 of group g, after the group's Genesis.
func set(ctx context.Context, cluster []*node, g raftgroup.GroupID, key, value string) error {
	if err := apply(ctx, cluster, g, genesis); err != nil {
		return err
	}
	data, err := fsm.Encode(fsm.SetOp(0, key, []byte(value), 0))
	if err != nil {
		return err
	}
	return apply(ctx, cluster, g, data)
}

// apply applies one command to group g through its leader, following
// leadership moves.
func apply(ctx context.Context, cluster []*node, g raftgroup.GroupID, data []byte) error {
	for {
		l := leader(cluster, g)
		if l == nil {
			if ctx.Err() != nil {
				return fmt.Errorf("group %d: no leader", g)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		resp, err := l.Apply(ctx, data)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			continue // leadership moved: try the new leader
		}
		return resp.(*fsm.Result).Err
	}
}

func waitReplicated(cluster []*node, groups int, prefix string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for g := 0; g < groups; g++ {
		for _, nd := range cluster {
			for {
				if _, _, ok, _ := nd.fsms[raftgroup.GroupID(g)].Get(0, fmt.Sprint(prefix, g), fsm.NowNanos()); ok {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s has not applied %s%d after %v", nd.host.NodeID(), prefix, g, within)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return nil
}

// throughput runs 64 writers, writer w on group w%groups, for window.
func throughput(cluster []*node, groups, batch int, window time.Duration) (float64, [2]time.Duration, error) {
	const writers = 64
	var (
		stop atomic.Bool
		ops  atomic.Int64
		mu   sync.Mutex
		lats []time.Duration
		wg   sync.WaitGroup
	)
	value := make([]byte, 40)
	for w := 0; w < writers; w++ {
		var cmds [][]byte
		for v := 0; v < 16; v++ {
			key := fmt.Sprintf("bench-%02d-%02d", w, v)
			var cmd *fsmpb.Command
			if batch == 1 {
				cmd = fsm.SetOp(0, key, value, 0)
			} else {
				var list []*fsmpb.Command
				for j := 0; j < batch; j++ {
					list = append(list, fsm.SetOp(0, fmt.Sprint(key, "-", j), value, 0))
				}
				cmd = fsm.BatchOp(list...)
			}
			data, _ := fsm.Encode(cmd)
			cmds = append(cmds, data)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := raftgroup.GroupID(w % groups)
			var mine []time.Duration
			for i := 0; !stop.Load(); i++ {
				l := leader(cluster, g)
				if l == nil {
					time.Sleep(time.Millisecond)
					continue
				}
				t0 := time.Now()
				f := l.Raft().Apply(cmds[i%len(cmds)], 0)
				if f.Error() == nil {
					mine = append(mine, time.Since(t0))
					ops.Add(int64(batch))
				}
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	t0 := time.Now()
	deadline := t0.Add(window)
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		fmt.Printf("    ... %.0f ops so far\n", float64(ops.Load()))
	}
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(t0)
	if len(lats) == 0 {
		return 0, [2]time.Duration{}, fmt.Errorf("no write succeeded")
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	p := func(q float64) time.Duration { return lats[int(q*float64(len(lats)-1))].Round(time.Microsecond) }
	return float64(ops.Load()) / elapsed.Seconds(), [2]time.Duration{p(0.5), p(0.99)}, nil
}
