package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// The groups of the handoff tests: range hr moves from source group src to
// target group dst.
const (
	hr  = 1
	src = 7
	dst = 9
)

// step applies cmd as the next log entry of f, at epoch+offset.
func stepAt(t testing.TB, f *FSM, offset time.Duration, cmd *fsmpb.Command) Result {
	t.Helper()
	r, ok := f.Apply(logAt(t, f.Applied()+1, offset, cmd)).(*Result)
	if !ok {
		t.Fatalf("%v: not a single result", cmd)
	}
	return *r
}

func step(t testing.TB, f *FSM, cmd *fsmpb.Command) Result { t.Helper(); return stepAt(t, f, 0, cmd) }

// mustStep applies cmd and fails the test unless it succeeded.
func mustStep(t testing.TB, f *FSM, cmd *fsmpb.Command) Result {
	t.Helper()
	r := step(t, f, cmd)
	if r.Err != nil {
		t.Fatalf("%v: %v (record %+v)", cmd, r.Err, r.Record)
	}
	return r
}

// keys lists range r's keys here, sorted, in any state.
func keys(f *FSM, r int) []string {
	var out []string
	if rs := f.table.Load().at(r); rs != nil {
		rs.tab.all(func(e entry) { out = append(out, e.storedKey()) })
	}
	slices.Sort(out)
	return out
}

// exportAll pages range r (Frozen at h) out of f, maxBytes at a time, as
// the Chunk commands that carry it: the last one with the trailer.
func exportAll(t testing.TB, f *FSM, r int, h uint64, maxBytes int) []*fsmpb.Command {
	t.Helper()
	var cmds []*fsmpb.Command
	after := ""
	for {
		page, last, err := f.Export(r, h, after, maxBytes)
		if err != nil {
			t.Fatalf("Export(%d, %d, %q): %v", r, h, after, err)
		}
		cmds = append(cmds, ChunkOp(r, h, after, page, last, f.RangeTally(r)))
		if last {
			return cmds
		}
		after = page[len(page)-1].Key
	}
}

// sourceOwning is a source group owning hr with two entries, a (version 2)
// and b (version 3), at index 3.
func sourceOwning(t testing.TB) *FSM {
	f := owning(t, Options{Ranges: 4}, hr)
	mustStep(t, f, SetOp(hr, "a", []byte("1"), 0))
	mustStep(t, f, SetOp(hr, "b", []byte("22"), 0))
	return f
}

// The records of the fixtures below.
var (
	frozen2   = RangeRecord{State: Frozen, Epoch: 2, Peer: dst, FreezeIndex: 4, Since: now(0), Count: 2, Bytes: 5}
	incoming2 = RangeRecord{State: Incoming, Epoch: 2, Peer: src, Since: now(0), Count: 2, Bytes: 5}
)

// handoffFixtures builds range hr in each state a handoff passes through,
// with real commands, and returns them by name with the chunks that copy
// the source's range (one entry each).
func handoffFixtures(t *testing.T) (map[string]func() *FSM, []*fsmpb.Command) {
	frozen := sourceOwning(t)
	mustStep(t, frozen, FreezeOp(hr, 1, dst))
	chunks := exportAll(t, frozen, hr, 2, 1)
	if len(chunks) != 2 {
		t.Fatalf("%d chunks", len(chunks))
	}
	target := func(cmds ...*fsmpb.Command) func() *FSM {
		return func() *FSM {
			f := New(Options{Ranges: 4})
			for _, c := range cmds {
				mustStep(t, f, c)
			}
			return f
		}
	}
	source := func(cmds ...*fsmpb.Command) func() *FSM {
		return func() *FSM {
			f := sourceOwning(t)
			for _, c := range cmds {
				mustStep(t, f, c)
			}
			return f
		}
	}
	incoming := IncomingOp(hr, 2, src, 2, 5)
	return map[string]func() *FSM{
		"Owned(1)":        source(),
		"Frozen(2)":       source(FreezeOp(hr, 1, dst)),
		"Gone(3)":         source(FreezeOp(hr, 1, dst), ReleaseOp(hr, 2)),
		"Owned(3) source": source(FreezeOp(hr, 1, dst), UnfreezeOp(hr, 2)),
		"Absent(0)":       target(),
		"Incoming(2)":     target(incoming),
		"Incoming(2) a":   target(incoming, chunks[0]),
		"Sealed(2)":       target(incoming, chunks[0], chunks[1]),
		"Owned(3) target": target(incoming, chunks[0], chunks[1], ActivateOp(hr, 2)),
		"Absent(2)":       target(incoming, AbortOp(hr, 2)),
	}, chunks
}

// Every handoff command in every state: the table in handoff.go, cell by
// cell. A command not listed for a state must change nothing and answer
// ErrPrecondition with the current record.
func TestHandoffCommandsInEveryState(t *testing.T) {
	fixtures, chunks := handoffFixtures(t)
	frozenTally := Tally{2, 5, chunks[1].GetChunk().Trailer.Digest}
	sealed := incoming2
	sealed.State, sealed.Cursor, sealed.Got = Sealed, "b", frozenTally
	staged := incoming2
	da, _ := entryDigest(newEntry([]byte("a"), []byte("1"), v1(1), 0), nil)
	staged.Cursor, staged.Got = "a", Tally{Count: 1, Bytes: 2, Digest: da}

	type outcome struct {
		rec  RangeRecord
		keys []string
		err  error // nil or ErrCopyMismatch
	}
	ab := []string{"a", "b"}
	commands := []struct {
		name string
		cmd  *fsmpb.Command
		// accepted lists the states the command applies to, and how.
		accepted map[string]outcome
	}{
		{"freeze(1,T)", FreezeOp(hr, 1, dst), map[string]outcome{
			"Owned(1)": {frozen2, ab, nil}, "Frozen(2)": {frozen2, ab, nil}}},
		{"freeze(1,other T)", FreezeOp(hr, 1, 8), map[string]outcome{
			"Owned(1)": {func() RangeRecord { r := frozen2; r.Peer = 8; return r }(), ab, nil}}},
		{"freeze(2,T)", FreezeOp(hr, 2, dst), nil},
		{"incoming(2)", IncomingOp(hr, 2, src, 2, 5), map[string]outcome{
			"Absent(0)": {incoming2, nil, nil}, "Incoming(2)": {incoming2, nil, nil}, "Incoming(2) a": {staged, []string{"a"}, nil}}},
		{"incoming(2) other size", IncomingOp(hr, 2, src, 3, 5), map[string]outcome{
			"Absent(0)": {func() RangeRecord { r := incoming2; r.Count = 3; return r }(), nil, nil}}},
		{"incoming(4)", IncomingOp(hr, 4, src, 2, 5), func() map[string]outcome {
			r := incoming2
			r.Epoch = 4
			return map[string]outcome{"Absent(0)": {r, nil, nil}, "Gone(3)": {r, nil, nil}, "Absent(2)": {r, nil, nil}}
		}()},
		{"chunk after ''", chunks[0], map[string]outcome{"Incoming(2)": {staged, []string{"a"}, nil}}},
		{"chunk after a, last", chunks[1], map[string]outcome{"Incoming(2) a": {sealed, ab, nil}}},
		{"release(2)", ReleaseOp(hr, 2), map[string]outcome{
			"Frozen(2)": {RangeRecord{State: Gone, Epoch: 3, Peer: dst}, nil, nil},
			"Gone(3)":   {RangeRecord{State: Gone, Epoch: 3, Peer: dst}, nil, nil}}},
		{"release(3)", ReleaseOp(hr, 3), nil},
		{"unfreeze(2)", UnfreezeOp(hr, 2), map[string]outcome{
			"Frozen(2)":       {RangeRecord{State: Owned, Epoch: 3}, ab, nil},
			"Owned(3) source": {RangeRecord{State: Owned, Epoch: 3}, ab, nil},
			"Owned(3) target": {RangeRecord{State: Owned, Epoch: 3}, ab, nil}}},
		{"activate(2)", ActivateOp(hr, 2), map[string]outcome{
			"Sealed(2)":       {RangeRecord{State: Owned, Epoch: 3}, ab, nil},
			"Owned(3) source": {RangeRecord{State: Owned, Epoch: 3}, ab, nil},
			"Owned(3) target": {RangeRecord{State: Owned, Epoch: 3}, ab, nil}}},
		{"abort(2)", AbortOp(hr, 2), map[string]outcome{
			"Absent(0)":     {RangeRecord{State: Absent, Epoch: 2}, nil, nil},
			"Incoming(2)":   {RangeRecord{State: Absent, Epoch: 2}, nil, nil},
			"Incoming(2) a": {RangeRecord{State: Absent, Epoch: 2}, nil, nil},
			"Sealed(2)":     {RangeRecord{State: Absent, Epoch: 2}, nil, nil},
			"Absent(2)":     {RangeRecord{State: Absent, Epoch: 2}, nil, nil}}},
		{"abort(4)", AbortOp(hr, 4), map[string]outcome{
			"Absent(0)": {RangeRecord{State: Absent, Epoch: 4}, nil, nil},
			"Gone(3)":   {RangeRecord{State: Absent, Epoch: 4}, nil, nil},
			"Absent(2)": {RangeRecord{State: Absent, Epoch: 4}, nil, nil}}},
	}
	for _, c := range commands {
		for state, build := range fixtures {
			f := build()
			before, beforeRec, beforeUsed := dump(f), f.Range(hr), f.Used()
			res := step(t, f, c.cmd)
			if res.Record == nil {
				t.Fatalf("%s on %s: no record (%+v)", c.name, state, res)
			}
			want, ok := c.accepted[state]
			if !ok {
				if res.Err != ErrPrecondition || *res.Record != beforeRec || dump(f) != before || f.Used() != beforeUsed {
					t.Fatalf("%s on %s: %v, record %+v; want ErrPrecondition and nothing changed", c.name, state, res.Err, *res.Record)
				}
				continue
			}
			if res.Err != want.err || *res.Record != want.rec || f.Range(hr) != want.rec {
				t.Fatalf("%s on %s: %v, record %+v\nwant %v, %+v", c.name, state, res.Err, *res.Record, want.err, want.rec)
			}
			if got := keys(f, hr); !slices.Equal(got, want.keys) {
				t.Fatalf("%s on %s: keys %v, want %v", c.name, state, got, want.keys)
			}
			if f.RangeUsed(hr) != f.Used() || f.Len() != len(want.keys) {
				t.Fatalf("%s on %s: used %d of %d, len %d", c.name, state, f.RangeUsed(hr), f.Used(), f.Len())
			}
		}
	}
}

// What each state serves: reads, ReadIndex reads and writes.
func TestHandoffStatesServe(t *testing.T) {
	fixtures, _ := handoffFixtures(t)
	for state, build := range fixtures {
		f := build()
		st := f.Range(hr).State
		wantRead, wantIndexed, wantWrite := ErrNotOwned, ErrNotOwned, ErrNotOwned
		switch st {
		case Owned:
			wantRead, wantIndexed, wantWrite = nil, nil, nil
		case Frozen:
			wantRead, wantIndexed, wantWrite = ErrMoving, nil, ErrMoving
		}
		if _, _, err := f.Lookup(hr, "a"); err != wantRead {
			t.Fatalf("%s: Lookup: %v, want %v", state, err, wantRead)
		}
		if _, _, _, err := f.Get(hr, "a", now(0)); err != wantRead {
			t.Fatalf("%s: Get: %v, want %v", state, err, wantRead)
		}
		e, found, err := f.LookupMode(hr, "a", ReadIndexed)
		if err != wantIndexed || (err == nil) != (found && string(e.Value) == "1" && e.Version == v1(1)) {
			t.Fatalf("%s: LookupMode(ReadIndexed): %+v %v %v, want %v", state, e, found, err, wantIndexed)
		}
		if _, _, err := f.LookupMode(hr, "a", ReadOwned); err != wantRead {
			t.Fatalf("%s: LookupMode(ReadOwned): %v, want %v", state, err, wantRead)
		}
		before := dump(f)
		for _, cmd := range []*fsmpb.Command{SetOp(hr, "a", []byte("x"), 0), DeleteOp(hr, "a"), CASOp(hr, "a", []byte("1"), []byte("x"), 0)} {
			res := step(t, f, cmd)
			if res.Err != wantWrite {
				t.Fatalf("%s: %v: %v, want %v", state, cmd, res.Err, wantWrite)
			}
			if wantWrite != nil && dump(f) != before {
				t.Fatalf("%s: a refused write changed the state", state)
			}
		}
	}
	f := fixtures["Frozen(2)"]()
	if n := testing.AllocsPerRun(100, func() { f.Lookup(hr, "a") }); n != 0 {
		t.Fatalf("a Lookup on a Frozen range allocates %v times", n)
	}
}

func TestHandoffCommandsAreWholeEntries(t *testing.T) {
	f := sourceOwning(t)
	rs := f.Apply(logAt(t, 4, 0, BatchOp(FreezeOp(hr, 1, dst), SetOp(hr, "c", nil, 0)))).([]Result)
	if !errors.Is(rs[0].Err, ErrBadCommand) || rs[0].Record != nil || rs[1].Err != nil {
		t.Fatalf("a handoff command in a batch: %+v", rs)
	}
	for _, cmd := range []*fsmpb.Command{FreezeOp(4, 1, dst), IncomingOp(4, 2, src, 0, 0), AbortOp(4, 2), ChunkOp(4, 2, "", nil, true, Tally{})} {
		if r := step(t, f, cmd); !errors.Is(r.Err, ErrBadCommand) || r.Record != nil {
			t.Fatalf("%v out of bounds: %+v", cmd, r)
		}
	}
	if f.Range(hr) != (RangeRecord{State: Owned, Epoch: 1}) || len(f.table.Load().ranges) != 2 {
		t.Fatalf("record %+v, table of %d", f.Range(hr), len(f.table.Load().ranges))
	}
}

func TestChunkRules(t *testing.T) {
	fixtures, chunks := handoffFixtures(t)
	last := chunks[1].GetChunk()
	entryB := RangeEntry{Key: "b", Entry: Entry{Value: []byte("22"), Version: v1(2)}}
	good := Tally{Count: last.Trailer.Count, Bytes: last.Trailer.Bytes, Digest: last.Trailer.Digest}

	// Malformed chunks are ErrBadCommand and change nothing.
	for _, c := range []struct {
		name    string
		after   string
		entries []RangeEntry
	}{
		{"key not after the cursor", "a", []RangeEntry{{Key: "a"}}},
		{"keys out of order", "a", []RangeEntry{{Key: "c"}, {Key: "b"}}},
		{"key twice", "a", []RangeEntry{{Key: "b"}, {Key: "b"}}},
		{"empty key", "a", []RangeEntry{{Key: ""}}},
	} {
		f := fixtures["Incoming(2) a"]()
		before := dump(f)
		if r := step(t, f, ChunkOp(hr, 2, c.after, c.entries, false, Tally{})); !errors.Is(r.Err, ErrBadCommand) || dump(f) != before {
			t.Fatalf("%s: %+v", c.name, r)
		}
	}
	// A last chunk that does not match drops the copy.
	for _, c := range []struct {
		name     string
		incoming *fsmpb.Command
		entries  []RangeEntry
		trailer  Tally
	}{
		{"digest", nil, []RangeEntry{entryB}, Tally{good.Count, good.Bytes, good.Digest + 1}},
		{"count", nil, []RangeEntry{entryB}, Tally{good.Count + 1, good.Bytes, good.Digest}},
		{"bytes", nil, []RangeEntry{entryB}, Tally{good.Count, good.Bytes - 1, good.Digest}},
		{"a missing entry", nil, nil, good},
		{"another value", nil, []RangeEntry{{Key: "b", Entry: Entry{Value: []byte("23"), Version: v1(2)}}}, good},
		{"another version", nil, []RangeEntry{{Key: "b", Entry: Entry{Value: []byte("22"), Version: v1(3)}}}, good},
		{"another expiry", nil, []RangeEntry{{Key: "b", Entry: Entry{Value: []byte("22"), Version: v1(2), ExpireAt: 1}}}, good},
	} {
		f := fixtures["Incoming(2) a"]()
		r := step(t, f, ChunkOp(hr, 2, "a", c.entries, true, c.trailer))
		if r.Err != ErrCopyMismatch || *r.Record != (RangeRecord{State: Absent, Epoch: 2}) ||
			f.Used() != 0 || f.Len() != 0 || keys(f, hr) != nil {
			t.Fatalf("%s: %+v, used %d len %d", c.name, r, f.Used(), f.Len())
		}
	}
	// The copy matches the trailer but not the size Incoming announced.
	f := New(Options{Ranges: 4})
	mustStep(t, f, IncomingOp(hr, 2, src, 2, 6))
	mustStep(t, f, chunks[0])
	if r := step(t, f, chunks[1]); r.Err != ErrCopyMismatch || f.Range(hr) != (RangeRecord{State: Absent, Epoch: 2}) {
		t.Fatalf("size differs from the announced one: %+v", r)
	}
	// The cursor must match; an empty page that is not the last changes
	// nothing but is accepted.
	f = fixtures["Incoming(2) a"]()
	if r := step(t, f, ChunkOp(hr, 2, "b", nil, false, Tally{})); r.Err != ErrPrecondition {
		t.Fatalf("after past the cursor: %+v", r)
	}
	rec := f.Range(hr)
	if r := step(t, f, ChunkOp(hr, 2, "a", nil, false, Tally{})); r.Err != nil || *r.Record != rec {
		t.Fatalf("empty page: %+v", r)
	}
	// The cursor is a copy, not a view of the log entry's bytes.
	data := AppendChunk(nil, hr, 2, "a", []RangeEntry{entryB}, true, good)
	f.Apply(&raft.Log{Index: f.Applied() + 1, Type: raft.LogCommand, Data: data, AppendedAt: epoch})
	clear(data)
	if got := f.Range(hr); got.State != Sealed || got.Cursor != "b" {
		t.Fatalf("sealed as %+v", got)
	}
}

func TestExportPaging(t *testing.T) {
	f := owning(t, Options{Ranges: 4}, hr, 2)
	var want []string
	for i := 0; i < 500; i++ {
		k := fmt.Sprintf("k%03d", (i*7919)%500) // written out of key order
		mustStep(t, f, SetOp(hr, k, make([]byte, i%13), time.Duration(i%3)*time.Hour))
		mustStep(t, f, SetOp(2, k, nil, 0)) // another range's keys stay out
		want = append(want, k)
	}
	slices.Sort(want)
	if _, _, err := f.Export(hr, 2, "", 100); err != ErrPrecondition {
		t.Fatalf("Export of an Owned range: %v", err)
	}
	mustStep(t, f, FreezeOp(hr, 1, dst))
	for _, c := range []struct {
		h   uint64
		r   int
		err error
	}{{1, hr, ErrPrecondition}, {3, hr, ErrPrecondition}, {2, 3, ErrPrecondition}, {2, 100, ErrPrecondition}, {2, hr, nil}} {
		if _, _, err := f.Export(c.r, c.h, "", 100); err != c.err {
			t.Fatalf("Export(%d, %d): %v, want %v", c.r, c.h, err, c.err)
		}
	}
	for _, maxBytes := range []int{0, 1, 37, 1000, 1 << 20} {
		var got []string
		after, pages := "", 0
		for {
			page, last, err := f.Export(hr, 2, after, maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			size := 0
			for _, e := range page {
				got = append(got, e.Key)
				size += len(e.Key) + len(e.Value)
				if x, _, _ := f.LookupMode(hr, e.Key, ReadIndexed); x.Version != e.Version || x.ExpireAt != e.ExpireAt || string(x.Value) != string(e.Value) {
					t.Fatalf("%q exported as %+v, stored %+v", e.Key, e.Entry, x)
				}
			}
			if len(page) == 0 || len(page) > 1 && size > maxBytes {
				t.Fatalf("maxBytes %d: a page of %d entries, %d bytes", maxBytes, len(page), size)
			}
			if last {
				break
			}
			if rest := want[len(got)]; size+len(rest)+len(f.mustLookup(t, rest)) <= maxBytes {
				t.Fatalf("maxBytes %d: the page stopped at %d bytes before %q", maxBytes, size, rest)
			}
			after = page[len(page)-1].Key
		}
		if !slices.Equal(got, want) {
			t.Fatalf("maxBytes %d: %d keys in %d pages, not the range's in key order", maxBytes, len(got), pages)
		}
	}
	// Resuming after any key, present or not, gives what follows it.
	page, last, _ := f.Export(hr, 2, "k249x", 1<<20)
	if !last || len(page) != 250 || page[0].Key != "k250" {
		t.Fatalf("after k249x: %d entries from %q, last %v", len(page), page[0].Key, last)
	}
	if page, last, _ := f.Export(hr, 2, "k499", 1); len(page) != 0 || !last {
		t.Fatalf("after the last key: %v %v", page, last)
	}
	// Expired entries are copied too: the content depends on the freeze
	// index alone.
	if page, _, _ := f.Export(hr, 2, "", 1<<30); len(page) != 500 {
		t.Fatalf("%d entries", len(page))
	}
}

func (f *FSM) mustLookup(t *testing.T, key string) []byte {
	e, found, err := f.LookupMode(hr, key, ReadIndexed)
	if !found || err != nil {
		t.Fatalf("%q: %v %v", key, found, err)
	}
	return e.Value
}

func TestRangeTally(t *testing.T) {
	f := sourceOwning(t)
	d, n := f.RangeDigest(hr)
	if tl := f.RangeTally(hr); tl != (Tally{Count: int64(n), Bytes: 5, Digest: d}) || n != 2 {
		t.Fatalf("tally %+v, digest %x/%d", tl, d, n)
	}
	if tl := f.RangeTally(3); tl != (Tally{}) {
		t.Fatalf("unknown range: %+v", tl)
	}
}

// handoffGroups is a source with range hr (a mix of entries with and
// without TTLs, some expiring during the handoff) and an empty target,
// with the commands of the whole handoff for each, the source's commit
// (Release) or abort (Unfreeze) verdict, and the target's matching
// Activate or Abort.
type handoffGroups struct {
	source, target       *FSM
	sourceCmds, copyCmds []*fsmpb.Command // Freeze; Incoming and the chunks
	frozen               Tally
}

// The reference freezes at epoch+at, after sweeping what expired by then.
func newHandoffGroups(t *testing.T, opts Options, entries, maxBytes int, at time.Duration) handoffGroups {
	s := sourceLike(t, opts, entries)
	// A reference copy of the source, frozen, gives the chunks.
	ref := owning(t, opts, hr, 2)
	for i := 0; i < entries; i++ {
		ttl := time.Duration(i%4) * time.Minute
		mustStep(t, ref, SetOp(hr, fmt.Sprint("key", i), []byte(fmt.Sprint("value", i)), ttl))
	}
	rec := *stepAt(t, ref, at, FreezeOp(hr, 1, dst)).Record
	cmds := append([]*fsmpb.Command{IncomingOp(hr, 2, src, rec.Count, rec.Bytes)}, exportAll(t, ref, hr, 2, maxBytes)...)
	return handoffGroups{source: s, target: New(opts), sourceCmds: []*fsmpb.Command{FreezeOp(hr, 1, dst)},
		copyCmds: cmds, frozen: ref.RangeTally(hr)}
}

func TestHandoffCommitMovesTheRange(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 200, 512, 0)
	s, tg := g.source, g.target
	sourceUsed := s.Used()
	mustStep(t, s, g.sourceCmds[0])
	if tl := s.RangeTally(hr); tl != g.frozen {
		t.Fatalf("frozen %+v, reference %+v", tl, g.frozen)
	}
	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	if tg.Range(hr).State != Sealed || tg.RangeTally(hr) != g.frozen || tg.Used() != g.frozen.Bytes || tg.Len() != 200 {
		t.Fatalf("target %+v, tally %+v, used %d", tg.Range(hr), tg.RangeTally(hr), tg.Used())
	}
	mustStep(t, s, ReleaseOp(hr, 2))
	if s.Used() != sourceUsed-g.frozen.Bytes || s.Len() != 1 || s.RangeUsed(hr) != 0 {
		t.Fatalf("source after Release: used %d len %d", s.Used(), s.Len())
	}
	mustStep(t, tg, ActivateOp(hr, 2))
	if d, n := tg.RangeDigest(hr); d != g.frozen.Digest || n != 200 || !slices.Equal(tg.OwnedRanges(), []int{hr}) {
		t.Fatalf("target digest %x/%d, owned %v", d, n, tg.OwnedRanges())
	}
	if got := s.RangesIn(Gone); !slices.Equal(got, []int{hr}) || !slices.Equal(s.OwnedRanges(), []int{2}) {
		t.Fatalf("source gone %v owned %v", got, s.OwnedRanges())
	}
	if v, version, ok := get(t, tg, hr, "key0", now(0)); !ok || string(v) != "value0" || version != v1(1) {
		t.Fatalf("key0 on the target: %q@%d %v", v, version, ok)
	}
	// The target takes writes, with versions above every moved one: a new
	// ownership epoch, its sequence starting over.
	if r := mustStep(t, tg, SetOp(hr, "key0", []byte("new"), 0)); r.Version <= v1(200) || VersionEpoch(r.Version) != 3 || VersionSeq(r.Version) != 1 {
		t.Fatalf("first write on the target: version %x, moved versions up to %x", r.Version, v1(200))
	}
	// A snapshot carries the sequence: a restored replica stamps the
	// same next version.
	r2 := roundTrip(t, tg, Options{Ranges: 4})
	a := mustStep(t, tg, SetOp(hr, "key1", []byte("x"), 0))
	if b := mustStep(t, r2, SetOp(hr, "key1", []byte("x"), 0)); a.Version != b.Version || VersionSeq(a.Version) != 2 {
		t.Fatalf("after a snapshot: version %x, the original's %x", b.Version, a.Version)
	}
}

// Memory: a range in flight is held (Used, Len) but charged to neither
// group's limit; Release and Abort free it; Activate and Unfreeze charge it
// with the share the range brings.
func TestHandoffMemoryAccounting(t *testing.T) {
	opts := Options{Ranges: 4, MemoryLimit: 4000} // 1000 bytes per range
	g := newHandoffGroups(t, opts, 40, 128, 0)
	s, tg := g.source, g.target
	moving := g.frozen.Bytes
	if moving < 300 || moving > 1000 {
		t.Fatalf("the range holds %d bytes", moving)
	}
	check := func(f *FSM, name string, used, ownedUsed, limit int64) {
		t.Helper()
		if f.Used() != used || f.ownedUsed != ownedUsed || f.limit != limit {
			t.Fatalf("%s: used %d owned %d limit %d, want %d %d %d", name, f.Used(), f.ownedUsed, f.limit, used, ownedUsed, limit)
		}
	}
	other := int64(len("other") + len("range"))
	check(s, "source", moving+other, moving+other, 2000)
	mustStep(t, s, g.sourceCmds[0])
	check(s, "source frozen", moving+other, other, 1000)
	// Range 2 may use its whole share while hr is frozen.
	if r := step(t, s, SetOp(2, "big", make([]byte, 1000-other-3), 0)); r.Err != nil {
		t.Fatalf("write at the share: %v", r.Err)
	}
	if r := step(t, s, SetOp(2, "x", nil, 0)); r.Err != ErrMemoryLimit {
		t.Fatalf("write over the share: %v", r.Err)
	}
	check(s, "source frozen, range 2 full", moving+1000, 1000, 1000)

	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	check(tg, "target sealed", moving, 0, 0)
	mustStep(t, tg, ActivateOp(hr, 2))
	check(tg, "target owned", moving, moving, 1000)
	mustStep(t, s, ReleaseOp(hr, 2))
	check(s, "source gone", 1000, 1000, 1000)

	// The abort path: the target frees its copy, the source takes the range back.
	g = newHandoffGroups(t, opts, 40, 128, 0)
	s, tg = g.source, g.target
	mustStep(t, s, g.sourceCmds[0])
	for _, c := range g.copyCmds[:3] {
		mustStep(t, tg, c)
	}
	if tg.Used() == 0 || tg.Len() == 0 {
		t.Fatal("nothing staged")
	}
	mustStep(t, tg, AbortOp(hr, 2))
	check(tg, "target aborted", 0, 0, 0)
	if tg.Len() != 0 {
		t.Fatalf("len %d", tg.Len())
	}
	mustStep(t, s, UnfreezeOp(hr, 2))
	check(s, "source unfrozen", moving+other, moving+other, 2000)
}

// Only Owned ranges are swept: a Frozen range's entries outlive their
// deadlines until Unfreeze; an Activated range's TTLs fire.
func TestHandoffExpiry(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 40, 256, 0)
	s, tg := g.source, g.target
	mustStep(t, s, g.sourceCmds[0])
	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	mustStep(t, tg, ActivateOp(hr, 2))
	// An hour later every TTL (1 to 3 minutes) has passed.
	late := time.Hour
	stepAt(t, s, late, DeleteOp(2, "none"))
	if s.RangeUsed(hr) != g.frozen.Bytes || s.Len() != 41 {
		t.Fatalf("the frozen range was swept: used %d len %d", s.RangeUsed(hr), s.Len())
	}
	stepAt(t, tg, late, DeleteOp(hr, "none"))
	if tg.Len() != 10 { // keys 0, 4, 8, ...: no TTL
		t.Fatalf("activated range: %d entries left, want 10", tg.Len())
	}
	if len(tg.due) != 0 {
		t.Fatalf("%d ranges queued", len(tg.due))
	}
	stepAt(t, s, late, UnfreezeOp(hr, 2))
	stepAt(t, s, late, DeleteOp(2, "none"))
	if s.Len() != 11 {
		t.Fatalf("unfrozen range: %d entries left, want 10 and range 2's", s.Len())
	}
}

func TestHandoffSnapshotInEveryState(t *testing.T) {
	fixtures, chunks := handoffFixtures(t)
	for state, build := range fixtures {
		f := build()
		// Another range with a TTL, to see the due heap rebuilt.
		mustStep(t, f, GenesisOp([]int{3}))
		mustStep(t, f, SetOp(3, "t", []byte("x"), time.Minute))
		g := roundTrip(t, f, Options{Ranges: 4})
		check := func(when string) {
			t.Helper()
			if dump(f) != dump(g) || f.Used() != g.Used() || f.Len() != g.Len() || f.RangeTally(hr) != g.RangeTally(hr) ||
				f.owned != g.owned || f.ownedUsed != g.ownedUsed || f.limit != g.limit || len(f.due) != len(g.due) {
				t.Fatalf("%s, %s: restore differs\n%s\n%s", state, when, dump(f), dump(g))
			}
		}
		check("restored")
		if f.Range(hr) != g.Range(hr) {
			t.Fatalf("%s: record %+v restored as %+v", state, f.Range(hr), g.Range(hr))
		}
		// The handoff resumes identically on the restored replica.
		for _, cmd := range []*fsmpb.Command{chunks[0], chunks[1], ReleaseOp(hr, 2), ActivateOp(hr, 2), SetOp(hr, "c", nil, 0)} {
			l := logAt(t, f.Applied()+1, 2*time.Minute, cmd)
			f.Apply(l)
			g.Apply(l)
		}
		check("resumed")
	}
}

func TestRestoreValidatesHandoffRecords(t *testing.T) {
	a := newEntry([]byte("a"), []byte("1"), 2, 0)
	var buf []byte
	da, _ := entryDigest(a, buf)
	gotA := Tally{Count: 1, Bytes: 2, Digest: da}
	for _, c := range []struct {
		name string
		sr   snapRange
		ok   bool
	}{
		{"frozen", snapRange{rec: RangeRecord{State: Frozen, Epoch: 2, Peer: 9, FreezeIndex: 5, Count: 1, Bytes: 2}, entries: []entry{a}}, true},
		{"frozen holding more than it froze", snapRange{rec: RangeRecord{State: Frozen, Epoch: 2, Count: 0, Bytes: 0}, entries: []entry{a}}, false},
		{"frozen with a cursor", snapRange{rec: RangeRecord{State: Frozen, Epoch: 2, Cursor: "a"}}, false},
		{"gone", snapRange{rec: RangeRecord{State: Gone, Epoch: 3, Peer: 9}}, true},
		{"gone with entries", snapRange{rec: RangeRecord{State: Gone, Epoch: 3}, entries: []entry{a}}, false},
		{"gone with a freeze index", snapRange{rec: RangeRecord{State: Gone, Epoch: 3, FreezeIndex: 4}}, false},
		{"owned with a peer", snapRange{rec: RangeRecord{State: Owned, Epoch: 3, Peer: 9}}, false},
		{"absent with a count", snapRange{rec: RangeRecord{State: Absent, Epoch: 3, Count: 1}}, false},
		{"incoming", snapRange{rec: RangeRecord{State: Incoming, Epoch: 2, Peer: 7, Count: 5, Bytes: 9, Cursor: "a", Got: gotA}, entries: []entry{a}}, true},
		{"incoming with another digest", snapRange{rec: RangeRecord{State: Incoming, Epoch: 2, Cursor: "a", Got: Tally{1, 2, da + 1}}, entries: []entry{a}}, false},
		{"incoming with a freeze index", snapRange{rec: RangeRecord{State: Incoming, Epoch: 2, FreezeIndex: 1}}, false},
		{"sealed", snapRange{rec: RangeRecord{State: Sealed, Epoch: 2, Count: 1, Bytes: 2, Cursor: "a", Got: gotA}, entries: []entry{a}}, true},
		{"sealed short of the announced size", snapRange{rec: RangeRecord{State: Sealed, Epoch: 2, Count: 2, Bytes: 4, Cursor: "a", Got: gotA}, entries: []entry{a}}, false},
		{"unknown state", snapRange{rec: RangeRecord{State: Sealed + 1}}, false},
	} {
		c.sr.num = 1
		var b bytes.Buffer
		if _, err := (&snapshot{applied: 9, ranges: []snapRange{c.sr}}).WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		g := New(Options{Ranges: 4})
		err := g.Restore(io.NopCloser(&b))
		if (err == nil) != c.ok {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.ok && g.Range(1) != c.sr.rec {
			t.Fatalf("%s: restored %+v", c.name, g.Range(1))
		}
	}
}

func TestRangeStateFillsCacheLines(t *testing.T) {
	if n := unsafe.Sizeof(rangeState{}); n%64 != 0 {
		t.Fatalf("rangeState is %d bytes: adjust its padding", n)
	}
}

// I5 and I4: each group applies its half of a handoff with its commands
// duplicated and reordered at random. A command that comes before its
// predecessor fails and changes nothing (its driver proposes it again), so
// the outcome is the clean run of the longest prefix of the protocol's
// order that the scrambled log contains in order; on the target, an Abort
// anywhere leaves Absent(h). Two replicas of each group, one restored from
// a snapshot taken at a random point, end identical, and the pair of
// outcomes is one the protocol allows.
func TestHandoffReorderedAndDuplicated(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	opts := Options{Ranges: 4, MemoryLimit: 1 << 20}
	for trial := 0; trial < 400; trial++ {
		commit := rng.IntN(2) == 0
		at := time.Duration(rng.IntN(3)) * time.Minute // TTLs are 0 to 3 minutes
		g := newHandoffGroups(t, opts, 1+rng.IntN(30), 1+rng.IntN(200), at)
		sourceClean := append([]*fsmpb.Command(nil), g.sourceCmds...)
		targetClean := append([]*fsmpb.Command(nil), g.copyCmds...)
		if commit {
			sourceClean = append(sourceClean, ReleaseOp(hr, 2))
			targetClean = append(targetClean, ActivateOp(hr, 2))
		} else {
			sourceClean = append(sourceClean, UnfreezeOp(hr, 2))
			targetClean = append(targetClean, AbortOp(hr, 2))
		}
		outcome := func(name string, fresh func() *FSM, clean []*fsmpb.Command, abortWins bool) *FSM {
			seq := scramble(rng, clean)
			a, b := fresh(), fresh()
			start := a.Applied()
			cut := rng.IntN(len(seq) + 1)
			for i, cmd := range seq {
				if i == cut {
					b = roundTrip(t, b, opts)
				}
				l := logAt(t, start+uint64(i)+1, at, cmd)
				a.Apply(l)
				b.Apply(l)
			}
			if cut == len(seq) {
				b = roundTrip(t, b, opts)
			}
			// The expected outcome: the clean commands matched in order,
			// each at the index it was applied at.
			want := fresh()
			if abortWins {
				want.Apply(logAt(t, start+1, at, clean[len(clean)-1]))
			} else {
				next := 0
				for i, cmd := range seq {
					if next < len(clean) && cmd == clean[next] {
						want.Apply(logAt(t, start+uint64(i)+1, at, cmd))
						next++
					}
				}
			}
			tick := logAt(t, start+uint64(len(seq))+1, time.Hour, DeleteOp(2, "none"))
			for _, f := range []*FSM{a, b, want} {
				f.Apply(tick)
			}
			for _, f := range []*FSM{b, want} {
				if dump(f) != dump(a) || f.Used() != a.Used() || f.Len() != a.Len() ||
					f.ownedUsed != a.ownedUsed || f.limit != a.limit || len(f.due) != len(a.due) {
					t.Fatalf("trial %d, %s, commit %v, cut %d: replicas or the clean run differ\n%s\n%s\n%s",
						trial, name, commit, cut, dump(a), dump(b), dump(want))
				}
			}
			return a
		}
		// The source: fresh copies built like g.source.
		n := g.source.Len() - 1
		s := outcome("source", func() *FSM { return sourceLike(t, opts, n) }, sourceClean, false)
		tg := outcome("target", func() *FSM { return New(opts) }, targetClean, !commit)

		sr, tr := s.Range(hr), tg.Range(hr)
		frozenNow := s.RangeTally(hr) == g.frozen // at the source, the data outlives the TTLs only while Frozen
		switch {
		case commit && sr.State == Frozen && frozenNow, commit && sr == (RangeRecord{State: Gone, Epoch: 3, Peer: dst}) && s.RangeUsed(hr) == 0:
		case !commit && sr.State == Frozen && frozenNow, !commit && sr == (RangeRecord{State: Owned, Epoch: 3}):
		default:
			t.Fatalf("trial %d, commit %v: source ends %+v, tally %+v of %+v", trial, commit, sr, s.RangeTally(hr), g.frozen)
		}
		switch {
		case commit && tr.State == Incoming && tr.Epoch == 2 && tg.RangeTally(hr) == tr.Got:
		case commit && tr.State == Sealed && tr.Epoch == 2 && tg.RangeTally(hr) == g.frozen:
		case commit && tr == (RangeRecord{State: Owned, Epoch: 3}):
		case !commit && tr == (RangeRecord{State: Absent, Epoch: 2}) && tg.Len() == 0:
		default:
			t.Fatalf("trial %d, commit %v: target ends %+v", trial, commit, tr)
		}
		if sr.State == Owned && tr.State == Owned {
			t.Fatalf("trial %d: both groups own the range at %d and %d", trial, sr.Epoch, tr.Epoch)
		}
	}
}

// sourceLike is a source owning ranges hr and 2: n entries in hr with
// TTLs of 0 to 3 minutes, and one in range 2.
func sourceLike(t *testing.T, opts Options, n int) *FSM {
	s := owning(t, opts, hr, 2)
	for i := 0; i < n; i++ {
		mustStep(t, s, SetOp(hr, fmt.Sprint("key", i), []byte(fmt.Sprint("value", i)), time.Duration(i%4)*time.Minute))
	}
	mustStep(t, s, SetOp(2, "other", []byte("range"), 0))
	return s
}

// scramble returns clean's commands, each at least once and some twice or
// three times, in a random order.
func scramble(rng *rand.Rand, clean []*fsmpb.Command) []*fsmpb.Command {
	seq := append([]*fsmpb.Command(nil), clean...)
	for i := rng.IntN(len(clean) + 1); i > 0; i-- {
		seq = append(seq, clean[rng.IntN(len(clean))])
	}
	// Mostly small displacements (a late or early message), sometimes a
	// full shuffle.
	if rng.IntN(4) == 0 {
		rng.Shuffle(len(seq), func(i, j int) { seq[i], seq[j] = seq[j], seq[i] })
		return seq
	}
	for i := rng.IntN(4); i > 0; i-- {
		j, k := rng.IntN(len(seq)), rng.IntN(len(seq))
		seq[j], seq[k] = seq[k], seq[j]
	}
	return seq
}
