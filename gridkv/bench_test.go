package gridkv

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
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
