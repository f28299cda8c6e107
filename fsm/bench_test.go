package fsm

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm/fsmpb"
	"github.com/gridkv/gridkv/placement"
)

// benchRanges is the number of ranges the benchmarks' groups own: all of a
// cluster's 1024.
const benchRanges = 1024

func allRanges(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// rangeOf is the range a key belongs to, as gridkv places keys.
func rangeOf(key string, ranges int) int { return placement.RangeOf(key, ranges) }

// BenchmarkApply: single-operation Set entries, 64-byte values, 10k keys.
func BenchmarkApply(b *testing.B) {
	f := owning(b, Options{Ranges: benchRanges}, allRanges(benchRanges)...)
	logs := make([]*raft.Log, 1024)
	for i := range logs {
		key := fmt.Sprint("key", i%10000)
		logs[i] = logAt(b, 0, 0, SetOp(rangeOf(key, benchRanges), key, make([]byte, 64), 0))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		l := logs[i%len(logs)]
		l.Index = uint64(i + 2)
		f.Apply(l)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkApplyBatch64: Batch entries of 64 Sets each; ops/s counts
// operations. With the ranges' histories kept (the default) and without.
func BenchmarkApplyBatch64(b *testing.B) {
	b.Run("history", func(b *testing.B) { benchmarkApplyBatch64(b, Options{Ranges: benchRanges}) })
	b.Run("no-history", func(b *testing.B) { benchmarkApplyBatch64(b, Options{Ranges: benchRanges, History: -1}) })
}

func benchmarkApplyBatch64(b *testing.B, opts Options) {
	f := owning(b, opts, allRanges(benchRanges)...)
	logs := make([]*raft.Log, 64)
	for i := range logs {
		ops := make([]*fsmpb.Command, 64)
		for j := range ops {
			key := fmt.Sprint("key", (i*64+j)%10000)
			ops[j] = SetOp(rangeOf(key, benchRanges), key, make([]byte, 64), 0)
		}
		logs[i] = logAt(b, 0, 0, BatchOp(ops...))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		l := logs[i%len(logs)]
		l.Index = uint64(i + 2)
		f.Apply(l)
	}
	b.ReportMetric(float64(b.N)*64/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkGetParallel: concurrent Gets of present keys spread over the
// group's ranges.
func BenchmarkGetParallel(b *testing.B) {
	f := owning(b, Options{Ranges: benchRanges}, allRanges(benchRanges)...)
	const n = 10000
	keys := make([]string, n)
	ranges := make([]int, n)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		ranges[i] = rangeOf(keys[i], benchRanges)
		f.Apply(logAt(b, uint64(i+2), 0, SetOp(ranges[i], keys[i], make([]byte, 64), 0)))
	}
	now := NowNanos()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, _, ok, err := f.Get(ranges[i%n], keys[i%n], now); !ok || err != nil {
				b.Error("missing", err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkMemory1M applies 1M Sets of 12-byte keys and 100-byte values
// (Batch entries of 64, through ApplyBatch) over 1024 owned ranges, and
// reports the heap in use after a GC, less the heap in use before, over
// the payload (keys plus values): the state machine's memory overhead.
func BenchmarkMemory1M(b *testing.B) {
	for n := 0; n < b.N; n++ {
		heap, payload := memoryFor1M(b)
		b.ReportMetric(float64(heap)/float64(payload), "heap/payload")
		b.ReportMetric(float64(heap)/(1<<20), "heapMiB")
	}
}

func memoryFor1M(b *testing.B) (heap uint64, payload int64) {
	const keys, perEntry, perApply = 1 << 20, 64, 16
	value := make([]byte, 100)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	f := owning(b, Options{Ranges: benchRanges}, allRanges(benchRanges)...)
	ops := make([]*fsmpb.Command, perEntry)
	logs := make([]*raft.Log, 0, perApply)
	index := uint64(1)
	for i := 0; i < keys; i += perEntry {
		for j := range ops {
			key := fmt.Sprintf("key-%08d", i+j)
			payload += int64(len(key) + len(value))
			ops[j] = SetOp(rangeOf(key, benchRanges), key, value, 0)
		}
		index++
		logs = append(logs, logAt(b, index, 0, BatchOp(ops...)))
		if len(logs) == perApply || i+perEntry >= keys {
			for _, r := range f.ApplyBatch(logs) {
				for _, res := range r.([]Result) {
					if res.Err != nil {
						b.Fatal(res.Err)
					}
				}
			}
			logs = logs[:0]
		}
	}
	clear(ops)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if f.Len() != keys {
		b.Fatalf("%d entries, want %d", f.Len(), keys)
	}
	runtime.KeepAlive(f)
	return ms.HeapInuse - base, payload
}
