// Package loadgen drives a key-value workload against the nodes of a store
// and reports throughput and latency percentiles. The example cluster and
// the benchmark programs share it. The driver sees a store only through
// Store, so GridKV and a peer system (peerbench's etcd) are driven by the
// same code; Run and Preload are the GridKV shorthands.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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
	ReadOpts   []gridkv.ReadOption // options for the Gets through Run; Drive's stores choose their own
	Duration   time.Duration
	// Rate, if > 0, paces the clients to this many operations per second
	// in all, each client at Rate/Clients, evenly spaced. A latency is
	// then timed from when the operation was due, not from when it was
	// sent, so a store that falls behind the rate shows its queueing in
	// the percentiles (no coordinated omission). 0: every client sends its
	// next operation as soon as the last one returns.
	Rate float64
	// Progress, if set, is called about every 500ms with operations so far.
	Progress func(done int64)
}

// Result summarizes a run.
type Result struct {
	Name           string
	Ops, Errors    int64
	OpsPerSec      float64
	P50, P99, P999 time.Duration
	// LateP99, in a paced run (Workload.Rate), is the 99th percentile of
	// how late the clients sent an operation after it was due: the load
	// generator's own lag, which the latencies include.
	LateP99 time.Duration
	Elapsed time.Duration
}

func (r Result) String() string {
	s := fmt.Sprintf("%-10s %10.0f ops/s  p50 %-9v p99 %-9v p999 %-9v (%d ops, %d errors)",
		r.Name, r.OpsPerSec, r.P50, r.P99, r.P999, r.Ops, r.Errors)
	if r.LateP99 > 0 {
		s += fmt.Sprintf(" sent late p99 %v", r.LateP99)
	}
	return s
}

// Store is one node of a key-value store as a client sees it. Get and Set
// are called from many goroutines at once. Get reports an absent key as
// success: the driver counts only failures.
type Store struct {
	Get func(ctx context.Context, key string) error
	Set func(ctx context.Context, key string, value []byte) error
	// Retryable reports whether a Set that failed with err may be tried
	// again while preloading (an election, say). Nil: no error is.
	Retryable func(err error) bool
}

// Stores returns a Store for each GridKV node, whose Gets use opts.
func Stores(nodes []*gridkv.DB, opts ...gridkv.ReadOption) []Store {
	stores := make([]Store, len(nodes))
	for i, db := range nodes {
		stores[i] = Store{
			Get: func(ctx context.Context, key string) error {
				_, err := db.Get(ctx, key, opts...)
				if errors.Is(err, gridkv.ErrNotFound) {
					return nil
				}
				return err
			},
			Set: func(ctx context.Context, key string, value []byte) error {
				return db.Set(ctx, key, value)
			},
			// ErrTimeout leaves the outcome unknown and ErrUnavailable
			// applied nothing: writing the same value twice does no harm.
			Retryable: func(err error) bool {
				return errors.Is(err, gridkv.ErrTimeout) || errors.Is(err, gridkv.ErrUnavailable)
			},
		}
	}
	return stores
}

// Preload writes every key once through the GridKV nodes so reads find
// them (see Fill).
func Preload(ctx context.Context, nodes []*gridkv.DB, keys, valueBytes int) error {
	return Fill(ctx, Stores(nodes), keys, valueBytes)
}

// Fill writes every key once, from 64 clients spread over the stores. A
// Set that fails with a Retryable error is tried again until ctx ends.
func Fill(ctx context.Context, stores []Store, keys, valueBytes int) error {
	value := make([]byte, valueBytes)
	set := func(s Store, key string) error {
		for {
			err := s.Set(ctx, key, value)
			if err == nil || ctx.Err() != nil || s.Retryable == nil || !s.Retryable(err) {
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
				if err := set(stores[k%len(stores)], Key(k)); err != nil {
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

// Run runs w against the GridKV nodes, its Gets with w.ReadOpts (see
// Drive).
func Run(ctx context.Context, nodes []*gridkv.DB, w Workload) Result {
	return Drive(ctx, Stores(nodes, w.ReadOpts...), w)
}

// Drive runs w against stores; client c talks to stores[c%len(stores)].
// w.ReadOpts is not used: each store's Get reads the way it was made to.
func Drive(ctx context.Context, stores []Store, w Workload) Result {
	var (
		ops, errs atomic.Int64
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		lats      []time.Duration
		lates     []time.Duration // paced: how late each operation was sent
	)
	value := make([]byte, w.ValueBytes)
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			store := stores[c%len(stores)]
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			mine := make([]time.Duration, 0, 1<<16)
			var late []time.Duration
			var pace *pacer
			if w.Rate > 0 {
				pace = newPacer(w.Rate/float64(w.Clients), c, w.Clients)
				defer pace.stop()
			}
			for !stop.Load() && ctx.Err() == nil {
				key := Key(rng.IntN(w.Keys))
				start := time.Now()
				if pace != nil {
					if start = pace.wait(ctx); ctx.Err() != nil || stop.Load() {
						break // the run ended while this client waited
					}
					late = append(late, time.Since(start))
				}
				var err error
				if rng.Float64() < w.ReadRatio {
					err = store.Get(ctx, key)
				} else {
					err = store.Set(ctx, key, value)
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
			lates = append(lates, late...)
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
	pct := func(lats []time.Duration, q float64) time.Duration {
		if len(lats) == 0 {
			return 0
		}
		return lats[int(q*float64(len(lats)-1))].Round(time.Microsecond)
	}
	slices.Sort(lats)
	slices.Sort(lates)
	return Result{Name: w.Name, Ops: ops.Load(), Errors: errs.Load(), Elapsed: elapsed,
		OpsPerSec: float64(ops.Load()) / elapsed.Seconds(),
		P50:       pct(lats, 0.5), P99: pct(lats, 0.99), P999: pct(lats, 0.999), LateP99: pct(lates, 0.99)}
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

// pacer spaces one client's operations evenly at its share of a rate.
type pacer struct {
	every time.Duration
	next  time.Time
	timer *time.Timer
}

// newPacer paces client c of clients at perClient operations per second,
// its schedule offset by c/clients of an interval so the clients do not
// send in bursts.
func newPacer(perClient float64, c, clients int) *pacer {
	every := time.Duration(float64(time.Second) / perClient)
	return &pacer{
		every: every,
		next:  time.Now().Add(every * time.Duration(c) / time.Duration(clients)),
		timer: time.NewTimer(time.Hour),
	}
}

// wait returns when the next operation is due (at once if it is late),
// with the time it was due.
func (p *pacer) wait(ctx context.Context) time.Time {
	due := p.next
	p.next = p.next.Add(p.every)
	if d := time.Until(due); d > 0 {
		p.timer.Reset(d)
		select {
		case <-p.timer.C:
		case <-ctx.Done():
		}
	}
	return due
}

func (p *pacer) stop() { p.timer.Stop() }
