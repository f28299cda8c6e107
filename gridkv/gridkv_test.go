package gridkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestSingleNodeZeroConfig(t *testing.T) {
	db, err := Open(Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for _, opt := range [][]ReadOption{nil, {ReadIndex()}, {Stale()}, {Quorum(1)}} {
		v, err := db.Get(ctx, "k", opt...)
		if err != nil || string(v) != "v" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	if err := db.Set(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := db.Get(ctx, "empty"); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value: %v %v", v, err)
	}
	if ok, err := db.CompareAndSwap(ctx, "k", []byte("x"), []byte("y")); ok || err != nil {
		t.Fatalf("CAS wrong old: %v %v", ok, err)
	}
	if ok, err := db.CompareAndSwap(ctx, "k", []byte("v"), []byte("w")); !ok || err != nil {
		t.Fatalf("CAS: %v %v", ok, err)
	}
	if ok, err := db.CompareAndSwap(ctx, "new", nil, []byte("1")); !ok || err != nil {
		t.Fatalf("CAS absent: %v %v", ok, err)
	}
	if err := db.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := db.Delete(ctx, "k"); err != nil {
		t.Fatal("delete of absent key:", err)
	}
	if _, err := db.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted: %v", err)
	}
	if err := db.Set(ctx, "ttl", []byte("x"), WithTTL(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := db.Get(ctx, "ttl")
		if errors.Is(err, ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("TTL key never expired")
		}
		<-time.After(10 * time.Millisecond)
	}
	loc, err := db.Locate("k")
	if err != nil || loc.Leader != db.NodeID() || len(loc.Replicas) != 1 {
		t.Fatalf("Locate: %+v %v", loc, err)
	}
	if ms := db.Members(); len(ms) != 1 || ms[0].ID != db.NodeID() || ms[0].Addr != db.Addr() {
		t.Fatalf("Members: %+v", ms)
	}
}

func TestBadInput(t *testing.T) {
	db, err := Open(Config{Logger: quiet, MaxValueBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	cases := map[string]error{
		"empty key":    db.Set(ctx, "", []byte("v")),
		"long key":     db.Set(ctx, strings.Repeat("k", 64<<10+1), nil),
		"big value":    db.Set(ctx, "k", bytes.Repeat([]byte("v"), 11)),
		"negative ttl": db.Set(ctx, "k", nil, WithTTL(-time.Second)),
		"zero ttl":     db.Set(ctx, "k", nil, WithTTL(0)),
	}
	_, cases["quorum 0"] = db.Get(ctx, "k", Quorum(0))
	_, cases["quorum 4"] = db.Get(ctx, "k", Quorum(4))
	_, cases["cas big"] = db.CompareAndSwap(ctx, "k", nil, bytes.Repeat([]byte("v"), 11))
	_, cases["cas zero ttl"] = db.CompareAndSwap(ctx, "k", nil, nil, WithTTL(0))
	_, cases["cas nil option"] = db.CompareAndSwap(ctx, "k", nil, nil, nil)
	for name, err := range cases {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if err := db.Set(ctx, strings.Repeat("k", 64<<10), bytes.Repeat([]byte("v"), 10)); err != nil {
		t.Fatalf("limits are inclusive: %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := db.Set(done, "k", nil); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("ended ctx: %v", err)
	}
	if _, err := db.Get(ctx, "never-written"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := Open(Config{ReplicaCount: -1, GroupsPerNode: 99999, NodeID: "a/b"}); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), "ReplicaCount") || !strings.Contains(err.Error(), "GroupsPerNode") || !strings.Contains(err.Error(), "NodeID") {
		t.Fatalf("bad config: %v", err)
	}
	db.Close()
	if err := db.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := db.Set(ctx, "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// A CompareAndSwap with WithTTL takes a lock that expires by itself: the
// key is gone after the TTL, and can then be taken again; a swap without
// a TTL stores a value that never expires.
func TestCompareAndSwapWithTTL(t *testing.T) {
	db := openCluster(t, 1, Config{Timing: LocalTiming()})[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The TTLs leave the next call time to come first on a loaded machine
	// (the race detector).
	const ttl = 5 * time.Second
	if ok, err := db.CompareAndSwap(ctx, "lock", nil, []byte("a"), WithTTL(ttl)); err != nil || !ok {
		t.Fatalf("take: %v %v", ok, err)
	}
	if ok, err := db.CompareAndSwap(ctx, "lock", nil, []byte("b"), WithTTL(time.Hour)); err != nil || ok {
		t.Fatalf("taken while held: %v %v", ok, err)
	}
	testutil.Eventually(t, 20*time.Second, "the lock expired", func() bool {
		_, err := db.Get(ctx, "lock")
		return errors.Is(err, ErrNotFound)
	})
	if ok, err := db.CompareAndSwap(ctx, "lock", nil, []byte("b"), WithTTL(ttl)); err != nil || !ok {
		t.Fatalf("take after expiry: %v %v", ok, err)
	}
	taken := time.Now() // "b" expires at the latest ttl later
	// Swapped without a TTL: the value stays past the old TTL.
	if ok, err := db.CompareAndSwap(ctx, "lock", []byte("b"), []byte("c")); err != nil || !ok {
		t.Fatalf("swap: %v %v", ok, err)
	}
	deadline := taken.Add(ttl + 500*time.Millisecond) // past the TTL "b" had
	for time.Now().Before(deadline) {
		if v, err := db.Get(ctx, "lock"); err != nil || string(v) != "c" {
			t.Fatalf("after a swap without TTL: %q %v", v, err)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// CompareAndDelete, Incr and Expire, on 3 nodes, each node calling.
func TestCompareAndDeleteIncrExpire(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b, c := nodes[0], nodes[1], nodes[2]

	// An owner-only release.
	if ok, err := a.CompareAndSwap(ctx, "lock", nil, []byte("me"), WithTTL(time.Hour)); err != nil || !ok {
		t.Fatalf("take: %v %v", ok, err)
	}
	if ok, err := b.CompareAndDelete(ctx, "lock", []byte("you")); err != nil || ok {
		t.Fatalf("released by another owner: %v %v", ok, err)
	}
	if ok, err := c.CompareAndDelete(ctx, "lock", []byte("me")); err != nil || !ok {
		t.Fatalf("released by its owner: %v %v", ok, err)
	}
	if _, err := a.Get(ctx, "lock"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after release: %v", err)
	}
	if ok, err := a.CompareAndDelete(ctx, "lock", []byte("me")); err != nil || ok {
		t.Fatalf("released twice: %v %v", ok, err)
	}

	// Counters: absent counts as 0; the sum is stored in decimal.
	sum := int64(0)
	for i, d := range []int64{5, -7, 1 << 40} {
		sum += d
		if got, err := nodes[i%3].Incr(ctx, "n", d); err != nil || got != sum {
			t.Fatalf("Incr(%d) = %d, %v; want %d", d, got, err, sum)
		}
	}
	if v, err := b.Get(ctx, "n"); err != nil || string(v) != fmt.Sprint(sum) {
		t.Fatalf("stored %q, %v", v, err)
	}
	if err := a.Set(ctx, "word", []byte("seven")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Incr(ctx, "word", 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Incr of a word: %v", err)
	}
	if err := a.Set(ctx, "max", []byte(fmt.Sprint(int64(math.MaxInt64)))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Incr(ctx, "max", 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("overflow: %v", err)
	}
	if v, _ := a.Get(ctx, "max"); string(v) != fmt.Sprint(int64(math.MaxInt64)) {
		t.Fatalf("overflow changed the value: %q", v)
	}

	// Expire: absent is false; present gets the TTL, and Incr keeps it.
	if ok, err := a.Expire(ctx, "never", time.Second); err != nil || ok {
		t.Fatalf("Expire of an absent key: %v %v", ok, err)
	}
	if _, err := a.Expire(ctx, "n", 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero TTL: %v", err)
	}
	// A TTL that leaves the Incr time to come first on a loaded machine.
	if ok, err := b.Expire(ctx, "n", 5*time.Second); err != nil || !ok {
		t.Fatalf("Expire: %v %v", ok, err)
	}
	if got, err := c.Incr(ctx, "n", 1); err != nil || got != sum+1 {
		t.Fatalf("Incr after Expire: %d %v", got, err)
	}
	testutil.Eventually(t, 20*time.Second, "the counter expired", func() bool {
		_, err := a.Get(ctx, "n")
		return errors.Is(err, ErrNotFound)
	})
	if got, err := a.Incr(ctx, "n", 2); err != nil || got != 2 {
		t.Fatalf("Incr after expiry: %d %v; want 2", got, err)
	}
}
