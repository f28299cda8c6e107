// Command raftbench measures the raftgroup engine beside a baseline of
// hashicorp's NetworkTransport per group: idle cost of many groups, and
// replicated write throughput through raft.Apply.
//
//	go run ./raftbench -mode idle -groups 64 -transport mux
//	go run ./raftbench -mode write -groups 64 -batch 64 -transport net
//
// Each run starts 3 nodes in this process over loopback TCP; every group
// has a replica on each node. One line of results goes to stdout.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/fsm/fsmpb"
	"github.com/gridkv/gridkv/raftgroup"
)

func main() {
	mode := flag.String("mode", "idle", "idle or write")
	transport := flag.String("transport", "mux", "mux (raftgroup's shared transport) or net (NetworkTransport per group)")
	nodes := flag.Int("nodes", 3, "nodes (each holds a replica of every group)")
	groups := flag.Int("groups", 64, "raft groups")
	window := flag.Duration("window", 10*time.Second, "measurement window")
	writers := flag.Int("writers", 64, "concurrent writers (write mode)")
	batch := flag.Int("batch", 1, "operations per log entry (write mode)")
	commitTimeout := flag.Duration("commit-timeout", 0, "raft CommitTimeout for both transports (0 = each side's default: raftgroup's 1s for mux, raft's 50ms for net)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measurement window here")
	flag.Parse()
	if *cpuprofile != "" {
		profilePath = *cpuprofile
	}

	benchCommitTimeout = *commitTimeout
	c, err := startCluster(*transport, *nodes, *groups)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.close()
	if err := c.waitLeaders(60 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	switch *mode {
	case "idle":
		idle(c, *transport, *groups, *window)
	case "write":
		write(c, *transport, *groups, *writers, *batch, *window)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
}

type cluster struct {
	rafts         [][]*raft.Raft // [node][group]
	closers       []func()
	leaderChanges atomic.Int64
	obsCh         chan raft.Observation
	obsDone       chan struct{}
}

func startCluster(kind string, nodes, groups int) (*cluster, error) {
	c := &cluster{obsCh: make(chan raft.Observation, 4096), obsDone: make(chan struct{})}
	go func() {
		defer close(c.obsDone)
		for o := range c.obsCh {
			if _, ok := o.Data.(raft.LeaderObservation); ok {
				c.leaderChanges.Add(1)
			}
		}
	}()
	type member struct {
		id   raft.ServerID
		addr string
	}
	var members []member
	var hosts []*raftgroup.Host
	var muxes []*muxListener
	for n := 0; n < nodes; n++ {
		cfg := nodeConfig(n)
		switch kind {
		case "mux":
			h, err := raftgroup.NewHost(cfg)
			if err != nil {
				return nil, err
			}
			hosts = append(hosts, h)
			members = append(members, member{h.ID(), h.Addr()})
			c.closers = append(c.closers, func() { h.Close() })
		case "net":
			m, err := newMuxListener()
			if err != nil {
				return nil, err
			}
			muxes = append(muxes, m)
			members = append(members, member{raftgroup.ServerID(cfg.NodeID, 1), m.ln.Addr().String()})
		default:
			return nil, fmt.Errorf("unknown transport %q", kind)
		}
	}
	var servers []raft.Server
	for _, m := range members {
		servers = append(servers, raft.Server{ID: m.id, Address: raft.ServerAddress(m.addr)})
	}
	c.rafts = make([][]*raft.Raft, nodes)
	for n := 0; n < nodes; n++ {
		for g := 0; g < groups; g++ {
			var r *raft.Raft
			switch kind {
			case "mux":
				gr, err := hosts[n].CreateGroup(raftgroup.GroupID(g), fsm.New(fsm.Options{}), raftgroup.GroupOptions{Bootstrap: servers})
				if err != nil {
					return nil, err
				}
				r = gr.Raft()
			case "net":
				rc, err := nodeConfig(n).RaftConfig(members[n].id)
				if err != nil {
					return nil, err
				}
				if benchCommitTimeout == 0 {
					// The baseline is what hashicorp/raft gives by default.
					rc.CommitTimeout = raft.DefaultConfig().CommitTimeout
				}
				logs, stable, snaps := raftgroup.NewLogStore(), raftgroup.NewStableStore(), raft.NewInmemSnapshotStore()
				trans := newBaselineTransport(muxes[n], uint64(g))
				if err := raft.BootstrapCluster(rc, logs, stable, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
					return nil, err
				}
				r, err = raft.NewRaft(rc, fsm.New(fsm.Options{}), logs, stable, snaps, trans)
				if err != nil {
					return nil, err
				}
				rr := r
				c.closers = append([]func(){func() { _ = rr.Shutdown().Error() }}, c.closers...)
			}
			r.RegisterObserver(raft.NewObserver(c.obsCh, false, nil))
			c.rafts[n] = append(c.rafts[n], r)
		}
	}
	for _, m := range muxes {
		c.closers = append(c.closers, m.close)
	}
	return c, nil
}

func (c *cluster) close() {
	var wg sync.WaitGroup
	for _, f := range c.closers {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	close(c.obsCh)
	<-c.obsDone
}

func (c *cluster) leader(g int) *raft.Raft {
	for _, node := range c.rafts {
		if node[g].State() == raft.Leader {
			return node[g]
		}
	}
	return nil
}

func (c *cluster) waitLeaders(within time.Duration) error {
	deadline := time.Now().Add(within)
	for g := range c.rafts[0] {
		for c.leader(g) == nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("group %d has no leader after %v", g, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

var (
	profilePath        string
	benchCommitTimeout time.Duration
)

func nodeConfig(n int) raftgroup.Config {
	return raftgroup.Config{NodeID: fmt.Sprint("n", n), Incarnation: 1, Logger: discard, CommitTimeout: benchCommitTimeout}
}

// startProfile starts the CPU profile, if asked for; the returned func stops it.
func startProfile() func() {
	if profilePath == "" {
		return func() {}
	}
	f, err := os.Create(profilePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = pprof.StartCPUProfile(f)
	return func() { pprof.StopCPUProfile(); f.Close() }
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func idle(c *cluster, kind string, groups int, window time.Duration) {
	time.Sleep(3 * time.Second) // let elections and the first heartbeats settle
	runtime.GC()
	changes0 := c.leaderChanges.Load()
	stopProfile := startProfile()
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(window)
	stopProfile()
	cpu := float64(cpuTime()-cpu0) / float64(time.Since(t0))
	changes := c.leaderChanges.Load() - changes0
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("idle transport=%s groups=%d window=%v cpu_core_share=%.3f heap_mib=%.1f goroutines=%d leader_changes=%d\n",
		kind, groups, window, cpu, float64(ms.HeapAlloc)/(1<<20), runtime.NumGoroutine(), changes)
}

// variantsPerWriter is how many distinct commands each writer cycles
// through; keys = writers x variants x batch, so runs measure steady-state
// overwrites, not map growth.
const variantsPerWriter = 16

func write(c *cluster, kind string, groups, writers, batch int, window time.Duration) {
	// Commands are encoded before the clock starts (a ring of variants per
	// writer), so the run measures replication and apply, not the client.
	value := make([]byte, 40)
	cmds := make([][][]byte, writers)
	for w := range cmds {
		for v := 0; v < variantsPerWriter; v++ {
			key := fmt.Sprintf("w%02d-%08d", w, v)
			var data []byte
			if batch == 1 {
				data, _ = fsm.Encode(fsm.SetOp(0, key, value, 0))
			} else {
				ops := make([]*fsmpb.Command, batch)
				for j := range ops {
					ops[j] = fsm.SetOp(0, fmt.Sprintf("%s-%02d", key, j), value, 0)
				}
				data, _ = fsm.Encode(fsm.BatchOp(ops...))
			}
			cmds[w] = append(cmds[w], data)
		}
	}
	cmd := func(w, i int) []byte { return cmds[w][i%variantsPerWriter] }
	// Every key lives in range 0, which each group's state machine owns
	// once the group has logged its Genesis.
	genesis, _ := fsm.Encode(fsm.GenesisOp([]int{0}))
	deadline := time.Now().Add(time.Minute)
	for g := 0; g < groups; g++ {
		for {
			if r := c.leader(g); r != nil && r.Apply(genesis, 5*time.Second).Error() == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "group %d: no Genesis applied within a minute\n", g)
				os.Exit(1)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if batch == 1 {
		fmt.Fprintf(os.Stderr, "command size %d bytes\n", len(cmd(0, 0)))
	}
	var (
		stop     atomic.Bool
		measure  atomic.Bool
		ops      atomic.Int64
		failures atomic.Int64
		wg       sync.WaitGroup
		lats     = make([][]time.Duration, writers)
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := w % groups
			for i := 0; !stop.Load(); i++ {
				r := c.leader(g)
				if r == nil {
					time.Sleep(time.Millisecond)
					continue
				}
				data := cmd(w, i)
				start := time.Now()
				f := r.Apply(data, 5*time.Second)
				if err := f.Error(); err != nil {
					failures.Add(1)
					continue
				}
				if res, ok := f.Response().(*fsm.Result); ok && res.Err != nil {
					failures.Add(1)
					continue
				}
				if measure.Load() {
					lats[w] = append(lats[w], time.Since(start))
					ops.Add(int64(batch))
				}
			}
		}()
	}
	time.Sleep(time.Second) // warm up
	measure.Store(true)
	t0 := time.Now()
	cpu0 := cpuTime()
	stopProfile := startProfile()
	time.Sleep(window)
	stopProfile()
	measure.Store(false)
	elapsed := time.Since(t0)
	cpu := float64(cpuTime()-cpu0) / float64(elapsed)
	stop.Store(true)
	wg.Wait()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[int(p*float64(len(all)-1))]
	}
	fmt.Printf("write transport=%s groups=%d writers=%d batch=%d ops_per_s=%.0f p50=%v p99=%v failures=%d cpu_cores=%.2f heap_after_mib=%.0f\n",
		kind, groups, writers, batch, float64(ops.Load())/elapsed.Seconds(), pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), failures.Load(), cpu, float64(ms.HeapAlloc)/(1<<20))
}
