package fsm

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// BenchmarkApply: single-operation Set entries, 64-byte values, 10k keys.
func BenchmarkApply(b *testing.B) {
	f := New(Options{})
	logs := make([]*raft.Log, 1024)
	for i := range logs {
		logs[i] = logAt(b, 0, 0, SetOp(fmt.Sprint("key", i%10000), make([]byte, 64), 0))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		l := logs[i%len(logs)]
		l.Index = uint64(i + 1)
		f.Apply(l)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkApplyBatch64: Batch entries of 64 Sets each; ops/s counts operations.
func BenchmarkApplyBatch64(b *testing.B) {
	f := New(Options{})
	logs := make([]*raft.Log, 64)
	for i := range logs {
		ops := make([]*fsmpb.Command, 64)
		for j := range ops {
			ops[j] = SetOp(fmt.Sprint("key", (i*64+j)%10000), make([]byte, 64), 0)
		}
		logs[i] = logAt(b, 0, 0, BatchOp(ops...))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		l := logs[i%len(logs)]
		l.Index = uint64(i + 1)
		f.Apply(l)
	}
	b.ReportMetric(float64(b.N)*64/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkGetParallel: concurrent Gets of present keys.
func BenchmarkGetParallel(b *testing.B) {
	f := New(Options{})
	const n = 10000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
		f.Apply(logAt(b, uint64(i+1), 0, SetOp(keys[i], make([]byte, 64), 0)))
	}
	now := NowNanos()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, _, ok := f.Get(keys[i%n], now); !ok {
				b.Error("missing")
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}
