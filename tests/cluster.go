package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/freeport"
	"github.com/gridkv/gridkv/internal/netaddr"
	"github.com/gridkv/gridkv/internal/testhook"
)

// Cluster is N GridKV nodes in this process whose every byte to each other
// (Raft, node-to-node RPC and gossip) passes one fault seam.
type Cluster struct {
	Faults *faultnet.Net
	Nodes  []*Node

	base gridkv.Config
	tune func(node int, h *testhook.Hooks)

	leaseGone [2]atomic.Uint64 // lease hits and misses of crashed incarnations
}

// Node is one member of a Cluster. A crashed node may be restarted: the
// same NodeID and addresses, a new incarnation with nothing of the old.
type Node struct {
	Name    string
	addrs   [2]string // Raft/RPC address, gossip address
	crashed atomic.Bool

	mu struct {
		sync.Mutex
		db    *gridkv.DB
		hooks *testhook.Hooks
	}
}

// DB is the node's current incarnation.
func (n *Node) DB() *gridkv.DB {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.db
}

func (n *Node) hook() testhook.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.hooks.Node()
}

// Clock is the lease clock the node's current incarnation was given, if
// it is the suite's (see ClusterOptions.Tune and testhook.Hooks.ClockRate);
// nil otherwise.
func (n *Node) Clock() *testhook.Clock {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, _ := n.mu.hooks.Lease.Clock.(*testhook.Clock)
	return c
}

// Crashed reports whether the nemesis crashed this node (and has not
// restarted it).
func (n *Node) Crashed() bool { return n.crashed.Load() }

var clusterSeq atomic.Int64

// ClusterOptions configure StartCluster.
type ClusterOptions struct {
	Nodes int
	Seed  uint64 // of the fault seam's random draws
	// Base is the configuration every node starts from; NodeID, Seeds,
	// BindAddr and GossipAddr are set by the harness. Zero: gridkv.LocalTiming,
	// 16 ranges, logs discarded.
	Base *gridkv.Config
	// Tune, if set, adjusts node i's hooks before it opens (restarts
	// included): clocks of its own, negative controls.
	Tune func(node int, h *testhook.Hooks)
}

// StartCluster opens the nodes, the first bootstrapping and the others
// joining it, and waits until every range has its replicas.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	base := gridkv.Config{Timing: gridkv.LocalTiming(), GroupsPerNode: 16, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if o.Base != nil {
		base = *o.Base
	}
	c := &Cluster{Faults: faultnet.New(o.Seed), base: base, tune: o.Tune}
	seq := clusterSeq.Add(1)
	for i := 0; i < o.Nodes; i++ {
		cfg := base
		cfg.NodeID = fmt.Sprintf("c%d-n%d", seq, i)
		cfg.Seeds = nil
		if i > 0 {
			cfg.Seeds = []string{c.Nodes[0].DB().GossipAddr()}
		}
		// Ports from outside the ephemeral range: nothing else binds them
		// while the node is down before it restarts on them. Another pick
		// may take one before the first open: then it opens on new ones.
		var db *gridkv.DB
		var h *testhook.Hooks
		for attempt := 1; db == nil; attempt++ {
			addrs, err := freeport.Addrs(2)
			if err != nil {
				c.Close()
				return nil, err
			}
			cfg.BindAddr, cfg.GossipAddr = addrs[0], addrs[1]
			if db, h, err = c.open(cfg); err != nil && (!netaddr.InUse(err) || attempt == 3) {
				c.Close()
				return nil, err
			}
		}
		n := &Node{Name: cfg.NodeID, addrs: [2]string{db.Addr(), db.GossipAddr()}}
		n.mu.db, n.mu.hooks = db, h
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := n.DB().WaitReady(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("tests: %s not ready: %w", n.Name, err)
		}
	}
	return c, nil
}

// indexOf is the position of the node named name among the cluster's
// nodes (the next one while it is being added).
func (c *Cluster) indexOf(name string) int {
	for i, n := range c.Nodes {
		if n.Name == name {
			return i
		}
	}
	return len(c.Nodes)
}

// open opens one node whose traffic passes the cluster's fault seam.
func (c *Cluster) open(cfg gridkv.Config) (*gridkv.DB, *testhook.Hooks, error) {
	// The suite's checks assume the group count its nodes start with
	// (Cluster.groups): growing it with membership is not scenario-tested
	// yet.
	h := &testhook.Hooks{Faults: c.Faults, FixedGroups: true}
	if c.tune != nil {
		c.tune(c.indexOf(cfg.NodeID), h)
	}
	if h.ClockRate > 0 && h.Lease.Clock == nil {
		h.Lease.Clock = testhook.NewClock(h.ClockRate) // for the nemesis to reach (Node.Clock)
	}
	db, err := testhook.Open(context.Background(), cfg, h)
	if err != nil {
		return nil, h, err
	}
	return db.(*gridkv.DB), h, nil
}

// Restart starts crashed (or stopped) node n again on its old addresses, under its
// NodeID, joining through every other live node: a new incarnation, as
// after kill -9 and a restart by a supervisor. It returns at once; the
// node's ranges are re-replicated to it by their leaders.
func (c *Cluster) Restart(n *Node) error {
	if !n.Crashed() {
		return fmt.Errorf("tests: %s is running", n.Name)
	}
	cfg := c.base
	cfg.NodeID = n.Name
	cfg.BindAddr, cfg.GossipAddr = n.addrs[0], n.addrs[1]
	cfg.Seeds = nil
	for _, o := range c.Live() {
		cfg.Seeds = append(cfg.Seeds, o.addrs[1])
	}
	db, h, err := c.open(cfg)
	if err != nil {
		return fmt.Errorf("tests: restart %s: %w", n.Name, err)
	}
	n.mu.Lock()
	n.mu.db, n.mu.hooks = db, h
	n.mu.Unlock()
	n.crashed.Store(false)
	return nil
}

// Close closes every node that did not crash.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		if !n.Crashed() {
			n.DB().Close()
		}
	}
}

// Live returns the nodes that have not crashed.
func (c *Cluster) Live() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if !n.Crashed() {
			out = append(out, n)
		}
	}
	return out
}

// SetLink sets the rule for messages from a to b, on every channel.
func (c *Cluster) SetLink(a, b *Node, r faultnet.Rule) {
	for k := range a.addrs {
		c.Faults.Set(a.addrs[k], b.addrs[k], r)
	}
}

// CutInto drops every message the other nodes send to n, answers to its
// requests included; what n sends still arrives.
func (c *Cluster) CutInto(n *Node) {
	for _, o := range c.Nodes {
		if o != n {
			c.SetLink(o, n, faultnet.Rule{Cut: true})
		}
	}
}

// Cut partitions a and b, both directions.
func (c *Cluster) Cut(a, b *Node) {
	c.SetLink(a, b, faultnet.Rule{Cut: true})
	c.SetLink(b, a, faultnet.Rule{Cut: true})
}

// Partition cuts every link between nodes in different sides; nodes in no
// side keep their links.
func (c *Cluster) Partition(sides ...[]*Node) {
	for i, side := range sides {
		for _, other := range sides[i+1:] {
			for _, a := range side {
				for _, b := range other {
					c.Cut(a, b)
				}
			}
		}
	}
}

// Isolate cuts every link of n, both directions.
func (c *Cluster) Isolate(n *Node) {
	var others []*Node
	for _, o := range c.Nodes {
		if o != n {
			others = append(others, o)
		}
	}
	c.Partition([]*Node{n}, others)
}

// Heal removes every fault.
func (c *Cluster) Heal() { c.Faults.HealAll() }

// Crash stops n the way a crash would; all its state is gone.
func (c *Cluster) Crash(n *Node) {
	if node, ok := c.takeDown(n); ok {
		node.Crash()
	}
}

// takeDown marks n down, unless it is already, and keeps its lease
// counts (LeaseStats); the caller then crashes or closes it.
func (c *Cluster) takeDown(n *Node) (testhook.Node, bool) {
	node := n.hook()
	if node == nil || !n.crashed.CompareAndSwap(false, true) {
		return nil, false
	}
	hits, misses := node.LeaseStats()
	c.leaseGone[0].Add(hits)
	c.leaseGone[1].Add(misses)
	return node, true
}

// Stop closes n gracefully (DB.Close: it leaves the cluster, its replicas
// re-replicated first where the others can hold them); Restart starts it
// again, as a new incarnation.
func (c *Cluster) Stop(n *Node) error {
	if _, ok := c.takeDown(n); !ok {
		return fmt.Errorf("tests: %s is not running", n.Name)
	}
	return n.DB().Close()
}

// LeaseStats sums the lease reads served (hits) and not (misses) on
// every node, crashed incarnations included (replicas a node dropped are
// not counted).
func (c *Cluster) LeaseStats() (hits, misses uint64) {
	hits, misses = c.leaseGone[0].Load(), c.leaseGone[1].Load()
	for _, n := range c.Live() {
		h, m := n.hook().LeaseStats()
		hits, misses = hits+h, misses+m
	}
	return hits, misses
}

// Leaders counts, per node, the ranges it leads now.
func (c *Cluster) Leaders() map[*Node]int {
	out := map[*Node]int{}
	for _, n := range c.Live() {
		out[n] = len(n.hook().Leads())
	}
	return out
}

// LeaderOf returns the live node leading range r, or nil.
func (c *Cluster) LeaderOf(r int) *Node {
	for _, n := range c.Live() {
		if slices.Contains(n.hook().Leads(), r) {
			return n
		}
	}
	return nil
}

// TransferLeadership moves range r's leadership off its current leader.
func (c *Cluster) TransferLeadership(ctx context.Context, r int) error {
	n := c.LeaderOf(r)
	if n == nil {
		return errors.New("tests: no leader")
	}
	return n.hook().TransferLeadership(ctx, r, "")
}

// PullLeadership moves to n the leadership of every range it does not
// lead, all at once, and waits (polling, until ctx ends) until n leads
// each range moved; it returns how many n leads then. Transfers refused
// or failed leave those ranges where they were, and the reconciler hands
// the others back to their placement within its interval (ReconcileInterval).
func (c *Cluster) PullLeadership(ctx context.Context, n *Node) int {
	var wg sync.WaitGroup
	leads := n.hook().Leads()
	var moved atomic.Int64
	for r := range c.groups() {
		if slices.Contains(leads, r) {
			continue
		}
		l := c.LeaderOf(r)
		if l == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l.hook().TransferLeadership(ctx, r, n.Name) == nil {
				moved.Add(1)
			}
		}()
	}
	wg.Wait()
	led := 0
	poll(ctx, 5*time.Millisecond, func() bool {
		led = len(n.hook().Leads())
		return led >= len(leads)+int(moved.Load())
	})
	return led
}

// groups is the nodes' number of replica groups: the cluster is formed
// by seeding from its first node, so GroupsPerNode.
func (c *Cluster) groups() int {
	if c.base.GroupsPerNode == 0 {
		return 1 // gridkv's default
	}
	return c.base.GroupsPerNode
}

// ranges is the nodes' number of hash ranges.
func (c *Cluster) ranges() int {
	if c.base.Ranges == 0 {
		return 1024 // gridkv's default
	}
	return c.base.Ranges
}

// Describe lists, per range, each live replica: its server id, whether it
// leads, and the voters it knows of. For failure reports.
func (c *Cluster) Describe() string {
	byRange := map[int][]string{}
	for _, n := range c.Live() {
		for _, rep := range n.hook().Ranges() {
			lead := ""
			if rep.Leader {
				lead = " (leader)"
			}
			byRange[rep.Range] = append(byRange[rep.Range], fmt.Sprintf("%s%s voters %v", rep.ServerID, lead, rep.Voters))
		}
	}
	var b strings.Builder
	for r := 0; r < len(byRange)+64 && len(byRange) > 0; r++ {
		reps, ok := byRange[r]
		if !ok {
			continue
		}
		delete(byRange, r)
		fmt.Fprintf(&b, "range %d:\n", r)
		for _, s := range reps {
			fmt.Fprintf(&b, "  %s\n", s)
		}
	}
	return b.String()
}

// Converged reports whether, for every range, each voter in its leader's
// configuration holds exactly the leader's state; otherwise it says which
// range differs.
func (c *Cluster) Converged() (bool, string) {
	var reps []testhook.Replica
	for _, n := range c.Live() {
		reps = append(reps, n.hook().Ranges()...)
	}
	return converged(reps)
}

// converged is Converged on the replicas every live node reported.
func converged(reps []testhook.Replica) (bool, string) {
	type held struct {
		digest uint64
		keys   int
	}
	byServer := map[int]map[string]held{} // range -> server id -> state
	leaders := map[int][]string{}         // range -> voters, per its leader
	for _, rep := range reps {
		if byServer[rep.Range] == nil {
			byServer[rep.Range] = map[string]held{}
		}
		byServer[rep.Range][rep.ServerID] = held{rep.Digest, rep.Keys}
		if rep.Leader {
			leaders[rep.Range] = rep.Voters
		}
	}
	for r, servers := range byServer {
		voters, ok := leaders[r]
		if !ok {
			return false, fmt.Sprintf("range %d has no leader", r)
		}
		var want *held
		for _, v := range voters {
			h, ok := servers[v]
			if !ok {
				return false, fmt.Sprintf("range %d: voter %s holds no replica", r, v)
			}
			if want == nil {
				want = &h
			} else if h != *want {
				return false, fmt.Sprintf("range %d: voter %s holds %d keys (digest %x), another %d keys (%x)",
					r, v, h.keys, h.digest, want.keys, want.digest)
			}
		}
	}
	return true, ""
}

// WaitConverged polls Converged until it holds or timeout passes.
func (c *Cluster) WaitConverged(timeout time.Duration) error {
	return waitConverged(timeout, c.Converged)
}

// waitConverged polls converged until it holds or timeout passes.
func waitConverged(timeout time.Duration, converged func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := converged()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicas differ after %v: %s", timeout, why)
		}
		<-time.After(50 * time.Millisecond)
	}
}
