// Command peerbench measures GridKV beside a peer, etcd, in one run: an
// in-process GridKV cluster of -nodes nodes and an embedded etcd cluster of
// as many members, on loopback in this process, both driven by the same
// load driver (internal/loadgen) with -clients clients spread over the
// nodes. Each workload pairs a GridKV operation with its etcd counterpart;
// every round runs each pair's GridKV side, then its etcd side, so machine
// noise falls on both alike. It prints every run, then a markdown table of
// the medians with the GridKV/etcd throughput ratio, and plots the medians.
//
//	go run ./peerbench                              # 3 nodes, 3 rounds x 5s
//	go run ./peerbench -seconds 1s -runs 1 -keys 2000  # a quick check
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/version"

	"github.com/gridkv/gridkv/benchmarks/internal/cluster"
	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/loadgen"
)

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 3, "GridKV nodes, and etcd members")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients, spread over the nodes")
	flag.DurationVar(&o.seconds, "seconds", 5*time.Second, "length of each run")
	flag.IntVar(&o.runs, "runs", 3, "rounds: runs of each workload on each system")
	flag.IntVar(&o.keys, "keys", 100000, "keys, preloaded")
	flag.IntVar(&o.valueBytes, "value", 16, "value size in bytes")
	flag.IntVar(&o.groupsPerNode, "groups-per-node", 0, "GridKV's Config.GroupsPerNode (0: the default)")
	flag.StringVar(&o.rows, "rows", "", "comma-separated rows to run (empty: all), e.g. set,get,mix-90/10")
	flag.StringVar(&o.plotPath, "plot", "results/peer.png", "PNG to write the plot to (empty: none)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "peerbench:", err)
		os.Exit(1)
	}
}

type options struct {
	nodes, clients, runs, keys, valueBytes int
	groupsPerNode                          int
	seconds                                time.Duration
	plotPath, rows                         string
}

// A pair is one row of the comparison: a GridKV workload and the etcd
// workload it is measured against.
type pair struct {
	name             string // the row's name
	gridkvOp, etcdOp string // what each side does, for the table
	readRatio        float64
	gridkvOpts       []gridkv.ReadOption
	serializable     bool // etcd's Gets are serializable, not linearizable
	// halfOf names an earlier row: this row paces both systems at half of
	// GridKV's throughput in that row, same round (loadgen.Workload.Rate),
	// to compare latencies at one rate.
	halfOf string
}

// pairs lists the rows; Quorum(2) needs two replicas, so one node skips it.
func pairs(nodes int) []pair {
	ps := []pair{
		{name: "set", gridkvOp: "Set", etcdOp: "Put", readRatio: 0},
		{name: "get", gridkvOp: "Get (default, linearizable)", etcdOp: "Get (linearizable)", readRatio: 1},
		{name: "get-readindex", gridkvOp: "Get ReadIndex()", etcdOp: "Get (linearizable)", readRatio: 1,
			gridkvOpts: []gridkv.ReadOption{gridkv.ReadIndex()}},
		{name: "get-quorum2", gridkvOp: "Get Quorum(2)", etcdOp: "Get (linearizable)", readRatio: 1,
			gridkvOpts: []gridkv.ReadOption{gridkv.Quorum(2)}},
		{name: "get-stale", gridkvOp: "Get Stale()", etcdOp: "Get WithSerializable()", readRatio: 1,
			gridkvOpts: []gridkv.ReadOption{gridkv.Stale()}, serializable: true},
		{name: "mix-90/10", gridkvOp: "90% Get / 10% Set", etcdOp: "90% Get (lin.) / 10% Put", readRatio: 0.9},
		{name: "set-half-peak", gridkvOp: "Set, paced", etcdOp: "Put, paced", readRatio: 0, halfOf: "set"},
	}
	if nodes < 2 {
		ps = slices.DeleteFunc(ps, func(p pair) bool { return p.name == "get-quorum2" })
	}
	return ps
}

// outcome is a pair's runs on each system, one per round, and what each
// run disturbed (see settle).
type outcome struct {
	pair
	gridkv, etcd           []loadgen.Result
	gridkvAfter, etcdAfter []disturbance
}

func run(o options) error {
	if o.nodes < 1 || o.clients < 1 || o.runs < 1 || o.keys < 1 || o.seconds <= 0 {
		return fmt.Errorf("-nodes, -clients, -runs, -keys and -seconds must be positive")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	fmt.Printf("machine: %d CPUs, GOMAXPROCS %d, %s %s/%s\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("etcd: %s (embedded)\n", version.Version)
	fmt.Printf("setup: %d nodes each, %d clients, %d keys x %d-byte values, %d rounds x %v; GridKV GroupsPerNode %d (0: default)\n",
		o.nodes, o.clients, o.keys, o.valueBytes, o.runs, o.seconds, o.groupsPerNode)

	dbs, err := startGridKV(ctx, o.nodes, o.groupsPerNode)
	defer func() {
		for _, db := range dbs {
			if err := db.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "gridkv close:", err)
			}
		}
	}()
	if err != nil {
		return err
	}
	readyCtx, cancelReady := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelReady()
	etcd, err := startEtcd(readyCtx, o.nodes)
	if err != nil {
		return err
	}
	defer func() {
		if err := etcd.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "etcd close:", err)
		}
	}()

	start := time.Now()
	if err := loadgen.Preload(ctx, dbs, o.keys, o.valueBytes); err != nil {
		return fmt.Errorf("gridkv preload: %w", err)
	}
	if err := loadgen.Fill(ctx, etcd.stores(false), o.keys, o.valueBytes); err != nil {
		return fmt.Errorf("etcd preload: %w", err)
	}
	fmt.Printf("preloaded both in %v\n\n", time.Since(start).Round(time.Millisecond))

	b := &bench{dbs: dbs, etcd: etcd, probes: groupProbes(dbs[0])}
	outcomes := make([]outcome, 0, 6)
	for _, p := range pairs(o.nodes) {
		if o.rows != "" && !slices.Contains(strings.Split(o.rows, ","), p.name) {
			continue
		}
		outcomes = append(outcomes, outcome{pair: p})
	}
	for r := 1; r <= o.runs; r++ {
		for i := range outcomes {
			oc := &outcomes[i]
			w := loadgen.Workload{Clients: o.clients, Keys: o.keys, ValueBytes: o.valueBytes,
				ReadRatio: oc.readRatio, Duration: o.seconds}
			if oc.halfOf != "" {
				peak := slices.IndexFunc(outcomes, func(p outcome) bool { return p.name == oc.halfOf })
				if peak < 0 || peak > i {
					return fmt.Errorf("row %s needs row %s before it", oc.name, oc.halfOf)
				}
				w.Rate = outcomes[peak].gridkv[r-1].OpsPerSec / 2
				if w.Rate <= 0 {
					return fmt.Errorf("row %s: row %s did nothing in round %d to pace at", oc.name, oc.halfOf, r)
				}
				fmt.Printf("round %d %-14s paced at %.0f ops/s\n", r, oc.name, w.Rate)
			}
			w.Name = "gridkv"
			g, gd := b.measure(ctx, loadgen.Stores(dbs, oc.gridkvOpts...), w)
			fmt.Printf("round %d %-14s %s%s\n", r, oc.name, g, gd)
			w.Name = "etcd"
			e, ed := b.measure(ctx, etcd.stores(oc.serializable), w)
			fmt.Printf("round %d %-14s %s%s\n", r, oc.name, e, ed)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			oc.gridkv, oc.gridkvAfter = append(oc.gridkv, g), append(oc.gridkvAfter, gd)
			oc.etcd, oc.etcdAfter = append(oc.etcd, e), append(oc.etcdAfter, ed)
		}
	}

	fmt.Printf("\nMedians of %d runs of %v; %d nodes each, %d clients, %d keys x %d-byte values.\n\n",
		o.runs, o.seconds, o.nodes, o.clients, o.keys, o.valueBytes)
	fmt.Print(table(outcomes))
	fmt.Print(disturbances(outcomes))
	if o.plotPath != "" {
		if err := writePlot(o.plotPath, outcomes, o); err != nil {
			return err
		}
		fmt.Printf("\nplot written to %s\n", o.plotPath)
	}
	return nil
}

// startGridKV opens n nodes that form one cluster together
// (BootstrapExpect n, so it has GroupsPerNode x n replica groups), waits
// until every group is served, and returns the nodes opened so far even on
// error, for the caller to close.
func startGridKV(ctx context.Context, n, groupsPerNode int) ([]*gridkv.DB, error) {
	readyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dbs, err := cluster.Form(readyCtx, n, gridkv.Config{GroupsPerNode: groupsPerNode})
	if err != nil {
		return dbs, err
	}
	// Let leaderships settle on the placement plan before measuring.
	time.Sleep(2 * time.Second)
	return dbs, nil
}

// bench holds the two clusters between runs.
type bench struct {
	dbs    []*gridkv.DB
	etcd   *etcdCluster
	probes []string // a key in each GridKV replica group
}

// disturbance is what a run did to the leaderships of both systems, as
// seen once it ended, while they settled.
type disturbance struct {
	// gridkvUnled counts the GridKV groups whose leader, as node n0 saw
	// it, was missing or another node at some point: n0's replica timed
	// out waiting for heartbeats (a pre-vote then usually fails and the
	// leader stays) or the leader changed.
	gridkvUnled int
	etcdTerms   uint64 // etcd elections: how far its Raft term went up
}

func (d disturbance) String() string {
	if d == (disturbance{}) {
		return ""
	}
	return fmt.Sprintf("  [after it: %d GridKV groups lost their leader, etcd term +%d]", d.gridkvUnled, d.etcdTerms)
}

// measure drives w against stores, then settles both systems before the
// next run. 64 clients in a busy loop (Stale and serializable reads never
// block) can starve the Raft goroutines of either system of CPU on a small
// machine, and followers that miss heartbeats call elections, some only
// after the run; settling keeps them out of the next run, and the
// disturbance says they happened.
func (b *bench) measure(ctx context.Context, stores []loadgen.Store, w loadgen.Workload) (loadgen.Result, disturbance) {
	before, term := leaders(b.dbs[0], b.probes), b.etcd.members[0].Server.Term()
	r := loadgen.Drive(ctx, stores, w)
	unled := b.settle(ctx, before)
	return r, disturbance{gridkvUnled: unled, etcdTerms: b.etcd.members[0].Server.Term() - term}
}

// settle waits, at most 30s, until the GridKV leaders seen by dbs[0] have
// held, none missing, for longer than a follower's heartbeat timeout (so
// an election a run set off has been called by now), and every node is
// ready. It returns how many groups had no leader or another one than
// before at some point meanwhile.
func (b *bench) settle(ctx context.Context, before []string) int {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	const quiet = 1500 * time.Millisecond // > 1s, hashicorp/raft's default HeartbeatTimeout
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	unled := make([]bool, len(before))
	var last []string
	var since time.Time
	for ctx.Err() == nil {
		now := leaders(b.dbs[0], b.probes)
		for i := range now {
			unled[i] = unled[i] || now[i] != before[i]
		}
		if !slices.Equal(now, last) || slices.Contains(now, "") {
			last, since = now, time.Now()
		} else if time.Since(since) >= quiet {
			break
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	for _, db := range b.dbs {
		_ = db.WaitReady(ctx) // best effort: the next run shows what is left
	}
	n := 0
	for _, m := range unled {
		if m {
			n++
		}
	}
	return n
}

// groupProbes returns a key in each of db's replica groups.
func groupProbes(db *gridkv.DB) []string {
	seen := map[int]bool{}
	var probes []string
	for k := 0; k < 1<<12; k++ { // far more keys than groups
		loc, err := db.Locate(loadgen.Key(k))
		if err == nil && !seen[loc.Group] {
			seen[loc.Group] = true
			probes = append(probes, loadgen.Key(k))
		}
	}
	return probes
}

// leaders lists each probe's group leader as db knows it.
func leaders(db *gridkv.DB, probes []string) []string {
	ids := make([]string, len(probes))
	for i, key := range probes {
		loc, _ := db.Locate(key)
		ids[i] = loc.Leader
	}
	return ids
}

// disturbances lists, under the table, the workloads whose runs disturbed
// leaders, and by how much in each run.
func disturbances(outcomes []outcome) string {
	var b strings.Builder
	for _, oc := range outcomes {
		for _, side := range []struct {
			name string
			ds   []disturbance
		}{{"GridKV", oc.gridkvAfter}, {"etcd", oc.etcdAfter}} {
			if slices.ContainsFunc(side.ds, func(d disturbance) bool { return d != disturbance{} }) {
				fmt.Fprintf(&b, "\nAfter %s's %s runs, GridKV groups that lost their leader / etcd elections:", side.name, oc.name)
				for _, d := range side.ds {
					fmt.Fprintf(&b, " %d/%d", d.gridkvUnled, d.etcdTerms)
				}
			}
		}
	}
	if b.Len() > 0 {
		b.WriteString("\n(A run's busy clients starved Raft of CPU; the next run started once both had settled.)\n")
	}
	return b.String()
}

// stats are the medians of a system's runs of one workload.
type stats struct {
	opsPerSec float64
	p50, p99  time.Duration
}

func medians(rs []loadgen.Result) stats {
	ops := make([]float64, len(rs))
	p50 := make([]time.Duration, len(rs))
	p99 := make([]time.Duration, len(rs))
	for i, r := range rs {
		ops[i], p50[i], p99[i] = r.OpsPerSec, r.P50, r.P99
	}
	return stats{median(ops), median(p50), median(p99)}
}

// median of xs (the mean of the middle two when len(xs) is even).
func median[T float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 0 {
		return (s[m-1] + s[m]) / 2
	}
	return s[m]
}

// ratio is GridKV's median throughput over etcd's (0 if etcd did nothing).
func (oc outcome) ratio() float64 {
	e := medians(oc.etcd).opsPerSec
	if e == 0 {
		return 0
	}
	return medians(oc.gridkv).opsPerSec / e
}

func table(outcomes []outcome) string {
	var b strings.Builder
	b.WriteString("| workload | GridKV | ops/s | p50 | p99 | etcd | ops/s | p50 | p99 | GridKV/etcd ops/s |\n")
	b.WriteString("|---|---|--:|--:|--:|---|--:|--:|--:|--:|\n")
	for _, oc := range outcomes {
		g, e := medians(oc.gridkv), medians(oc.etcd)
		fmt.Fprintf(&b, "| %s | %s | %.0f | %v | %v | %s | %.0f | %v | %v | %.2f |\n",
			oc.name, oc.gridkvOp, g.opsPerSec, short(g.p50), short(g.p99),
			oc.etcdOp, e.opsPerSec, short(e.p50), short(e.p99), oc.ratio())
	}
	return b.String()
}

// short rounds d to three significant digits or so: 2.85ms, 708µs.
func short(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
