package fsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var epoch = time.Unix(1_700_000_000, 0)

// logAt builds the log entry a leader would append at index, at epoch+offset.
func logAt(t testing.TB, index uint64, offset time.Duration, cmd *fsmpb.Command) *raft.Log {
	t.Helper()
	data, err := Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data, AppendedAt: epoch.Add(offset)}
}

func single(t *testing.T, v interface{}) Result {
	t.Helper()
	r, ok := v.(*Result)
	if !ok {
		t.Fatalf("response %T, want *Result", v)
	}
	return *r
}

func now(offset time.Duration) int64 { return epoch.Add(offset).UnixNano() }

// r0 is the range the single-range tests use.
const r0 = 0

// owning returns a state machine that owns ranges (by a Genesis entry at
// index 1).
func owning(t testing.TB, opts Options, ranges ...int) *FSM {
	t.Helper()
	f := New(opts)
	if r := f.Apply(logAt(t, 1, 0, GenesisOp(ranges))).(*Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	return f
}

// get reads key from range r, failing the test on an error.
func get(t testing.TB, f *FSM, r int, key string, at int64) ([]byte, uint64, bool) {
	t.Helper()
	v, version, ok, err := f.Get(r, key, at)
	if err != nil {
		t.Fatalf("Get(%d, %q): %v", r, key, err)
	}
	return v, version, ok
}

func TestCommands(t *testing.T) {
	f := owning(t, Options{}, r0)
	empty := []byte{}
	steps := []struct {
		name    string
		cmd     *fsmpb.Command
		swapped bool
		want    []byte // value of "k" after the step; nil = absent
	}{
		{"set", SetOp(r0, "k", []byte("v1"), 0), false, []byte("v1")},
		{"overwrite", SetOp(r0, "k", []byte("v2"), 0), false, []byte("v2")},
		{"cas wrong old", CASOp(r0, "k", []byte("v1"), []byte("x"), 0), false, []byte("v2")},
		{"cas absent on present", CASOp(r0, "k", nil, []byte("x"), 0), false, []byte("v2")},
		{"cas right old", CASOp(r0, "k", []byte("v2"), []byte("v3"), 0), true, []byte("v3")},
		{"delete", DeleteOp(r0, "k"), false, nil},
		{"delete absent", DeleteOp(r0, "k"), false, nil},
		{"cas empty old on absent", CASOp(r0, "k", empty, []byte("x"), 0), false, nil},
		{"cas absent", CASOp(r0, "k", nil, empty, 0), true, empty},
		{"cas empty old on empty", CASOp(r0, "k", empty, []byte("v4"), 0), true, []byte("v4")},
		// Six writes so far: "k" has version v1(6) here.
		{"cvs older version", CVSOp(r0, "k", v1(5), []byte("x"), 0), false, []byte("v4")},
		{"cvs 0 on present", CVSOp(r0, "k", 0, []byte("x"), 0), false, []byte("v4")},
		{"cvs current version", CVSOp(r0, "k", v1(6), []byte("v5"), 0), true, []byte("v5")},
		{"cvs the version it replaced", CVSOp(r0, "k", v1(6), []byte("x"), 0), false, []byte("v5")},
		{"delete again", DeleteOp(r0, "k"), false, nil},
		{"cvs a deleted version", CVSOp(r0, "k", v1(8), []byte("x"), 0), false, nil},
		{"cvs 0 on absent", CVSOp(r0, "k", 0, empty, 0), true, empty},
	}
	var last uint64 // the version of the last write
	for i, st := range steps {
		idx := uint64(i + 1)
		r := single(t, f.Apply(logAt(t, idx, 0, st.cmd)))
		if r.Err != nil || r.Swapped != st.swapped {
			t.Fatalf("%s: result %+v, want swapped=%v", st.name, r, st.swapped)
		}
		v, ver, ok := get(t, f, r0, "k", now(0))
		if ok != (st.want != nil) || !bytes.Equal(v, st.want) {
			t.Fatalf("%s: Get = %q,%v want %q", st.name, v, ok, st.want)
		}
		if ok && st.want != nil && len(st.want) == 0 && v == nil {
			t.Fatalf("%s: empty value returned as nil", st.name)
		}
		if wrote := r.Swapped || st.cmd.GetSet() != nil || st.name == "delete"; wrote {
			if r.Version <= last || VersionEpoch(r.Version) != 1 {
				t.Fatalf("%s: version %d after %d", st.name, r.Version, last)
			}
			last = r.Version
		}
		if ok && ver != last {
			t.Fatalf("%s: stored version %d, want the last write's %d", st.name, ver, last)
		}
		if f.Applied() != idx {
			t.Fatalf("applied %d, want %d", f.Applied(), idx)
		}
	}
}

// CompareVersionAndSwap: a miss reports the key's current version (0:
// absent or expired); the new value's TTL counts from the entry's
// AppendedAt, and without one it never expires; an expired key matches
// only version 0; a range not owned here is refused; in a batch each
// operation sees the ones before it.
func TestCompareVersionAndSwap(t *testing.T) {
	f := owning(t, Options{Ranges: 2}, r0)
	step := func(idx uint64, at time.Duration, cmd *fsmpb.Command) Result {
		t.Helper()
		return single(t, f.Apply(logAt(t, idx, at, cmd)))
	}
	lookup := func() Entry {
		t.Helper()
		e, found, err := f.Lookup(r0, "k")
		if err != nil || !found {
			t.Fatalf("Lookup: %+v %v %v", e, found, err)
		}
		return e
	}
	if r := step(2, 0, CVSOp(r0, "k", 0, []byte("a"), time.Second)); r.Err != nil || !r.Swapped || r.Version != v1(1) {
		t.Fatalf("cvs 0 on absent: %+v", r)
	}
	if e := lookup(); string(e.Value) != "a" || e.Version != v1(1) || e.ExpireAt != now(time.Second) {
		t.Fatalf("after the swap: %+v", e)
	}
	if r := step(3, 0, CVSOp(r0, "k", v1(1)+1, []byte("b"), 0)); r.Err != nil || r.Swapped || r.Version != v1(1) {
		t.Fatalf("cvs wrong version: %+v, want the current version %d", r, v1(1))
	}
	// At its deadline the key is gone: its version matches no more, 0 does.
	if r := step(4, time.Second, CVSOp(r0, "k", v1(1), []byte("b"), 0)); r.Err != nil || r.Swapped || r.Version != 0 {
		t.Fatalf("cvs the version of an expired key: %+v", r)
	}
	if r := step(5, time.Second, CVSOp(r0, "k", 0, []byte("b"), 0)); r.Err != nil || !r.Swapped || r.Version != v1(3) {
		t.Fatalf("cvs 0 on expired: %+v", r)
	}
	if e := lookup(); string(e.Value) != "b" || e.Version != v1(3) || e.ExpireAt != 0 {
		t.Fatalf("swapped without a TTL: %+v", e)
	}
	if r := step(6, time.Second, CVSOp(1, "k", 0, []byte("x"), 0)); !errors.Is(r.Err, ErrNotOwned) {
		t.Fatalf("cvs on a range not owned: %+v", r)
	}
	if r := step(7, time.Second, CVSOp(r0, "", 0, []byte("x"), 0)); !errors.Is(r.Err, ErrBadCommand) {
		t.Fatalf("cvs of an empty key: %+v", r)
	}
	rs, ok := f.Apply(logAt(t, 8, time.Second, BatchOp(
		CVSOp(r0, "k", v1(3), []byte("c"), 0),
		CVSOp(r0, "k", v1(3), []byte("d"), 0)))).([]Result)
	if !ok || len(rs) != 2 || !rs[0].Swapped || rs[0].Version != v1(4) || rs[1].Swapped || rs[1].Version != v1(4) {
		t.Fatalf("batch: %+v", rs)
	}
	if e := lookup(); string(e.Value) != "c" {
		t.Fatalf("after the batch: %+v", e)
	}
}

func TestBatchResultsPerOperation(t *testing.T) {
	f := owning(t, Options{}, r0)
	batch := BatchOp(
		SetOp(r0, "a", []byte("1"), 0),
		CASOp(r0, "a", []byte("1"), []byte("2"), 0),
		CASOp(r0, "a", []byte("1"), []byte("3"), 0),
		DeleteOp(r0, "b"),
		BatchOp(SetOp(r0, "c", []byte("x"), 0)),
		SetOp(r0, "", []byte("x"), 0),
	)
	rs, ok := f.Apply(logAt(t, 7, 0, batch)).([]Result)
	if !ok || len(rs) != 6 {
		t.Fatalf("got %#v", rs)
	}
	if rs[0].Err != nil || rs[1].Swapped != true || rs[2].Swapped != false || rs[3].Err != nil {
		t.Fatalf("results %+v", rs)
	}
	if !errors.Is(rs[4].Err, ErrBadCommand) || !errors.Is(rs[5].Err, ErrBadCommand) {
		t.Fatalf("nested batch / empty key not rejected: %+v", rs[4:])
	}
	if v, ver, _ := get(t, f, r0, "a", now(0)); string(v) != "2" || ver != v1(2) {
		t.Fatalf("a = %q@%d", v, ver)
	}
	if _, _, ok := get(t, f, r0, "c", now(0)); ok {
		t.Fatal("nested batch applied")
	}
}

func TestBadCommandAndNonCommandEntries(t *testing.T) {
	f := owning(t, Options{}, r0)
	r := single(t, f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{0xff, 0xff}}))
	if !errors.Is(r.Err, ErrBadCommand) {
		t.Fatalf("garbage gave %+v", r)
	}
	out := f.ApplyBatch([]*raft.Log{{Index: 2, Type: raft.LogConfiguration}, logAt(t, 3, 0, SetOp(r0, "k", nil, 0))})
	if out[0] != nil || single(t, out[1]).Err != nil || f.Applied() != 3 {
		t.Fatalf("batch out %#v applied %d", out, f.Applied())
	}
}

func TestTTLUsesAppendedAt(t *testing.T) {
	f := owning(t, Options{}, r0)
	f.Apply(logAt(t, 1, 0, SetOp(r0, "k", []byte("v"), 10*time.Second)))
	if _, _, ok := get(t, f, r0, "k", now(9*time.Second)); !ok {
		t.Fatal("expired early")
	}
	if _, _, ok := get(t, f, r0, "k", now(10*time.Second)); ok {
		t.Fatal("not expired at its deadline")
	}
	// CAS against an expired key sees it absent.
	r := single(t, f.Apply(logAt(t, 2, 11*time.Second, CASOp(r0, "k", nil, []byte("w"), 0))))
	if !r.Swapped {
		t.Fatal("CAS(absent) on expired key failed")
	}
	if f.Len() != 1 || f.Used() != int64(len("k")+len("w")) {
		t.Fatalf("len %d used %d", f.Len(), f.Used())
	}
}

// Two replicas apply the same log, snapshotted and restored at different
// points, and read at different times: their states must stay identical.
func TestTTLDeterministicAcrossReplicas(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var logs []*raft.Log
	for i := 1; i <= 3000; i++ {
		key := fmt.Sprintf("k%d", rng.IntN(200))
		var cmd *fsmpb.Command
		switch rng.IntN(4) {
		case 0:
			cmd = DeleteOp(r0, key)
		case 1:
			cmd = CASOp(r0, key, nil, []byte("c"), time.Duration(rng.IntN(50))*time.Millisecond)
		default:
			cmd = SetOp(r0, key, bytes.Repeat([]byte("v"), rng.IntN(40)), time.Duration(rng.IntN(3))*time.Duration(rng.IntN(100))*time.Millisecond)
		}
		logs = append(logs, logAt(t, uint64(i), time.Duration(i)*time.Millisecond, cmd))
	}
	opts := Options{MemoryLimit: 3000}
	a, b := owning(t, opts, r0), owning(t, opts, r0)
	var ra, rb []Result
	for _, l := range logs {
		ra = append(ra, single(t, a.Apply(l)))
	}
	for i, l := range logs {
		if i == 1500 { // b takes a snapshot mid-way and restores it into a fresh FSM
			b = roundTrip(t, b, opts)
		}
		rb = append(rb, single(t, b.Apply(l)))
	}
	for i := range ra {
		if ra[i].Swapped != rb[i].Swapped || !errors.Is(ra[i].Err, rb[i].Err) && ra[i].Err != rb[i].Err {
			t.Fatalf("entry %d: %+v vs %+v", i+1, ra[i], rb[i])
		}
	}
	if dump(a) != dump(b) || a.Used() != b.Used() || a.Len() != b.Len() {
		t.Fatalf("replicas diverged: used %d/%d len %d/%d", a.Used(), b.Used(), a.Len(), b.Len())
	}
}

func roundTrip(t *testing.T, f *FSM, opts Options) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	g := owning(t, opts, r0, 1)
	g.Apply(logAt(t, 1, 0, SetOp(1, "junk", []byte("replaced by restore"), 0)))
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	return g
}

// dump lists every range's record and entries.
func dump(f *FSM) string {
	var lines []string
	for _, rs := range f.table.Load().ranges {
		if rs == nil {
			continue
		}
		lines = append(lines, fmt.Sprintf("%d:%v", rs.num, rs.rec))
		rs.tab.all(func(e entry) {
			h := e.header()
			lines = append(lines, fmt.Sprintf("%d:%s=%q@%d/%d", rs.num, e.key(h), e.value(h), h.version, h.expireAt))
		})
	}
	sort.Strings(lines)
	return fmt.Sprint(lines)
}

func TestSnapshotRoundTrip(t *testing.T) {
	f := owning(t, Options{}, r0)
	for i := 0; i < 1000; i++ {
		f.Apply(logAt(t, uint64(i+1), 0, SetOp(r0, fmt.Sprint("key", i), []byte(fmt.Sprint("value", i)), time.Duration(i%3)*time.Hour)))
	}
	f.Apply(logAt(t, 1001, 0, SetOp(r0, "empty", []byte{}, 0)))
	g := roundTrip(t, f, Options{})
	if dump(f) != dump(g) || f.Used() != g.Used() || f.Len() != g.Len() || g.Applied() != 1001 {
		t.Fatalf("restore differs: used %d/%d len %d/%d applied %d", f.Used(), g.Used(), f.Len(), g.Len(), g.Applied())
	}
	if v, _, ok := get(t, g, r0, "empty", now(0)); !ok || v == nil || len(v) != 0 {
		t.Fatalf("empty value after restore: %v %v", v, ok)
	}
	// Writes after Snapshot() do not leak into the snapshot being persisted.
	snap, _ := f.Snapshot()
	f.Apply(logAt(t, 1002, 0, SetOp(r0, "late", []byte("x"), 0)))
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	h := New(Options{})
	if err := h.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := get(t, h, r0, "late", now(0)); ok {
		t.Fatal("snapshot saw a later write")
	}
}

func TestRestoreRejectsCorruptStreams(t *testing.T) {
	f := owning(t, Options{}, r0)
	f.Apply(logAt(t, 1, 0, SetOp(r0, "key", []byte("value"), 0)))
	snap, _ := f.Snapshot()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	good := sink.Bytes()
	for cut := 0; cut < len(good)-1; cut++ {
		g := New(Options{})
		if err := g.Restore(io.NopCloser(bytes.NewReader(good[:cut]))); err == nil {
			t.Fatalf("truncated at %d accepted", cut)
		}
	}
	// magic, applied, no layout (five zero varints), 1 range, range 0,
	// Owned, epoch 1, nine zero varints (peer, freeze index, since, count,
	// bytes, cursor length, got count, bytes, digest), then a key length
	// over the limit.
	if !bytes.Equal(good[14:23], make([]byte, 9)) || !bytes.Equal(good[5:10], make([]byte, 5)) {
		t.Fatalf("unexpected record bytes %x", good[:23])
	}
	huge := append(append([]byte{}, good[:23]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)
	if err := New(Options{}).Restore(io.NopCloser(bytes.NewReader(huge))); err == nil {
		t.Fatal("huge field accepted")
	}
}

func TestMemoryLimit(t *testing.T) {
	f := owning(t, Options{MemoryLimit: 10}, r0)
	if r := single(t, f.Apply(logAt(t, 1, 0, SetOp(r0, "k", []byte("123456789"), 0)))); r.Err != nil {
		t.Fatalf("exactly at limit: %v", r.Err)
	}
	r := single(t, f.Apply(logAt(t, 2, 0, SetOp(r0, "j", []byte("1"), 0))))
	if !errors.Is(r.Err, ErrMemoryLimit) {
		t.Fatalf("over limit: %+v", r)
	}
	if _, _, ok := get(t, f, r0, "j", now(0)); ok {
		t.Fatal("rejected write stored")
	}
	// Shrinking an existing value and deleting always work.
	if r := single(t, f.Apply(logAt(t, 3, 0, SetOp(r0, "k", []byte("1"), 0)))); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := single(t, f.Apply(logAt(t, 4, 0, CASOp(r0, "k", []byte("1"), []byte("1234567890"), 0)))); !errors.Is(r.Err, ErrMemoryLimit) || r.Swapped {
		t.Fatalf("CAS over limit: %+v", r)
	}
	if r := single(t, f.Apply(logAt(t, 5, 0, DeleteOp(r0, "k")))); r.Err != nil || f.Used() != 0 {
		t.Fatalf("delete: %+v used %d", r, f.Used())
	}
}

func TestValuesAreNotAliased(t *testing.T) {
	f := owning(t, Options{}, r0)
	cmd := SetOp(r0, "k", []byte("abc"), 0)
	l := logAt(t, 1, 0, cmd)
	f.Apply(l)
	for i := range l.Data {
		l.Data[i] = 'X'
	}
	v, _, _ := get(t, f, r0, "k", now(0))
	v[0] = 'Z'
	if v2, _, _ := get(t, f, r0, "k", now(0)); string(v2) != "abc" {
		t.Fatalf("stored value changed to %q", v2)
	}
}

// Peek sees what Get sees, without the copy; a value replaced after a Peek
// leaves the peeked one as it was.
func TestPeek(t *testing.T) {
	f := owning(t, Options{}, r0)
	f.Apply(logAt(t, 1, 0, SetOp(r0, "k", []byte("abc"), time.Second)))
	v, version, ok, err := f.Peek(r0, "k", now(0))
	if err != nil || !ok || string(v) != "abc" || version != v1(1) {
		t.Fatalf("Peek = %q %d %v", v, version, ok)
	}
	f.Apply(logAt(t, 2, 0, SetOp(r0, "k", []byte("xyz"), 0)))
	if string(v) != "abc" {
		t.Fatalf("peeked value changed to %q", v)
	}
	if _, _, ok, err := f.Peek(r0, "absent", now(0)); ok || err != nil {
		t.Fatal("Peek found an absent key")
	}
	f.Apply(logAt(t, 3, 0, SetOp(r0, "ttl", []byte("v"), time.Second)))
	if _, _, ok, err := f.Peek(r0, "ttl", now(time.Second)); ok || err != nil {
		t.Fatal("Peek found an expired key")
	}
}

func TestWaitApplied(t *testing.T) {
	f := owning(t, Options{}, r0)
	done := make(chan error, 1)
	go func() { done <- f.WaitApplied(context.Background(), 3) }()
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() { cancelled <- f.WaitApplied(ctx, 100) }()
	f.Apply(logAt(t, 1, 0, SetOp(r0, "a", nil, 0)))
	select {
	case <-done:
		t.Fatal("released early")
	default:
	}
	f.ApplyBatch([]*raft.Log{logAt(t, 2, 0, SetOp(r0, "a", nil, 0)), logAt(t, 3, 0, SetOp(r0, "a", nil, 0))})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	if err := f.WaitApplied(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
}

type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }

// A waiter that registers while an apply releases waiters must never be
// missed (a lost wake-up hangs the reader forever).
func TestWaitAppliedNoLostWakeup(t *testing.T) {
	for i := 0; i < 2000; i++ {
		f := owning(t, Options{}, r0)
		done := make(chan error, 1)
		go func() { done <- f.WaitApplied(context.Background(), 1) }()
		f.Apply(logAt(t, 1, 0, SetOp(r0, "a", nil, 0)))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("iteration %d: waiter never released", i)
		}
	}
}

func TestDigestIgnoresOrderAndSeesChanges(t *testing.T) {
	// Two FSMs with the same entries (their maps iterate in different
	// orders) agree; one more write changes the digest.
	a, b := owning(t, Options{}, r0), owning(t, Options{}, r0)
	for i := 0; i < 100; i++ {
		l := logAt(t, uint64(i+1), 0, SetOp(r0, fmt.Sprint("k", i), []byte("v"), 0))
		a.Apply(l)
		b.Apply(l)
	}
	da, na := a.Digest()
	db, nb := b.Digest()
	if da != db || na != 100 || nb != 100 {
		t.Fatalf("same entries: digests %x/%x, counts %d/%d", da, db, na, nb)
	}
	b.Apply(logAt(t, 101, 0, SetOp(r0, "k1", []byte("w"), 0)))
	if d, _ := b.Digest(); d == da {
		t.Fatal("a changed value left the digest unchanged")
	}
}

// v1 is the version of the seq-th write to a range Owned at epoch 1.
func v1(seq uint64) uint64 {
	v, _ := MakeVersion(1, seq)
	return v
}
