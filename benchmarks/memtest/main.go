// Command memtest measures how much heap GridKV holds per byte of data:
// it opens -nodes nodes in this process (zero Config apart from what forms
// them into one cluster together), writes -keys keys of 12 bytes with
// -value byte values from 256 goroutines through DB.Set, waits until every
// replica has applied them, collects garbage and prints the payload (keys
// plus values), HeapInuse and their ratio.
//
//	go run ./memtest                  # one node, 1M keys
//	go run ./memtest -nodes 3         # three nodes: heap per replica = total/3
//	go run ./memtest -memprofile mem.out && go tool pprof -sample_index=inuse_space -top mem.out
//
// With -nodes 3 every range has three replicas, all in this one process, so
// the figure reported per replica is the process's HeapInuse divided by 3
// (each replica holds the whole payload).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/benchmarks/internal/cluster"
	"github.com/gridkv/gridkv/gridkv"
)

func main() {
	nodes := flag.Int("nodes", 1, "nodes in this process (1 or 3)")
	keys := flag.Int("keys", 1_000_000, "keys to write")
	valueBytes := flag.Int("value", 100, "bytes per value")
	writers := flag.Int("writers", 256, "concurrent writers")
	settle := flag.Duration("settle", 0, "wait this long after the writes are applied, before collecting garbage")
	memprofile := flag.String("memprofile", "", "write a heap profile of the final state here")
	flag.Parse()
	if err := run(*nodes, *keys, *valueBytes, *writers, *settle, *memprofile); err != nil {
		fmt.Fprintln(os.Stderr, "memtest:", err)
		os.Exit(1)
	}
}

// keyOf is key i: 12 bytes for i below 10^8.
func keyOf(i int) string { return fmt.Sprintf("key:%08d", i) }

func run(nodes, keys, valueBytes, writers int, settle time.Duration, memprofile string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dbs, err := cluster.Form(ctx, nodes, gridkv.Config{})
	defer func() {
		for _, db := range dbs {
			_ = db.Close()
		}
	}()
	if err != nil {
		return err
	}

	start := time.Now()
	stopPeak, peak := samplePeak(250 * time.Millisecond)
	payload, err := write(ctx, dbs, keys, valueBytes, writers)
	if err != nil {
		stopPeak()
		return err
	}
	wrote := time.Since(start)
	err = waitApplied(ctx, dbs, keys)
	stopPeak()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %d keys in %v (%.0f sets/s), applied on every replica after %v\n",
		keys, wrote.Round(time.Millisecond), float64(keys)/wrote.Seconds(), time.Since(start).Round(time.Millisecond))
	if settle > 0 {
		time.Sleep(settle) // a measurement knob: what the heap holds once background work ran
	}

	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	perReplica := ms.HeapInuse / uint64(nodes)
	fmt.Printf("nodes=%d keys=%d value=%dB GOGC=%s\n", nodes, keys, valueBytes, gogc())
	fmt.Printf("payload     %8.1f MiB (keys + values, one replica)\n", mib(payload))
	fmt.Printf("HeapInuse   %8.1f MiB (process)\n", mib(ms.HeapInuse))
	if nodes > 1 {
		fmt.Printf("per replica %8.1f MiB (HeapInuse / %d)\n", mib(perReplica), nodes)
	}
	fmt.Printf("ratio       %8.2f (per-replica heap / payload)\n", float64(perReplica)/float64(payload))
	fmt.Printf("peak        %8.1f MiB (HeapInuse sampled every 250ms while writing, process)\n", mib(*peak))
	fmt.Printf("HeapSys     %8.1f MiB, Sys %.1f MiB, goroutines %d\n", mib(ms.HeapSys), mib(ms.Sys), runtime.NumGoroutine())

	if memprofile != "" {
		f, err := os.Create(memprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			return err
		}
	}
	// Keep the nodes reachable until here: the heap measured is theirs.
	runtime.KeepAlive(dbs)
	return nil
}

// samplePeak samples HeapInuse every interval until stop is called (stop
// waits for the sampler), keeping the highest value in *peak.
func samplePeak(interval time.Duration) (stop func(), peak *uint64) {
	peak = new(uint64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-t.C:
				runtime.ReadMemStats(&ms)
				*peak = max(*peak, ms.HeapInuse)
			case <-done:
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }, peak
}

// write sets keys 0..keys-1 from writers goroutines, writer w through node
// w mod len(dbs), and returns the payload: bytes of keys plus values.
func write(ctx context.Context, dbs []*gridkv.DB, keys, valueBytes, writers int) (uint64, error) {
	var (
		next    atomic.Int64
		payload atomic.Uint64
		wg      sync.WaitGroup
		errMu   sync.Mutex
		first   error
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := dbs[w%len(dbs)]
			value := make([]byte, valueBytes)
			for {
				i := int(next.Add(1) - 1)
				if i >= keys {
					return
				}
				key := keyOf(i)
				for j := range value {
					value[j] = byte(i + j)
				}
				if err := setRetrying(ctx, db, key, value); err != nil {
					errMu.Lock()
					first = errors.Join(first, fmt.Errorf("set %s: %w", key, err))
					errMu.Unlock()
					return
				}
				payload.Add(uint64(len(key) + len(value)))
			}
		}()
	}
	wg.Wait()
	return payload.Load(), first
}

// setRetrying retries a Set that failed for want of a leader (an election
// while the cluster settles); the Set is idempotent.
func setRetrying(ctx context.Context, db *gridkv.DB, key string, value []byte) error {
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = db.Set(ctx, key, value); err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// waitApplied polls, on every node, a stale read of every key until it
// finds it: then every replica has applied every write.
func waitApplied(ctx context.Context, dbs []*gridkv.DB, keys int) error {
	for _, db := range dbs {
		for i := 0; i < keys; i++ {
			key := keyOf(i)
			deadline := time.Now().Add(time.Minute)
			for {
				_, err := db.Get(ctx, key, gridkv.Stale())
				if err == nil {
					break
				}
				if !errors.Is(err, gridkv.ErrNotFound) || time.Now().After(deadline) {
					return fmt.Errorf("node %s: key %s not applied: %w", db.NodeID(), key, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return nil
}

func gogc() string {
	if v := os.Getenv("GOGC"); v != "" {
		return v
	}
	return "100 (default)"
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
