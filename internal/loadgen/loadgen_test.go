package loadgen

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// mapStore is a Store over one map shared by every node. Its first failSets
// Sets fail with errRetry; Gets of keys ending in "7" fail with errRead.
type mapStore struct {
	mu       sync.Mutex
	kv       map[string][]byte
	failSets atomic.Int64
	gets     atomic.Int64
	sets     atomic.Int64
}

var (
	errRetry = errors.New("try again")
	errRead  = errors.New("read failed")
)

func (m *mapStore) stores(n int) []Store {
	s := Store{
		Get: func(ctx context.Context, key string) error {
			m.gets.Add(1)
			if key[len(key)-1] == '7' {
				return errRead
			}
			return nil
		},
		Set: func(ctx context.Context, key string, value []byte) error {
			m.sets.Add(1)
			if m.failSets.Add(-1) >= 0 {
				return errRetry
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			m.kv[key] = append([]byte{}, value...)
			return nil
		},
		Retryable: func(err error) bool { return errors.Is(err, errRetry) },
	}
	stores := make([]Store, n)
	for i := range stores {
		stores[i] = s
	}
	return stores
}

func TestFillWritesEveryKeyRetryingRetryable(t *testing.T) {
	m := &mapStore{kv: map[string][]byte{}}
	m.failSets.Store(3)
	if err := Fill(context.Background(), m.stores(3), 500, 16); err != nil {
		t.Fatal(err)
	}
	if len(m.kv) != 500 || len(m.kv[Key(499)]) != 16 {
		t.Fatalf("filled %d keys, value of the last %d bytes; want 500 and 16", len(m.kv), len(m.kv[Key(499)]))
	}
	if got := m.sets.Load(); got != 503 {
		t.Fatalf("%d Sets, want 500 plus 3 retries", got)
	}
}

func TestFillStopsOnAnotherError(t *testing.T) {
	stores := []Store{{Set: func(context.Context, string, []byte) error { return errRead }}}
	if err := Fill(context.Background(), stores, 10, 1); !errors.Is(err, errRead) {
		t.Fatalf("Fill = %v, want %v", err, errRead)
	}
}

// The run ends after some 2,000 calls (ctx is cancelled), not after a
// time a loaded machine may give the clients little of; Duration only
// bounds it.
func TestDriveMixesAndCountsErrors(t *testing.T) {
	m := &mapStore{kv: map[string][]byte{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stores := m.stores(2)
	for i := range stores {
		get := stores[i].Get
		stores[i].Get = func(ctx context.Context, key string) error {
			if m.gets.Load()+m.sets.Load() >= 2000 {
				cancel()
			}
			return get(ctx, key)
		}
	}
	r := Drive(ctx, stores, Workload{
		Name: "mix", Clients: 4, Keys: 100, ValueBytes: 8, ReadRatio: 0.9, Duration: time.Minute,
	})
	gets, sets := m.gets.Load(), m.sets.Load()
	if gets == 0 || sets == 0 || gets < 3*sets {
		t.Fatalf("%d Gets and %d Sets for a 90/10 mix", gets, sets)
	}
	if r.Errors == 0 || r.Ops+r.Errors != gets+sets {
		t.Fatalf("result %v: %d ops + %d errors, want %d calls with some read errors", r, r.Ops, r.Errors, gets+sets)
	}
	if r.OpsPerSec <= 0 || r.P50 > r.P99 {
		t.Fatalf("result %v", r)
	}
}

// A paced run never sends an operation before it is due: at most
// Rate x elapsed operations in all, plus for each client its first one
// and one it was waiting to send when the run ended.
func TestDrivePaced(t *testing.T) {
	m := &mapStore{kv: map[string][]byte{}}
	w := Workload{Clients: 4, Keys: 10, ValueBytes: 8, ReadRatio: 0.5, Duration: 300 * time.Millisecond, Rate: 200}
	r := Drive(context.Background(), m.stores(2), w)
	sent := m.gets.Load() + m.sets.Load()
	if max := int64(w.Rate*r.Elapsed.Seconds()) + 2*int64(w.Clients); sent > max || sent == 0 {
		t.Fatalf("%d operations sent in %v at %v/s, want 1..%d", sent, r.Elapsed, w.Rate, max)
	}
}
