// Package loadgen drives a key-value workload against GridKV nodes and
// reports throughput and latency percentiles. The example cluster and the
// benchmark programs share it.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// Workload is what the clients do.
type Workload struct {
	Name       string
	Clients    int                 // concurrent clients, spread over the nodes
	Keys       int                 // key space
	ValueBytes int                 // value size
	ReadRatio  float64             // share of operations that are Gets
	ReadOpts   []gridkv.ReadOption // options for the Gets
	Duration   time.Duration
	// Progress, if set, is called about every 500ms with operations so far.
	Progress func(done int64)
}

// Result summarizes a run.
type Result struct {
	Name           string
	Ops, Errors    int64
	OpsPerSec      float64
	P50, P99, P999 time.Duration
	Elapsed        time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("%-10s %10.0f ops/s  p50 %-9v p99 %-9v p999 %-9v (%d ops, %d errors)",
		r.Name, r.OpsPerSec, r.P50, r.P99, r.P999, r.Ops, r.Errors)
}

// Preload writes every key once so reads find them. A Set that fails with
// ErrTimeout (outcome unknown) or ErrUnavailable (not applied) is tried
// again until ctx ends: writing the same value twice does no harm.
func Preload(ctx context.Context, nodes []*gridkv.DB, keys, valueBytes int) error {
	value := make([]byte, valueBytes)
	set := func(db *gridkv.DB, key string) error {
		for {
			err := db.Set(ctx, key, value)
			if err == nil || ctx.Err() != nil ||
				!(errors.Is(err, gridkv.ErrTimeout) || errors.Is(err, gridkv.ErrUnavailable)) {
				return err
			}
			time.Sleep(20 * time.Millisecond) // let an election settle
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for c := 0; c < 64; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := c; k < keys; k += 64 {
				if err := set(nodes[k%len(nodes)], Key(k)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Key is the name of key k.
func Key(k int) string { return fmt.Sprintf("key-%08d", k) }

// Run runs w against nodes; client c talks to nodes[c%len(nodes)].
func Run(ctx context.Context, nodes []*gridkv.DB, w Workload) Result {
	var (
		ops, errs atomic.Int64
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		lats      []time.Duration
	)
	value := make([]byte, w.ValueBytes)
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := nodes[c%len(nodes)]
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			mine := make([]time.Duration, 0, 1<<16)
			for !stop.Load() && ctx.Err() == nil {
				key := Key(rng.IntN(w.Keys))
				start := time.Now()
				var err error
				if rng.Float64() < w.ReadRatio {
					_, err = db.Get(ctx, key, w.ReadOpts...)
					if errors.Is(err, gridkv.ErrNotFound) {
						err = nil
					}
				} else {
					err = db.Set(ctx, key, value)
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(start))
				ops.Add(1)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	start := time.Now()
	tick := time.NewTicker(500 * time.Millisecond)
	deadline := time.NewTimer(w.Duration)
loop:
	for {
		select {
		case <-deadline.C:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if w.Progress != nil {
				w.Progress(ops.Load())
			}
		}
	}
	tick.Stop()
	stop.Store(true)
	elapsed := time.Since(start)
	wg.Wait()
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	pct := func(q float64) time.Duration {
		if len(lats) == 0 {
			return 0
		}
		return lats[int(q*float64(len(lats)-1))].Round(time.Microsecond)
	}
	return Result{Name: w.Name, Ops: ops.Load(), Errors: errs.Load(), Elapsed: elapsed,
		OpsPerSec: float64(ops.Load()) / elapsed.Seconds(), P50: pct(0.5), P99: pct(0.99), P999: pct(0.999)}
}

// Standard is the issue-3 workload set: Set, default Get, Stale Get and a
// 90/10 read/write mix, each with clients spread over the nodes.
func Standard(clients int, d time.Duration) []Workload {
	base := Workload{Clients: clients, Keys: 10000, ValueBytes: 64, Duration: d}
	set, get, stale, mix := base, base, base, base
	set.Name, set.ReadRatio = "set", 0
	get.Name, get.ReadRatio = "get", 1
	stale.Name, stale.ReadRatio, stale.ReadOpts = "stale-get", 1, []gridkv.ReadOption{gridkv.Stale()}
	mix.Name, mix.ReadRatio = "mix-90/10", 0.9
	return []Workload{set, get, stale, mix}
}
