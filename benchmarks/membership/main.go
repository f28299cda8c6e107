// Command membership measures GridKV's membership operations on an
// in-process cluster (issue 13): how long a crashed node's groups take to
// be led again, how long re-replication takes after a crash or during a
// graceful leave, and how many bytes a join moves against the ideal 1/N.
// The leave figure is the Close itself when it drained in time (the node
// logs whether its replicas were re-replicated or timed out: run with
// -v to see it).
//
//	go run ./membership -exp kill -kills 20
//	go run ./membership -exp rereplicate -keys 1000000 -value 100
//	go run ./membership -exp leave -keys 1000000 -value 100
//	go run ./membership -exp join -keys 1000000 -value 100
//
// Nodes are opened through internal/testhook (as the fault suite does) so
// that one can be crashed as by kill -9: no hand-off, no gossip leave, its
// in-memory state gone. Every node has its own metrics registry, from
// which a join's bytes are read (gridkv_transport_sent_bytes_total).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/freeport"
	"github.com/gridkv/gridkv/internal/loadgen"
	"github.com/gridkv/gridkv/internal/testhook"
)

func main() {
	exp := flag.String("exp", "kill", "experiment: kill, rereplicate, leave or join")
	nodes := flag.Int("nodes", 0, "cluster size (default: 3 for kill and join, 4 for rereplicate and leave)")
	keys := flag.Int("keys", 1_000_000, "keys loaded before the experiment (kill: 10,000)")
	value := flag.Int("value", 100, "value size in bytes")
	kills := flag.Int("kills", 20, "kill: how many kills")
	timing := flag.String("timing", "lan", "lan or local: the Timing preset")
	groups := flag.Int("groups-per-node", 0, "Config.GroupsPerNode (0: the default)")
	verbose := flag.Bool("v", false, "log the nodes' Info lines (closing, re-replication) to stderr")
	flag.Parse()

	var t gridkv.Timing
	switch *timing {
	case "lan":
		t = gridkv.LANTiming()
	case "local":
		t = gridkv.LocalTiming()
	default:
		log.Fatalf("-timing %q: want lan or local", *timing)
	}
	base := gridkv.Config{Timing: t, GroupsPerNode: *groups,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if *verbose {
		base.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	size := *nodes
	switch *exp {
	case "kill", "join":
		size = cmp.Or(size, 3)
	case "rereplicate", "leave":
		size = cmp.Or(size, 4)
	default:
		log.Fatalf("unknown experiment %q", *exp)
	}
	if *exp == "kill" && !flagSet("keys") {
		*keys = 10_000
	}
	c := form(ctx, size, base)
	defer c.close()
	c.load(ctx, *keys, *value)
	c.waitConverged(ctx, size, 0)
	switch *exp {
	case "kill":
		killLoop(ctx, c, *kills)
	case "rereplicate", "leave":
		victim := c.nodes[size-1]
		start := time.Now()
		if *exp == "leave" {
			if err := victim.db.Close(); err != nil {
				log.Printf("close: %v", err)
			}
			victim.gone = true
			log.Printf("graceful leave of %s with %d keys of %d B: Close returned after %v", victim.id, *keys, *value, time.Since(start).Round(time.Millisecond))
		} else {
			victim.hooks.Node().Crash()
			victim.gone = true
		}
		c.waitConverged(ctx, size-1, 0)
		log.Printf("%s of 1 of %d nodes with %d keys of %d B: every group has its replicas again, all holding the same state, %v after",
			*exp, size, *keys, *value, time.Since(start).Round(time.Millisecond))
	case "join":
		join(ctx, c, *keys, *value)
	}
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// node is one member of the cluster.
type node struct {
	id        string
	addr, gsp string // bound Raft/RPC and gossip addresses
	db        *gridkv.DB
	hooks     *testhook.Hooks
	reg       *prometheus.Registry
	gone      bool // crashed or closed
}

type cluster struct {
	base  gridkv.Config
	nodes []*node
}

// open opens node n (again) with cfg's seeds.
func (c *cluster) open(ctx context.Context, n *node, seeds []string, expect int) error {
	cfg := c.base
	cfg.NodeID, cfg.BindAddr, cfg.GossipAddr, cfg.Seeds, cfg.BootstrapExpect = n.id, n.addr, n.gsp, seeds, expect
	n.reg = prometheus.NewRegistry()
	cfg.Metrics = n.reg
	n.hooks = &testhook.Hooks{}
	db, err := testhook.Open(ctx, cfg, n.hooks)
	if err != nil {
		return err
	}
	n.db, n.gone = db.(*gridkv.DB), false
	return nil
}

// form opens size nodes that bootstrap one cluster together.
func form(ctx context.Context, size int, base gridkv.Config) *cluster {
	c := &cluster{base: base}
	addrs := freeAddrs(2 * size)
	for i := range size {
		c.nodes = append(c.nodes, &node{id: fmt.Sprint("n", i), addr: addrs[2*i], gsp: addrs[2*i+1]})
	}
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i, n := range c.nodes {
		var seeds []string
		for _, o := range c.nodes {
			if o != n {
				seeds = append(seeds, o.gsp)
			}
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.open(ctx, n, seeds, size) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.close()
			log.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		if err := n.db.WaitReady(ctx); err != nil {
			log.Fatal(err)
		}
	}
	return c
}

// freeAddrs picks n ports from outside the ephemeral range: a killed node
// restarts on its old ones, which nothing else may take meanwhile.
func freeAddrs(n int) []string {
	addrs, err := freeport.Addrs(n)
	if err != nil {
		log.Fatal(err)
	}
	return addrs
}

func (c *cluster) live() []*node {
	var out []*node
	for _, n := range c.nodes {
		if !n.gone {
			out = append(out, n)
		}
	}
	return out
}

func (c *cluster) close() {
	for _, n := range c.live() {
		if n.db != nil { // nil: its open failed
			n.db.Close()
		}
	}
}

// load writes keys keys of value bytes (loadgen.Preload: 64 writers
// spread over the live nodes).
func (c *cluster) load(ctx context.Context, keys, value int) {
	start := time.Now()
	var dbs []*gridkv.DB
	for _, n := range c.live() {
		dbs = append(dbs, n.db)
	}
	if err := loadgen.Preload(ctx, dbs, keys, value); err != nil {
		log.Fatalf("load: %v", err)
	}
	log.Printf("loaded %d keys of %d B in %v", keys, value, time.Since(start).Round(time.Millisecond))
}

// state is the cluster as the live nodes' replicas describe it.
type state struct {
	groups     int
	replicated bool   // every group's leader has replicas voters, each holding the leader's state
	why        string // what is not yet so
}

func (c *cluster) state(replicas int) state {
	type held struct {
		keys   int
		digest uint64
		moving int
	}
	byServer := map[int]map[string]held{}
	voters := map[int][]string{}
	groups := 0
	for _, n := range c.live() {
		node := n.hooks.Node()
		groups = max(groups, node.Groups())
		for _, rep := range node.Ranges() {
			if byServer[rep.Range] == nil {
				byServer[rep.Range] = map[string]held{}
			}
			byServer[rep.Range][rep.ServerID] = held{rep.Keys, rep.Digest, rep.Moving}
			if rep.Leader {
				voters[rep.Range] = rep.Voters
			}
		}
	}
	s := state{groups: groups, replicated: true}
	for g := range groups {
		vs, ok := voters[g]
		switch {
		case !ok:
			s.replicated, s.why = false, fmt.Sprintf("group %d has no leader", g)
			return s
		case len(vs) != replicas:
			s.replicated, s.why = false, fmt.Sprintf("group %d has %d voters", g, len(vs))
			return s
		}
		var want *held
		for _, v := range vs {
			h, ok := byServer[g][v]
			switch {
			case !ok:
				s.replicated, s.why = false, fmt.Sprintf("group %d: voter %s holds no replica", g, v)
				return s
			case h.moving > 0:
				s.replicated, s.why = false, fmt.Sprintf("group %d: %d ranges moving", g, h.moving)
				return s
			case want == nil:
				want = &h
			case h != *want:
				s.replicated, s.why = false, fmt.Sprintf("group %d: voters differ (%d and %d keys)", g, h.keys, want.keys)
				return s
			}
		}
	}
	return s
}

// waitConverged waits until every group has min(3, live) voters holding
// the same state and, with groups > 0, the cluster has that many groups.
func (c *cluster) waitConverged(ctx context.Context, live, groups int) {
	replicas := min(3, live)
	for {
		s := c.state(replicas)
		if s.replicated && (groups == 0 || s.groups == groups) {
			return
		}
		select {
		case <-ctx.Done():
			log.Fatalf("not converged: %s", s.why)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// killLoop crashes a node kills times (the one leading the most groups,
// of those not crashed last), timing how long until every group it led is
// led by another node, then restarts it and waits for the cluster to be
// fully replicated again.
func killLoop(ctx context.Context, c *cluster, kills int) {
	var took []time.Duration
	last := -1
	for k := range kills {
		c.waitConverged(ctx, len(c.nodes), 0)
		vi, led := -1, []int(nil)
		for i, n := range c.nodes {
			if l := n.hooks.Node().Leads(); i != last && (vi < 0 || len(l) > len(led)) {
				vi, led = i, l
			}
		}
		victim := c.nodes[vi]
		if len(led) == 0 {
			log.Fatalf("kill %d: no node leads a group", k)
		}
		start := time.Now()
		victim.hooks.Node().Crash()
		victim.gone = true
		for {
			ledAgain := 0
			for _, g := range led {
				for _, n := range c.live() {
					if slices.Contains(n.hooks.Node().Leads(), g) {
						ledAgain++
						break
					}
				}
			}
			if ledAgain == len(led) {
				break
			}
			if ctx.Err() != nil {
				log.Fatal("groups not led again")
			}
			time.Sleep(2 * time.Millisecond) // a bounded poll: ctx ends it
		}
		d := time.Since(start)
		took = append(took, d)
		log.Printf("kill %d: %s led %d groups; all led again after %v", k+1, victim.id, len(led), d.Round(time.Millisecond))
		var seeds []string
		for _, n := range c.live() {
			seeds = append(seeds, n.gsp)
		}
		if err := c.open(ctx, victim, seeds, 0); err != nil {
			log.Fatal(err)
		}
		if err := victim.db.WaitReady(ctx); err != nil {
			log.Fatal(err)
		}
		last = vi
	}
	c.waitConverged(ctx, len(c.nodes), 0)
	slices.Sort(took)
	median := took[len(took)/2]
	if len(took)%2 == 0 {
		median = (took[len(took)/2-1] + took[len(took)/2]) / 2
	}
	log.Printf("kill -> every group it led led again, over %d kills: median %v, max %v, min %v",
		len(took), median.Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), took[0].Round(time.Millisecond))
}

// join adds a node to the cluster and measures the bytes every node sends
// until the cluster has its new groups, each fully replicated, against the
// ideal: the new node's share, 1/N of all replicas' data.
func join(ctx context.Context, c *cluster, keys, value int) {
	// The idle rate, to take out of the figure.
	idleFrom, idleStart := c.sentBytes(), time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
	idleRate := float64(c.sentBytes()-idleFrom) / time.Since(idleStart).Seconds()
	before := c.state(3).groups
	addrs := freeAddrs(2)
	n := &node{id: fmt.Sprint("n", len(c.nodes)), addr: addrs[0], gsp: addrs[1]}
	var seeds []string
	for _, o := range c.live() {
		seeds = append(seeds, o.gsp)
	}
	from, start := c.sentBytes(), time.Now()
	if err := c.open(ctx, n, seeds, 0); err != nil {
		log.Fatal(err)
	}
	c.nodes = append(c.nodes, n)
	if err := n.db.WaitReady(ctx); err != nil {
		log.Fatal(err)
	}
	// GroupsPerNode groups per node, as before the join (below the cap).
	want := before / (len(c.nodes) - 1) * len(c.nodes)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	c.waitConverged(wctx, len(c.nodes), want)
	converged := time.Since(start)
	// Placement may still move replicas whose groups are complete: count
	// until the traffic is back to the idle rate for 3 s running. The
	// figure ends where that quiet run began.
	quiet, prev, prevAt := 0, c.sentBytes(), time.Now()
	end, endAt := prev, prevAt
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for quiet < 6 {
		select {
		case <-ctx.Done():
			log.Fatal("join: traffic did not go back to idle")
		case <-tick.C:
		}
		now, at := c.sentBytes(), time.Now()
		if float64(now-prev)/at.Sub(prevAt).Seconds() < 2*idleRate+10_000 {
			if quiet == 0 {
				end, endAt = prev, prevAt
			}
			quiet++
		} else {
			quiet = 0
		}
		prev, prevAt = now, at
	}
	took := endAt.Sub(start)
	moved := float64(end-from) - idleRate*took.Seconds()
	replicaData := float64(3 * keys * (value + len(loadgen.Key(0))))
	log.Printf("join of node %d: %d -> %d groups, converged after %v, traffic back to idle after %v; bytes sent by all nodes %.1f MB (idle rate %.0f B/s taken out); all replicas' keys and values %.1f MB; moved/all = %.3f, ideal 1/N = %.3f (%.2fx the ideal)",
		len(c.nodes), before, want, converged.Round(time.Millisecond), took.Round(time.Millisecond), moved/1e6, idleRate, replicaData/1e6, moved/replicaData, 1/float64(len(c.nodes)),
		moved/replicaData*float64(len(c.nodes)))
}

// sentBytes sums gridkv_transport_sent_bytes_total over every node.
func (c *cluster) sentBytes() uint64 {
	var sum float64
	for _, n := range c.live() {
		mfs, err := n.reg.Gather()
		if err != nil {
			log.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "gridkv_transport_sent_bytes_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return uint64(sum)
}
