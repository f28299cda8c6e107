package fsm

import (
	"bytes"
	"errors"
	"io"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestGenesisIsIdempotent(t *testing.T) {
	f := New(Options{Ranges: 8})
	if rec := f.Range(3); rec != (RangeRecord{}) {
		t.Fatalf("unknown range: %+v, want Absent at 0", rec)
	}
	// A range that moved away (Absent at a later epoch) is left alone.
	f.Apply(logAt(t, 1, 0, GenesisOp([]int{5})))
	f.setRecord(f.table.Load().at(5), RangeRecord{State: Absent, Epoch: 2})

	if r := single(t, f.Apply(logAt(t, 2, 0, GenesisOp([]int{1, 3, 3, 5})))); r.Err != nil || r.Version != 2 {
		t.Fatalf("genesis: %+v", r)
	}
	want := map[int]RangeRecord{1: {State: Owned, Epoch: 1}, 3: {State: Owned, Epoch: 1}, 5: {State: Absent, Epoch: 2}, 0: {}, 7: {}}
	check := func(when string) {
		t.Helper()
		for r, rec := range want {
			if got := f.Range(r); got != rec {
				t.Fatalf("%s: range %d is %+v, want %+v", when, r, got, rec)
			}
		}
		if got := f.OwnedRanges(); !slices.Equal(got, []int{1, 3}) {
			t.Fatalf("%s: owned %v", when, got)
		}
	}
	check("after genesis")
	single(t, f.Apply(logAt(t, 3, 0, SetOp(3, "k", []byte("v"), 0))))
	// Replaying it changes nothing, data included.
	if r := single(t, f.Apply(logAt(t, 4, 0, GenesisOp([]int{1, 3, 5})))); r.Err != nil {
		t.Fatal(r.Err)
	}
	check("after replay")
	if v, _, ok := get(t, f, 3, "k", now(0)); !ok || string(v) != "v" {
		t.Fatalf("data after replay: %q %v", v, ok)
	}
	// Out of bounds: the whole entry is rejected.
	if r := single(t, f.Apply(logAt(t, 5, 0, GenesisOp([]int{2, 8})))); !errors.Is(r.Err, ErrBadCommand) {
		t.Fatalf("out of bounds: %+v", r)
	}
	// Inside a batch: rejected, the other operations apply.
	rs := f.Apply(logAt(t, 6, 0, BatchOp(GenesisOp([]int{2}), SetOp(1, "a", nil, 0)))).([]Result)
	if !errors.Is(rs[0].Err, ErrBadCommand) || rs[1].Err != nil {
		t.Fatalf("batch: %+v", rs)
	}
	check("after rejected genesis")
}

func TestNotOwned(t *testing.T) {
	f := owning(t, Options{Ranges: 4}, 1)
	for i, cmd := range []struct {
		name string
		res  Result
	}{
		{"set", single(t, f.Apply(logAt(t, 2, 0, SetOp(2, "k", []byte("v"), 0))))},
		{"delete", single(t, f.Apply(logAt(t, 3, 0, DeleteOp(2, "k"))))},
		{"cas", single(t, f.Apply(logAt(t, 4, 0, CASOp(2, "k", nil, []byte("v"), 0))))},
	} {
		if !errors.Is(cmd.res.Err, ErrNotOwned) || cmd.res.Swapped {
			t.Fatalf("%d %s: %+v", i, cmd.name, cmd.res)
		}
	}
	if f.Len() != 0 || f.Used() != 0 {
		t.Fatalf("not-owned writes stored: len %d used %d", f.Len(), f.Used())
	}
	single(t, f.Apply(logAt(t, 5, 0, SetOp(1, "k", []byte("v"), 0))))
	for _, r := range []int{0, 2, -1, 4, math.MaxInt32} {
		if _, _, err := f.Lookup(r, "k"); err != ErrNotOwned {
			t.Fatalf("Lookup(%d): %v", r, err)
		}
		if _, _, ok, err := f.Peek(r, "k", now(0)); ok || err != ErrNotOwned {
			t.Fatalf("Peek(%d): %v %v", r, ok, err)
		}
		if _, _, ok, err := f.Get(r, "k", now(0)); ok || err != ErrNotOwned {
			t.Fatalf("Get(%d): %v %v", r, ok, err)
		}
	}
	// The key is in range 1, not in another owned range.
	f.Apply(logAt(t, 6, 0, GenesisOp([]int{2})))
	if e, found, err := f.Lookup(2, "k"); found || err != nil {
		t.Fatalf("range 2 sees range 1's key: %+v %v %v", e, found, err)
	}
	if e, found, err := f.Lookup(1, "k"); !found || err != nil || string(e.Value) != "v" || e.Version != v1(1) {
		t.Fatalf("Lookup(1): %+v %v %v", e, found, err)
	}
	if n := testing.AllocsPerRun(100, func() { f.Lookup(0, "k") }); n != 0 {
		t.Fatalf("a not-owned Lookup allocates %v times", n)
	}
}

func TestRangeBounds(t *testing.T) {
	bounded := owning(t, Options{Ranges: 4}, 3)
	unbounded := owning(t, Options{}, 7, MaxRanges-1)
	for _, c := range []struct {
		f    *FSM
		r    int
		want error
	}{
		{bounded, 3, nil},
		{bounded, 2, ErrNotOwned},
		{bounded, 4, ErrBadCommand},
		{bounded, math.MaxUint32, ErrBadCommand},
		{unbounded, 7, nil},
		{unbounded, MaxRanges - 1, nil},
		{unbounded, 8, ErrNotOwned},
		{unbounded, MaxRanges, ErrBadCommand},
	} {
		for _, cmd := range []*raft.Log{
			logAt(t, 2, 0, SetOp(c.r, "k", []byte("v"), 0)),
			logAt(t, 3, 0, CASOp(c.r, "k", []byte("v"), []byte("w"), 0)),
			logAt(t, 4, 0, DeleteOp(c.r, "k")),
		} {
			if r := single(t, c.f.Apply(cmd)); !errors.Is(r.Err, c.want) || c.want == nil && r.Err != nil {
				t.Fatalf("range %d: %+v, want %v", c.r, r, c.want)
			}
		}
	}
}

func TestMemoryLimitIsTheGroupsShare(t *testing.T) {
	// 100 bytes over 10 ranges: owning 2 allows 20.
	f := owning(t, Options{MemoryLimit: 100, Ranges: 10}, 0, 1)
	if r := single(t, f.Apply(logAt(t, 2, 0, SetOp(0, "k", bytes.Repeat([]byte("v"), 9), 0)))); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := single(t, f.Apply(logAt(t, 3, 0, SetOp(1, "j", bytes.Repeat([]byte("v"), 9), 0)))); r.Err != nil {
		t.Fatalf("at the share: %v", r.Err)
	}
	if r := single(t, f.Apply(logAt(t, 4, 0, SetOp(1, "x", nil, 0)))); !errors.Is(r.Err, ErrMemoryLimit) {
		t.Fatalf("over the share: %+v", r)
	}
	// A third range raises the share to 30.
	f.Apply(logAt(t, 5, 0, GenesisOp([]int{2})))
	if r := single(t, f.Apply(logAt(t, 6, 0, SetOp(2, "x", bytes.Repeat([]byte("v"), 9), 0)))); r.Err != nil {
		t.Fatalf("under the larger share: %v", r.Err)
	}
	if f.RangeUsed(0) != 10 || f.RangeUsed(1) != 10 || f.RangeUsed(2) != 10 || f.RangeUsed(3) != 0 || f.Used() != 30 {
		t.Fatalf("used %d: %d %d %d", f.Used(), f.RangeUsed(0), f.RangeUsed(1), f.RangeUsed(2))
	}

	for _, c := range []struct {
		limit         int64
		ranges, owned int
		want          int64
	}{
		{0, 10, 3, math.MaxInt64},
		{100, 0, 0, 100},
		{10, 3, 1, 3},
		{10, 3, 2, 6},
		{10, 3, 3, 10},
		{math.MaxInt64, 1024, 1024, math.MaxInt64},
		{math.MaxInt64, 1024, 512, math.MaxInt64 / 2},
	} {
		g := New(Options{MemoryLimit: c.limit, Ranges: c.ranges})
		if got := g.share(c.owned); got != c.want {
			t.Fatalf("share(%+v) = %d", c, got)
		}
	}
}

// Each range's entries expire at their own deadlines; a range that is not
// Owned is not swept until it is Owned again.
func TestSweepPerRange(t *testing.T) {
	f := owning(t, Options{Ranges: 4}, 0, 1, 2)
	f.Apply(logAt(t, 2, 0, SetOp(0, "a", []byte("1"), 10*time.Second)))
	f.Apply(logAt(t, 3, 0, SetOp(1, "b", []byte("1"), 20*time.Second)))
	f.Apply(logAt(t, 4, 0, SetOp(2, "c", []byte("1"), 10*time.Second)))
	f.Apply(logAt(t, 5, 0, SetOp(1, "d", []byte("1"), 5*time.Second)))
	f.Apply(logAt(t, 6, 0, SetOp(1, "d", []byte("22"), 0))) // overwritten without a TTL: kept
	// A record that is not Owned but keeps its data (as Frozen does):
	// range 2 stops being swept.
	f.setRecord(f.table.Load().at(2), RangeRecord{State: Absent, Epoch: 2})

	f.Apply(logAt(t, 7, 10*time.Second, DeleteOp(3, "unowned")))
	if f.RangeUsed(0) != 0 || f.RangeUsed(1) != 5 || f.RangeUsed(2) != 2 || f.Len() != 3 {
		t.Fatalf("at 10s: used %d %d %d, len %d", f.RangeUsed(0), f.RangeUsed(1), f.RangeUsed(2), f.Len())
	}
	f.setRecord(f.table.Load().at(2), RangeRecord{State: Owned, Epoch: 3})
	f.Apply(logAt(t, 8, 20*time.Second, DeleteOp(3, "unowned")))
	if f.RangeUsed(1) != 3 || f.RangeUsed(2) != 0 || f.Len() != 1 || f.Used() != 3 {
		t.Fatalf("at 20s: used %d %d, len %d", f.RangeUsed(1), f.RangeUsed(2), f.Len())
	}
	if v, _, ok := get(t, f, 1, "d", now(time.Hour)); !ok || string(v) != "22" {
		t.Fatalf("d = %q %v", v, ok)
	}
	if len(f.due) != 0 {
		t.Fatalf("%d ranges still queued", len(f.due))
	}
}

func TestSnapshotRoundTripWithRecords(t *testing.T) {
	opts := Options{Ranges: 16}
	f := owning(t, opts, 0, 3, 9)
	f.Apply(logAt(t, 2, 0, GenesisOp([]int{12})))
	f.setRecord(f.table.Load().at(12), RangeRecord{State: Absent, Epoch: 4}) // moved away
	for i := 0; i < 300; i++ {
		r := []int{0, 3, 9}[i%3]
		f.Apply(logAt(t, uint64(i+3), 0, SetOp(r, string(rune('a'+i%26))+string(rune('A'+i/26)), bytes.Repeat([]byte{byte(i)}, i%7), time.Duration(i%4)*time.Second)))
	}
	g := roundTrip(t, f, opts)
	if dump(f) != dump(g) || f.Used() != g.Used() || f.Len() != g.Len() || !slices.Equal(f.OwnedRanges(), g.OwnedRanges()) {
		t.Fatalf("restore differs:\n%s\n%s", dump(f), dump(g))
	}
	for r := 0; r < 16; r++ {
		if f.Range(r) != g.Range(r) || f.RangeUsed(r) != g.RangeUsed(r) {
			t.Fatalf("range %d: %+v/%+v used %d/%d", r, f.Range(r), g.Range(r), f.RangeUsed(r), g.RangeUsed(r))
		}
		if d1, n1 := f.RangeDigest(r); true {
			if d2, n2 := g.RangeDigest(r); d1 != d2 || n1 != n2 {
				t.Fatalf("range %d digest differs", r)
			}
		}
	}
	// Expiry continues identically after the restore.
	late := logAt(t, 1000, 2*time.Second, DeleteOp(0, "none"))
	f.Apply(late)
	g.Apply(late)
	if dump(f) != dump(g) || f.Len() == 300 {
		t.Fatalf("after expiry: len %d/%d", f.Len(), g.Len())
	}
}

// retainSink keeps snapshots by reference, as raftgroup's store does.
type retainSink struct {
	memSink
	keep   bool
	kept   io.WriterTo
	closed bool
}

func (s *retainSink) Retain(w io.WriterTo) bool {
	if s.keep {
		s.kept = w
	}
	return s.keep
}

func (s *retainSink) Close() error { s.closed = true; return nil }

func TestSnapshotRetention(t *testing.T) {
	f := owning(t, Options{}, r0, 5)
	f.Apply(logAt(t, 2, 0, SetOp(r0, "a", []byte("1"), 0)))
	f.Apply(logAt(t, 3, 0, SetOp(5, "b", []byte("2"), time.Hour)))
	want := dump(f)
	snap, _ := f.Snapshot()
	plain := &memSink{}
	if err := snap.Persist(plain); err != nil {
		t.Fatal(err)
	}
	declined := &retainSink{}
	if err := snap.Persist(declined); err != nil || !declined.closed || !bytes.Equal(declined.Bytes(), plain.Bytes()) {
		t.Fatalf("a declining sink got %d bytes, want %d (err %v)", declined.Len(), plain.Len(), err)
	}
	kept := &retainSink{keep: true}
	if err := snap.Persist(kept); err != nil || !kept.closed || kept.Len() != 0 || kept.kept == nil {
		t.Fatalf("retaining sink: err %v closed %v wrote %d", err, kept.closed, kept.Len())
	}
	// Raft releases the snapshot, the state moves on, and the store writes
	// the retained snapshot later: the bytes are those of the moment taken.
	snap.Release()
	f.Apply(logAt(t, 4, 0, SetOp(r0, "a", []byte("changed"), 0)))
	f.Apply(logAt(t, 5, 0, DeleteOp(5, "b")))
	var buf bytes.Buffer
	n, err := kept.kept.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) || !bytes.Equal(buf.Bytes(), plain.Bytes()) {
		t.Fatalf("WriteTo after Release: %d bytes (n %d, err %v), want %d", buf.Len(), n, err, plain.Len())
	}
	g := New(Options{})
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if dump(g) != want || g.Applied() != 3 {
		t.Fatalf("restored %s applied %d, want %s", dump(g), g.Applied(), want)
	}
}

func TestRestoreValidates(t *testing.T) {
	e := newEntry([]byte("k"), []byte("v"), 1, 0)
	owned := RangeRecord{State: Owned, Epoch: 1}
	for _, c := range []struct {
		name   string
		ranges []snapRange
		opts   Options
		extra  []byte
	}{
		{"range out of bounds", []snapRange{{num: 4, rec: owned}}, Options{Ranges: 4}, nil},
		{"range beyond MaxRanges", []snapRange{{num: MaxRanges, rec: owned}}, Options{}, nil},
		{"ranges out of order", []snapRange{{num: 2, rec: owned}, {num: 1, rec: owned}}, Options{}, nil},
		{"range twice", []snapRange{{num: 1, rec: owned}, {num: 1, rec: owned}}, Options{}, nil},
		{"unknown state", []snapRange{{num: 1, rec: RangeRecord{State: 200}}}, Options{}, nil},
		{"entries in an Absent range", []snapRange{{num: 1, rec: RangeRecord{State: Absent, Epoch: 2}, entries: []entry{e}}}, Options{}, nil},
		{"duplicate key", []snapRange{{num: 1, rec: owned, entries: []entry{e, e}}}, Options{}, nil},
		{"trailing bytes", []snapRange{{num: 1, rec: owned, entries: []entry{e}}}, Options{}, []byte{0}},
	} {
		var buf bytes.Buffer
		if _, err := (&snapshot{applied: 9, ranges: c.ranges}).WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		buf.Write(c.extra)
		g := owning(t, c.opts, 0)
		before := dump(g)
		if err := g.Restore(io.NopCloser(&buf)); err == nil {
			t.Fatalf("%s: accepted", c.name)
		}
		if dump(g) != before || g.Applied() != 1 {
			t.Fatalf("%s: a rejected restore changed the state", c.name)
		}
	}
	// The same shapes, valid, are accepted.
	var buf bytes.Buffer
	(&snapshot{applied: 9, ranges: []snapRange{{num: 1, rec: RangeRecord{State: Absent, Epoch: 2}}, {num: 3, rec: owned, entries: []entry{e}}}}).WriteTo(&buf)
	g := New(Options{Ranges: 4})
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if g.Range(1) != (RangeRecord{State: Absent, Epoch: 2}) || !slices.Equal(g.OwnedRanges(), []int{3}) || g.Len() != 1 || g.Applied() != 9 {
		t.Fatalf("valid snapshot restored as %s", dump(g))
	}
}

func TestRangeDigest(t *testing.T) {
	a, b := owning(t, Options{}, 0, 1, 2), owning(t, Options{}, 0, 1, 2)
	var ls []*raft.Log
	for i := 0; i < 90; i++ {
		ls = append(ls, logAt(t, uint64(i+2), 0, SetOp(i%3, string(rune('a'+i)), []byte{byte(i)}, time.Duration(i%2)*time.Hour)))
	}
	for _, l := range ls {
		a.Apply(l)
	}
	c := owning(t, Options{}, 2, 1, 0)
	for _, l := range ls {
		c.Apply(l)
	}
	for r := 0; r < 3; r++ {
		// The same entries (versions included) inserted into a table in
		// another order.
		rs := b.table.Load().at(r)
		a.table.Load().at(r).tab.all(func(e entry) {
			h := e.header()
			rs.tab.set(newEntry([]byte(e.key(h)), e.value(h), h.version, h.expireAt))
		})
		da, _ := a.RangeDigest(r)
		if db, _ := b.RangeDigest(r); da != db {
			t.Fatalf("range %d: insertion order changed the digest", r)
		}
	}
	var sum uint64
	for r := 0; r < 3; r++ {
		da, na := a.RangeDigest(r)
		dc, nc := c.RangeDigest(r)
		if da != dc || na != 30 || nc != 30 {
			t.Fatalf("range %d: %x/%x %d/%d", r, da, dc, na, nc)
		}
		sum += da
	}
	if d, n := a.Digest(); d != sum || n != 90 {
		t.Fatalf("Digest %x/%d, want the sum %x/90", d, n, sum)
	}
	before0, _ := c.RangeDigest(0)
	c.Apply(logAt(t, 500, 0, SetOp(1, "b", []byte("new"), 0)))
	after0, _ := c.RangeDigest(0)
	d1, _ := c.RangeDigest(1)
	if before0 != after0 || d1 == func() uint64 { d, _ := a.RangeDigest(1); return d }() {
		t.Fatal("a write changed another range's digest or left its own")
	}
	if d, n := c.RangeDigest(7); d != 0 || n != 0 {
		t.Fatalf("unknown range digest %x/%d", d, n)
	}
}

// CountIn follows every record change, and Restore.
func TestCountIn(t *testing.T) {
	f := New(Options{Ranges: 8})
	counts := func(f *FSM) [Sealed + 1]int {
		var c [Sealed + 1]int
		for s := Absent; s <= Sealed; s++ {
			c[s] = f.CountIn(s)
		}
		return c
	}
	want := func(f *FSM) [Sealed + 1]int {
		var c [Sealed + 1]int
		for r := range 8 {
			if rec := f.Range(r); rec != (RangeRecord{}) || slices.Contains(f.RangesIn(Absent), r) {
				c[rec.State]++
			}
		}
		return c
	}
	f.Apply(logAt(t, 1, 0, GenesisOp([]int{0, 1, 2})))
	f.Apply(logAt(t, 2, 0, FreezeOp(1, 1, 5)))
	f.Apply(logAt(t, 3, 0, IncomingOp(6, 1, 4, 0, 0)))
	if got := counts(f); got[Owned] != 2 || got[Frozen] != 1 || got[Incoming] != 1 || got != want(f) {
		t.Fatalf("counts %v, records say %v", got, want(f))
	}
	if g := roundTrip(t, f, Options{Ranges: 8}); counts(g) != counts(f) {
		t.Fatalf("after restore %v, before %v", counts(g), counts(f))
	}
}
