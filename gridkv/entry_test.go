package gridkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/testutil"
)

// A read answer carries the version and the expiry before the value, in
// one allocation; a cut one is refused.
func TestEntryAnswerWire(t *testing.T) {
	now := time.Now().UnixNano()
	for _, e := range []fsm.Entry{
		{Value: []byte("v"), Version: 1<<50 | 7, ExpireAt: now + int64(time.Hour)},
		{Value: []byte{}, Version: 1},
		{Value: bytes.Repeat([]byte("x"), 300), Version: 1<<64 - 1, ExpireAt: 1<<63 - 1},
	} {
		ans := entryAnswer(e, true, now)
		if cap(ans) != len(ans) {
			t.Errorf("%+v: answer of %d bytes in %d", e, len(ans), cap(ans))
		}
		v, version, expireAt, err := answerEntry(ans)
		if err != nil || !bytes.Equal(v, e.Value) || v == nil || version != e.Version || expireAt != e.ExpireAt {
			t.Fatalf("answerEntry(entryAnswer(%+v)) = %q %d %d %v", e, v, version, expireAt, err)
		}
		if _, _, _, err := answerEntry(ans[:len(ans)-len(e.Value)-1]); len(e.Value) == 0 && err == nil {
			t.Fatalf("%+v: an answer cut in its expiry decoded", e)
		}
		if n := testing.AllocsPerRun(100, func() { entryAnswer(e, true, now) }); n != 1 {
			t.Fatalf("entryAnswer: %v allocations, want 1", n)
		}
	}
	if ans := entryAnswer(fsm.Entry{Value: []byte("v"), Version: 1, ExpireAt: now}, true, now); !bytes.Equal(ans, []byte{stNotFound}) {
		t.Fatalf("expired: %q", ans)
	}
	if ans := entryAnswer(fsm.Entry{}, false, now); !bytes.Equal(ans, []byte{stNotFound}) {
		t.Fatalf("absent: %q", ans)
	}
	if _, _, _, err := answerEntry([]byte{stNotFound}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stNotFound: %v", err)
	}
}

// readModes are the read options, named; the linearizable ones see a write
// that returned at once.
var readModes = []struct {
	name   string
	opts   []ReadOption
	linear bool
}{
	{"default", nil, true},
	{"ReadIndex", []ReadOption{ReadIndex()}, true},
	{"Quorum(2)", []ReadOption{Quorum(2)}, true},
	{"Quorum(1)", []ReadOption{Quorum(1)}, false},
	{"Stale", []ReadOption{Stale()}, false},
}

// entryEverywhere checks that every node, in every read mode, reads key
// as check wants (the modes that may lag: once they caught up).
func entryEverywhere(ctx context.Context, t *testing.T, nodes []*DB, key string, check func(e Entry, err error) error) {
	t.Helper()
	for _, db := range nodes {
		for _, m := range readModes {
			var last error
			ok := func() bool {
				last = check(db.GetEntry(ctx, key, m.opts...))
				return last == nil
			}
			if m.linear {
				ok()
			} else {
				testutil.Eventually(t, 10*time.Second, fmt.Sprintf("%s: %s GetEntry(%q)", db.NodeID(), m.name, key), ok)
			}
			if last != nil {
				t.Fatalf("%s: %s GetEntry(%q): %v", db.NodeID(), m.name, key, last)
			}
		}
	}
}

// GetEntry on 3 nodes with 2 replicas a group (each node forwards the
// reads of one group: batched reads, and Quorum and Stale reads from a
// node without a replica), in every read mode: the value, a version that
// the next write increases, the expiry of a WithTTL key, ErrNotFound for
// an absent or expired key.
func TestGetEntry(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, ReplicaCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := nodes[0], nodes[1]

	want := func(value string, version uint64, expireAt time.Time) func(Entry, error) error {
		return func(e Entry, err error) error {
			if err != nil || e.Key != "k" || string(e.Value) != value || e.Version != version || !e.ExpireAt.Equal(expireAt) {
				return fmt.Errorf("%+v, %v; want %q@%d expiring %v", e, err, value, version, expireAt)
			}
			return nil
		}
	}
	if err := a.Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	e1, err := b.GetEntry(ctx, "k")
	if err != nil || string(e1.Value) != "v1" || e1.Version == 0 || !e1.ExpireAt.IsZero() {
		t.Fatalf("GetEntry = %+v, %v", e1, err)
	}
	entryEverywhere(ctx, t, nodes, "k", want("v1", e1.Version, time.Time{}))
	if err := b.Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	e2, err := a.GetEntry(ctx, "k")
	if err != nil || e2.Version <= e1.Version {
		t.Fatalf("after a second write: %+v, %v; want a version above %d", e2, err, e1.Version)
	}
	entryEverywhere(ctx, t, nodes, "k", want("v2", e2.Version, time.Time{}))

	// A TTL: the entry's expiry is the commit time plus the TTL.
	before := time.Now()
	if err := a.Set(ctx, "k", []byte("v3"), WithTTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	e3, err := nodes[2].GetEntry(ctx, "k")
	const slack = time.Second // AppendedAt is the leader's wall clock: allow for a step
	if err != nil || e3.Version <= e2.Version || e3.ExpireAt.Before(before.Add(time.Hour-slack)) || e3.ExpireAt.After(after.Add(time.Hour+slack)) {
		t.Fatalf("with a TTL: %+v, %v; want an expiry in [%v, %v]", e3, err, before.Add(time.Hour), after.Add(time.Hour))
	}
	entryEverywhere(ctx, t, nodes, "k", want("v3", e3.Version, e3.ExpireAt))

	// The value is the caller's, and an empty one is not nil.
	e3.Value[0] = 'X'
	if e, err := a.GetEntry(ctx, "k"); err != nil || string(e.Value) != "v3" {
		t.Fatalf("after changing a returned value: %+v, %v", e, err)
	}
	if err := b.Set(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if e, err := a.GetEntry(ctx, "empty"); err != nil || e.Value == nil || len(e.Value) != 0 {
		t.Fatalf("empty value: %+v, %v", e, err)
	}

	// Absent, and expired.
	notFound := func(e Entry, err error) error {
		if !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%+v, %v; want ErrNotFound", e, err)
		}
		return nil
	}
	entryEverywhere(ctx, t, nodes, "never-written", notFound)
	if err := a.Set(ctx, "short", []byte("x"), WithTTL(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if e, err := b.GetEntry(ctx, "short"); err != nil && !errors.Is(err, ErrNotFound) || err == nil && e.ExpireAt.IsZero() {
		t.Fatalf("short TTL: %+v, %v", e, err)
	}
	testutil.Eventually(t, 10*time.Second, "the short TTL to pass", func() bool {
		_, err := a.GetEntry(ctx, "short")
		return errors.Is(err, ErrNotFound)
	})
	entryEverywhere(ctx, t, nodes, "short", notFound)

	if _, err := a.GetEntry(ctx, "", Stale()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty key: %v", err)
	}
	if _, err := a.GetEntry(ctx, "k", Quorum(3)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Quorum above ReplicaCount: %v", err)
	}
}

// CompareVersionAndSwap on 3 nodes, each calling: it swaps only over the
// exact version, 0 means absent (or expired), WithTTL applies, a stale
// version loses, and of concurrent swaps over one version exactly one wins.
func TestCompareVersionAndSwap(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b, c := nodes[0], nodes[1], nodes[2]
	cvs := func(db *DB, version uint64, value string, want bool, opts ...WriteOption) {
		t.Helper()
		if ok, err := db.CompareVersionAndSwap(ctx, "k", version, []byte(value), opts...); err != nil || ok != want {
			t.Fatalf("%s: CompareVersionAndSwap(%d, %q) = %v, %v; want %v", db.NodeID(), version, value, ok, err, want)
		}
	}
	entry := func(db *DB, value string) Entry {
		t.Helper()
		e, err := db.GetEntry(ctx, "k")
		if err != nil || string(e.Value) != value {
			t.Fatalf("%s: GetEntry = %+v, %v; want %q", db.NodeID(), e, err, value)
		}
		return e
	}

	cvs(a, 0, "a", true)
	cvs(b, 0, "b", false) // present
	e1 := entry(c, "a")
	if !e1.ExpireAt.IsZero() {
		t.Fatalf("swapped without a TTL: %+v", e1)
	}
	cvs(b, e1.Version+1, "b", false)
	cvs(b, e1.Version-1, "b", false)
	cvs(c, e1.Version, "b", true)
	e2 := entry(a, "b")
	if e2.Version <= e1.Version {
		t.Fatalf("version %d after %d", e2.Version, e1.Version)
	}
	cvs(a, e1.Version, "late", false) // a stale version loses
	entry(b, "b")

	// WithTTL: the new value expires; once it has, its version no longer
	// matches and 0 does.
	cvs(b, e2.Version, "c", true, WithTTL(time.Second))
	e3 := entry(c, "c")
	if e3.ExpireAt.IsZero() || time.Until(e3.ExpireAt) > time.Second {
		t.Fatalf("with a TTL of 1s: %+v", e3)
	}
	testutil.Eventually(t, 10*time.Second, "the value to expire", func() bool {
		_, err := a.GetEntry(ctx, "k")
		return errors.Is(err, ErrNotFound)
	})
	cvs(a, e3.Version, "d", false)
	cvs(c, 0, "d", true)
	e4 := entry(b, "d")
	if e4.Version <= e3.Version || !e4.ExpireAt.IsZero() {
		t.Fatalf("after the expiry: %+v, want a version above %d and no expiry", e4, e3.Version)
	}

	// Concurrent swaps over one version, from every node: one wins.
	var wg sync.WaitGroup
	wins := make(chan string, 9)
	errs := make(chan error, 9)
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := fmt.Sprint("w", i)
			ok, err := nodes[i%3].CompareVersionAndSwap(ctx, "k", e4.Version, []byte(v))
			if err != nil {
				errs <- err
			}
			if ok {
				wins <- v
			}
		}()
	}
	wg.Wait()
	close(wins)
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if len(wins) != 1 {
		t.Fatalf("%d concurrent swaps over one version won", len(wins))
	}
	entry(a, <-wins)

	for name, err := range map[string]error{
		"zero TTL":   func() error { _, err := a.CompareVersionAndSwap(ctx, "k", 0, nil, WithTTL(0)); return err }(),
		"nil option": func() error { _, err := a.CompareVersionAndSwap(ctx, "k", 0, nil, nil); return err }(),
		"empty key":  func() error { _, err := a.CompareVersionAndSwap(ctx, "", 0, nil); return err }(),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// A key's versions keep growing when its range moves to another replica
// group and back, though each group numbers its log on its own: a moved
// entry keeps its version, the next write's is greater, and only the
// newest version swaps.
func TestVersionsGrowAcrossRangeMove(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ranges := nodes[0].cfg.Ranges
	const r = 5
	from, _ := nodes[0].lay.Load().routes.lookup(r)
	to := (from + 1) % nodes[0].lay.Load().groups
	keys := keysIn("fence", r, ranges, 100)
	k := keys[len(keys)-1]
	// Writes to the range, k's last: its sequence runs ahead of what the
	// target's will be after the move.
	for i, key := range keys {
		if err := nodes[i%3].Set(ctx, key, []byte("a")); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(db *DB, value string) Entry {
		t.Helper()
		e, err := db.GetEntry(ctx, k)
		if err != nil || string(e.Value) != value {
			t.Fatalf("%s: GetEntry(%q) = %+v, %v; want %q", db.NodeID(), k, e, err, value)
		}
		return e
	}
	cvs := func(db *DB, version uint64, value string, want bool) {
		t.Helper()
		if ok, err := db.CompareVersionAndSwap(ctx, k, version, []byte(value)); err != nil || ok != want {
			t.Fatalf("%s: CompareVersionAndSwap(%d, %q) = %v, %v; want %v", db.NodeID(), version, value, ok, err, want)
		}
	}
	e1 := entry(nodes[0], "a")

	move := func(to int) {
		t.Helper()
		if err := nodes[1].moveRange(ctx, r, to); err != nil {
			t.Fatal(err)
		}
		if owner := waitSettled(t, nodes, r, 10*time.Second); owner != to {
			t.Fatalf("range %d at group %d after the move to %d", r, owner, to)
		}
	}
	move(to)
	for _, db := range nodes {
		if e := entry(db, "a"); e.Version != e1.Version {
			t.Fatalf("%s: the moved entry has version %d, was %d", db.NodeID(), e.Version, e1.Version)
		}
	}
	if err := nodes[2].Set(ctx, k, []byte("b")); err != nil {
		t.Fatal(err)
	}
	e2 := entry(nodes[0], "b")
	t.Logf("version before the move: epoch %d, sequence %d; after: epoch %d, sequence %d",
		fsm.VersionEpoch(e1.Version), fsm.VersionSeq(e1.Version), fsm.VersionEpoch(e2.Version), fsm.VersionSeq(e2.Version))
	if e2.Version <= e1.Version {
		t.Fatalf("version %d after the move, %d before", e2.Version, e1.Version)
	}
	if fsm.VersionSeq(e2.Version) > fsm.VersionSeq(e1.Version) {
		t.Fatalf("the target's sequence %d is above the source's %d: the test shows nothing", fsm.VersionSeq(e2.Version), fsm.VersionSeq(e1.Version))
	}
	cvs(nodes[0], e1.Version, "stale", false)
	cvs(nodes[1], e2.Version, "c", true)
	e3 := entry(nodes[2], "c")
	if e3.Version <= e2.Version {
		t.Fatalf("version %d after %d", e3.Version, e2.Version)
	}

	move(from) // and back
	cvs(nodes[2], e2.Version, "stale", false)
	cvs(nodes[0], e3.Version, "d", true)
	if e4 := entry(nodes[1], "d"); e4.Version <= e3.Version {
		t.Fatalf("version %d after the move back, %d before", e4.Version, e3.Version)
	}
}
