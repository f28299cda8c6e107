package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testcerts"
	"github.com/gridkv/gridkv/raftgroup"
	"github.com/prometheus/client_golang/prometheus"
)

func openBench(b *testing.B) *DB {
	db, err := Open(Config{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return db
}

// BenchmarkSingleNodeGet: parallel default (linearizable) Gets of 10k
// present keys on a zero-Config node.
func BenchmarkSingleNodeGet(b *testing.B) {
	db := openBench(b)
	ctx := context.Background()
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		if err := db.Set(ctx, keys[i], make([]byte, 64)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1000))
		for pb.Next() {
			if _, err := db.Get(ctx, keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkSingleNodeSet: parallel Sets (64-byte values, 10k keys) from 256
// goroutines per core: with 64 ranges, each range's group commit needs company.
func BenchmarkSingleNodeSet(b *testing.B) {
	db := openBench(b)
	ctx := context.Background()
	value := make([]byte, 64)
	b.ReportAllocs()
	b.SetParallelism(256)
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1000))
		for pb.Next() {
			if err := db.Set(ctx, fmt.Sprint("key", i%10000), value); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func leaseStats(dbs []*DB) (hits, misses uint64) {
	for _, db := range dbs {
		for _, g := range db.host.Groups() {
			h, m := g.LeaseStats()
			hits += h
			misses += m
		}
	}
	return hits, misses
}

// BenchmarkThreeNodeGet: parallel Gets of 10k present keys on a 3-node
// cluster, by read path. "default" spreads clients over the nodes (2/3 of
// the reads are forwarded); "leader-local" has each client read only keys
// whose range its node leads; "stale" reads any node's replica. Reports
// ops/s, the cluster's CPU time per op, the transport's frames per write
// syscall, and the share of lease checks that found a valid lease.
func BenchmarkThreeNodeGet(b *testing.B) {
	dbs := openCluster(b, 3, Config{BootstrapExpect: 3})
	ctx := context.Background()
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		if err := dbs[i%3].Set(ctx, keys[i], make([]byte, 16)); err != nil {
			b.Fatal(err)
		}
	}
	// The keys each node leads the range of, as of now.
	led := make([][]string, len(dbs))
	for i, db := range dbs {
		for _, k := range keys {
			if rep := db.replica(groupOf(db, k)); rep != nil && rep.group.IsLeader() {
				led[i] = append(led[i], k)
			}
		}
	}
	for _, path := range []string{"default", "leader-local", "stale", "readindex", "quorum-2", "quorum-2-writes-10%"} {
		b.Run(path, func(b *testing.B) {
			var opts []ReadOption
			switch path {
			case "stale":
				opts = []ReadOption{Stale()}
			case "readindex":
				opts = []ReadOption{ReadIndex()}
			case "quorum-2", "quorum-2-writes-10%":
				opts = []ReadOption{Quorum(2)}
			}
			var qw0, qn0 int64
			for _, db := range dbs {
				qw0 += db.quorumWaits.Load()
				qn0 += db.quorumWaitNanos.Load()
			}
			h0, m0 := leaseStats(dbs)
			var s0 raftgroup.Stats
			for _, db := range dbs {
				s0 = addStats(s0, db.host.Stats())
			}
			cpu0 := cpuTime()
			b.SetParallelism(64 / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			start := time.Now()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				c := int(next.Add(1))
				db, ks := dbs[c%len(dbs)], keys
				if path == "leader-local" && len(led[c%len(dbs)]) > 0 {
					ks = led[c%len(dbs)]
				}
				i := c * 1000
				for pb.Next() {
					if path == "quorum-2-writes-10%" && i%10 == 0 {
						if err := db.Set(ctx, ks[i%len(ks)], make([]byte, 16)); err != nil {
							b.Error(err)
							return
						}
					} else if _, err := db.Get(ctx, ks[i%len(ks)], opts...); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
			var s1 raftgroup.Stats
			for _, db := range dbs {
				s1 = addStats(s1, db.host.Stats())
			}
			if w := s1.Writes - s0.Writes; w > 0 {
				b.ReportMetric(float64(s1.FramesWritten-s0.FramesWritten)/float64(w), "frames/syscall")
			}
			var qw, qn int64
			for _, db := range dbs {
				qw += db.quorumWaits.Load()
				qn += db.quorumWaitNanos.Load()
			}
			if qw > qw0 {
				b.ReportMetric(100*float64(qw-qw0)/float64(b.N), "quorum-waits-%")
				b.ReportMetric(float64(qn-qn0)/float64(qw-qw0)/1e3, "µs/wait")
			}
			if h1, m1 := leaseStats(dbs); h1+m1 > h0+m0 {
				b.ReportMetric(100*float64(h1-h0)/float64(h1-h0+m1-m0), "lease-hit-%")
			}
		})
	}
}

// BenchmarkForwardedGet: parallel default Gets of 10k present keys on a
// 3-node cluster, 64 goroutines spread over the nodes: about 2/3 of them
// forwarded to their range's leader. With 3 replicas a range's leader
// confirms its leadership for them (ReadIndex); with 1 it answers at once
// (a sole voter), which leaves the cost of forwarding. Reports the
// forwarded reads per frame, and the cluster's CPU time per Get.
func BenchmarkForwardedGet(b *testing.B) {
	for _, replicas := range []int{3, 1} {
		b.Run(fmt.Sprint("replicas=", replicas), func(b *testing.B) { benchmarkForwardedGet(b, replicas) })
	}
}

func benchmarkForwardedGet(b *testing.B, replicas int) {
	nodes := openCluster(b, 3, Config{ReplicaCount: replicas})
	ctx := context.Background()
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		if err := nodes[i%3].Set(ctx, keys[i], make([]byte, 64)); err != nil {
			b.Fatal(err)
		}
	}
	sent := func() (frames, reads int64) {
		for _, db := range nodes {
			frames += db.fwd.readFrames.Load()
			reads += db.fwd.reads.Load()
		}
		return frames, reads
	}
	frames0, reads0 := sent()
	cpu0 := cpuTime()
	b.ReportAllocs()
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		c := int(next.Add(1))
		db, i := nodes[c%3], c*1000
		for pb.Next() {
			if _, err := db.Get(ctx, keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
	// CPU per Get, the whole cluster's: steadier than ops/s on a shared
	// machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
	if f, r := sent(); f > frames0 {
		b.ReportMetric(float64(r-reads0)/float64(f-frames0), "reads/frame")
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runClients is the closed loop the 3-node benchmarks share: 64 clients
// (b.SetParallelism over GOMAXPROCS), client c calling node c mod
// len(dbs), each calling op with its node's index and a counter starting
// at c*1000; it reports ops/s and the process's CPU time per op.
func runClients(b *testing.B, dbs []*DB, op func(n, i int) error) {
	cpu0 := cpuTime()
	b.SetParallelism(64 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		c := int(next.Add(1))
		n, i := c%len(dbs), c*1000
		for pb.Next() {
			if err := op(n, i); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

// BenchmarkThreeNodeSet: parallel Sets (16-byte values, 10k keys) from 64
// clients spread over a 3-node cluster formed together, by GroupsPerNode.
// Reports ops/s, the cluster's CPU time per Set, writes per log entry,
// forwarded writes per frame, and the transport's frames per write syscall
// and entries per AppendEntries.
func BenchmarkThreeNodeSet(b *testing.B) {
	for _, perNode := range []int{1, 2, 4} {
		b.Run(fmt.Sprint("groups-per-node=", perNode), func(b *testing.B) {
			dbs := openCluster(b, 3, Config{BootstrapExpect: 3, GroupsPerNode: perNode})
			ctx := context.Background()
			value := make([]byte, 16)
			var e0, w0, fw0, ff0 int64
			var s0 raftgroup.Stats
			for _, db := range dbs {
				e0, w0 = e0+db.batchEntries.Load(), w0+db.batchWrites.Load()
				fw0, ff0 = fw0+db.fwd.writes.Load(), ff0+db.fwd.writeFrames.Load()
				s0 = addStats(s0, db.host.Stats())
			}
			runClients(b, dbs, func(n, i int) error {
				return dbs[n].Set(ctx, fmt.Sprint("key", i%10000), value)
			})
			var e1, w1, fw1, ff1 int64
			var s1 raftgroup.Stats
			for _, db := range dbs {
				e1, w1 = e1+db.batchEntries.Load(), w1+db.batchWrites.Load()
				fw1, ff1 = fw1+db.fwd.writes.Load(), ff1+db.fwd.writeFrames.Load()
				s1 = addStats(s1, db.host.Stats())
			}
			ratio := func(num, den int64, unit string) {
				if den > 0 {
					b.ReportMetric(float64(num)/float64(den), unit)
				}
			}
			ratio(w1-w0, e1-e0, "writes/entry")
			ratio(fw1-fw0, ff1-ff0, "fwd-writes/frame")
			ratio(int64(s1.FramesWritten-s0.FramesWritten), int64(s1.Writes-s0.Writes), "frames/syscall")
			ratio(int64(s1.Entries-s0.Entries), int64(s1.AppendEntries-s0.AppendEntries), "entries/AE")
		})
	}
}

// BenchmarkMetricsCost: what Config.Metrics costs, on and off in one run.
// Two 3-node clusters formed together (default timings, GroupsPerNode 1),
// one registering its metrics (one registry for its three nodes), take in
// turn parallel Sets (16-byte values, 10k keys, 64 clients spread over the
// nodes, as BenchmarkThreeNodeSet) and parallel default Gets that every
// node serves under its lease (each client reads keys whose group its node
// leads). Reports ops/s and the process's CPU time per op; the other
// cluster idles meanwhile, with its heartbeats, in both modes alike.
func BenchmarkMetricsCost(b *testing.B) {
	clusters := map[string][]*DB{
		"off": openCluster(b, 3, Config{BootstrapExpect: 3}),
		"on":  openCluster(b, 3, Config{BootstrapExpect: 3, Metrics: prometheus.NewRegistry()}),
	}
	ctx := context.Background()
	led := map[string][][]string{} // per cluster, per node: keys whose group it leads
	for mode, dbs := range clusters {
		if (dbs[0].met != nil) != (mode == "on") {
			b.Fatalf("cluster %q: metrics %v", mode, dbs[0].met != nil)
		}
		led[mode] = make([][]string, len(dbs))
		for i := range 10000 {
			k := fmt.Sprint("key", i)
			if err := dbs[i%3].Set(ctx, k, make([]byte, 16)); err != nil {
				b.Fatal(err)
			}
			for n, db := range dbs {
				if rep := db.replica(groupOf(db, k)); rep != nil && rep.group.IsLeader() {
					led[mode][n] = append(led[mode][n], k)
				}
			}
		}
	}
	for _, op := range []string{"set", "get"} {
		for _, mode := range []string{"off", "on"} {
			b.Run(op+"/metrics="+mode, func(b *testing.B) {
				dbs := clusters[mode]
				value := make([]byte, 16)
				b.ReportAllocs()
				keys := led[mode]
				runClients(b, dbs, func(n, i int) error {
					if op == "set" {
						return dbs[n].Set(ctx, fmt.Sprint("key", i%10000), value)
					}
					if len(keys[n]) == 0 {
						return nil
					}
					_, err := dbs[n].Get(ctx, keys[n][i%len(keys[n])])
					return err
				})
			})
		}
	}
}

func addStats(a, b raftgroup.Stats) raftgroup.Stats {
	a.FramesWritten += b.FramesWritten
	a.Writes += b.Writes
	a.FramesRead += b.FramesRead
	a.Reads += b.Reads
	a.AppendEntries += b.AppendEntries
	a.Entries += b.Entries
	a.Applies += b.Applies
	a.Goroutines += b.Goroutines
	return a
}

// BenchmarkMoveRange: the time a range of 1, 10, 30 or 100 MB (keys of about
// 10 B with 1,000 B values) takes to move between two replica groups of 3
// nodes (default timings, GroupsPerNode 1), from the move request to the
// target owning it. Writes to the range are refused (and retried by the
// router) for at most that long: the range is Frozen from the first step
// (Freeze) to the target's Activate. Each iteration moves it on, to the
// next group.
//
//	go test ./gridkv -run '^$' -bench MoveRange -benchtime 1x
func BenchmarkMoveRange(b *testing.B) {
	for _, mb := range []int{1, 10, 30, 100} {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			nodes := formCluster(b, 3, Config{BootstrapExpect: 3, GroupsPerNode: 1})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			const r = 5
			val := make([]byte, 1000)
			keys := keysIn("move", r, nodes[0].cfg.Ranges, mb*1000)
			work := make(chan string)
			errs := make(chan error, 64)
			var wg sync.WaitGroup
			for w := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := range work {
						if err := nodes[w%3].Set(ctx, k, val); err != nil {
							select {
							case errs <- err:
							default:
							}
						}
					}
				}()
			}
			loadStart := time.Now()
			for _, k := range keys {
				work <- k
			}
			close(work)
			wg.Wait()
			b.Logf("%d keys written in %v", len(keys), time.Since(loadStart).Round(time.Millisecond))
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			groups := nodes[0].groupCount()
			to, _ := nodes[0].lay.Load().routes.lookup(r)
			b.ResetTimer()
			for range b.N {
				to = (to + 1) % groups
				if err := nodes[0].moveRange(ctx, r, to); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(len(keys)*(len(val)+len(keys[0])))/1e6, "MB")
			if got, err := nodes[1].Get(ctx, keys[len(keys)-1]); err != nil || len(got) != len(val) {
				b.Fatalf("after the moves: %d bytes, %v", len(got), err)
			}
		})
	}
}

// BenchmarkIncr: counters on 3 nodes (GroupsPerNode 1), 64 parallel
// callers spread over the nodes, by Incr and by the loop it replaces (Get,
// then CompareAndSwap of the old value for old+1, again on a lost race),
// on one hot key and over 10,000 keys. ops/s counts increments done.
//
//	go test ./gridkv -run '^$' -bench Incr -benchtime 3s
func BenchmarkIncr(b *testing.B) {
	nodes := formCluster(b, 3, Config{BootstrapExpect: 3, GroupsPerNode: 1})
	casIncr := func(ctx context.Context, db *DB, key string) error {
		for {
			old, err := db.Get(ctx, key)
			if errors.Is(err, ErrNotFound) {
				old, err = nil, nil
			}
			if err != nil {
				return err
			}
			n := int64(0)
			if old != nil {
				if n, err = strconv.ParseInt(string(old), 10, 64); err != nil {
					return err
				}
			}
			if ok, err := db.CompareAndSwap(ctx, key, old, []byte(strconv.FormatInt(n+1, 10))); err != nil || ok {
				return err
			}
		}
	}
	for _, keys := range []int{1, 10000} {
		for _, how := range []string{"incr", "cas-loop"} {
			b.Run(fmt.Sprintf("keys-%d/%s", keys, how), func(b *testing.B) {
				ctx := context.Background()
				var next atomic.Int64
				b.SetParallelism(32) // 64 callers on 2 cores
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					i := next.Add(1)
					db := nodes[i%3]
					for pb.Next() {
						key := fmt.Sprint("ctr-", (i*7919)%int64(keys))
						i++
						var err error
						if how == "incr" {
							_, err = db.Incr(ctx, key, 1)
						} else {
							err = casIncr(ctx, db, key)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
			})
		}
	}
}

// BenchmarkWatch: the write throughput of 3 nodes (GroupsPerNode 1, 64
// parallel Set callers spread over the nodes, 16-byte values) with no
// watcher and with 1,000 watchers (333 or 334 per node, each on its own
// prefix "w<i>/"; every write matches one of them), and the delay from
// each Set's invocation to its event's arrival at its watcher. The
// writes' own latency (invocation to acknowledgement) is reported beside
// it: the event can arrive before the writer hears its acknowledgement.
//
//	go test ./gridkv -run '^$' -bench Watch -benchtime 5s
func BenchmarkWatch(b *testing.B) {
	nodes := formCluster(b, 3, Config{BootstrapExpect: 3, GroupsPerNode: 1})
	const prefixes = 1000
	for _, watchers := range []int{0, 1000} {
		b.Run(fmt.Sprintf("watchers-%d", watchers), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				delays []time.Duration
				events int
			)
			ws := make([]*Watcher, 0, watchers)
			for i := 0; i < watchers; i++ {
				w, err := nodes[i%3].Watch(ctx, fmt.Sprintf("w%d/", i))
				if err != nil {
					b.Fatal(err)
				}
				ws = append(ws, w)
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for e := range w.Events() {
						if e.Kind == EventSet && len(e.Value) == 16 {
							sent := int64(binary.LittleEndian.Uint64(e.Value))
							mine = append(mine, time.Duration(time.Now().UnixNano()-sent))
						}
					}
					if err := w.Err(); !errors.Is(err, ErrClosed) {
						b.Error(err)
					}
					mu.Lock()
					delays = append(delays, mine...)
					events += len(mine)
					mu.Unlock()
				}()
			}
			var next atomic.Int64
			var lat []time.Duration
			b.SetParallelism(32) // 64 callers on 2 cores
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				i := next.Add(1)
				db := nodes[i%3]
				var mine []time.Duration
				val := make([]byte, 16)
				for pb.Next() {
					key := fmt.Sprintf("w%d/%d", (i*7919)%prefixes, i%100)
					i++
					t0 := time.Now()
					binary.LittleEndian.PutUint64(val, uint64(t0.UnixNano()))
					if err := db.Set(ctx, key, val); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
			slices.Sort(lat)
			b.ReportMetric(float64(pct(lat, 0.50))/1e6, "set-p50-ms")
			if watchers == 0 {
				return
			}
			// Let the last events arrive, then end the watches.
			deadline := time.Now().Add(10 * time.Second)
			for {
				if time.Now().After(deadline) {
					break
				}
				all := true
				for _, w := range ws {
					if len(w.ch) > 0 {
						all = false
					}
				}
				if all {
					break
				}
				<-time.After(10 * time.Millisecond)
			}
			<-time.After(200 * time.Millisecond) // in flight from the leaders
			for _, w := range ws {
				w.Close()
			}
			wg.Wait()
			slices.Sort(delays)
			b.ReportMetric(float64(events)/float64(b.N), "events/set")
			b.ReportMetric(float64(pct(delays, 0.50))/1e6, "delay-p50-ms")
			b.ReportMetric(float64(pct(delays, 0.99))/1e6, "delay-p99-ms")
		})
	}
}

// pct is the q-quantile of sorted durations (0 when empty).
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// BenchmarkScan: a full Scan (default mode, from one node) of 1,000,000
// keys of 16 bytes with 100-byte values, on 3 nodes (default timings,
// GroupsPerNode 1, 1024 ranges), loaded by 64 concurrent Sets. Reports
// the scan's keys/s and time, and the Go heap's growth while it ran (the
// whole process: the three nodes serving pages and the scan merging
// them). heap-growth-MiB is the peak of the heap's object bytes, sampled
// every 2 ms, less the figure before the scan (after a GC): garbage the
// collector has not reclaimed yet counts too, so it follows GOGC as much
// as the scan. live-growth-MiB is what the scan holds (its buffered pages,
// and pages being served): in a second, untimed scan, the loop stops every
// 100,000 keys to force two GCs and read the same figure, less the figure
// before. While the loop stops, the workers only finish the page requests
// already sent, and the second GC reclaims what the first left floating
// (one alone read up to 10 MiB more, varying from sample to sample).
//
//	go test ./gridkv -run '^$' -bench Scan -benchtime 1x
func BenchmarkScan(b *testing.B) {
	nodes := formCluster(b, 3, Config{BootstrapExpect: 3, GroupsPerNode: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const keys = 1_000_000
	key := func(i int) string { return fmt.Sprintf("key-%012d", i) } // 16 bytes
	val := make([]byte, 100)
	loadStart := time.Now()
	var next atomic.Int64
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < keys; i = int(next.Add(1)) - 1 {
				if err := nodes[w%3].Set(ctx, key(i), val); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("%d keys written in %v", keys, time.Since(loadStart).Round(time.Millisecond))

	scanAll := func() int {
		n, prev := 0, ""
		for e, err := range nodes[0].Scan(ctx, "") {
			if err != nil {
				b.Fatal(err)
			}
			if e.Key <= prev || len(e.Value) != len(val) {
				b.Fatalf("%q after %q, %d bytes", e.Key, prev, len(e.Value))
			}
			n, prev = n+1, e.Key
		}
		if n != keys {
			b.Fatalf("scanned %d keys, want %d", n, keys)
		}
		return n
	}
	var elapsed time.Duration
	var growth uint64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		runtime.GC()
		b.StartTimer()
		before, peak, stop := sampleHeap(2 * time.Millisecond)
		start := time.Now()
		scanAll()
		elapsed += time.Since(start)
		stop()
		growth = max(growth, *peak-before)
	}
	b.StopTimer()
	b.ReportMetric(float64(keys*b.N)/elapsed.Seconds(), "keys/s")
	b.ReportMetric(elapsed.Seconds()/float64(b.N), "scan-s")
	b.ReportMetric(float64(growth)/(1<<20), "heap-growth-MiB")
	runtime.GC()
	runtime.GC()
	before := heapObjects()
	live, n := uint64(0), 0
	for _, err := range nodes[0].Scan(ctx, "") {
		if err != nil {
			b.Fatal(err)
		}
		if n++; n%100_000 == 0 {
			runtime.GC()
			runtime.GC()
			live = max(live, heapObjects())
		}
	}
	b.ReportMetric(float64(live-before)/(1<<20), "live-growth-MiB")
}

// heapObjects is the bytes of the heap's objects, live or not yet swept.
func heapObjects() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// sampleHeap reads heapObjects now and then every interval until stop,
// which returns once the sampler has; *peak is the largest reading.
func sampleHeap(interval time.Duration) (before uint64, peak *uint64, stop func()) {
	before = heapObjects()
	peak = new(uint64)
	*peak = before
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				*peak = max(*peak, heapObjects())
			}
		}
	}()
	return before, peak, func() { close(done); <-finished }
}

// BenchmarkTLSSet and BenchmarkTLSGet: the cost of Config.TLS (mutual TLS
// 1.3, ECDSA P-256 certificates) on a 3-node cluster formed together, 64
// clients spread over the nodes, as BenchmarkThreeNodeSet and the default
// path of BenchmarkThreeNodeGet (lease reads; 2/3 of the Gets and Sets
// are forwarded, so they cross a TLS connection twice). Reports ops/s and
// the cluster's CPU time per op.
func BenchmarkTLSSet(b *testing.B) { benchmarkTLS(b, false) }

func BenchmarkTLSGet(b *testing.B) { benchmarkTLS(b, true) }

func benchmarkTLS(b *testing.B, get bool) {
	ca := testcerts.NewCA(b, "bench CA")
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprint("tls=", map[bool]string{false: "off", true: "on"}[on]), func(b *testing.B) {
			cfg := Config{BootstrapExpect: 3}
			if on {
				cfg.TLS = ca.Config(b, "node")
			}
			dbs := openCluster(b, 3, cfg)
			ctx := context.Background()
			value := make([]byte, 16)
			keys := make([]string, 10000)
			for i := range keys {
				keys[i] = fmt.Sprint("key", i)
				if get {
					if err := dbs[i%3].Set(ctx, keys[i], value); err != nil {
						b.Fatal(err)
					}
				}
			}
			h0, m0 := leaseStats(dbs)
			runClients(b, dbs, func(n, i int) error {
				if get {
					_, err := dbs[n].Get(ctx, keys[i%len(keys)])
					return err
				}
				return dbs[n].Set(ctx, keys[i%len(keys)], value)
			})
			if h1, m1 := leaseStats(dbs); get && h1+m1 > h0+m0 {
				b.ReportMetric(100*float64(h1-h0)/float64(h1-h0+m1-m0), "lease-hit-%")
			}
		})
	}
}

// BenchmarkMetricsObserve: the bookkeeping one operation costs its caller,
// with no node behind it: db.met.start and done around nothing, with
// metrics off (a nil check each) and on (two clock readings, a series
// lookup, a counter and a histogram).
func BenchmarkMetricsObserve(b *testing.B) {
	on, err := newMetrics(&DB{}, Config{NodeID: "bench", Metrics: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range []*nodeMetrics{nil, on} {
		b.Run(fmt.Sprint("metrics=", map[bool]string{true: "on", false: "off"}[m != nil]), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				start := m.start()
				m.done(opGet, pathLease, start, nil)
			}
		})
	}
}
