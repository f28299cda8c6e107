package fsm

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// kinds renders a page's events as "kind key=value@seq" lines.
func kinds(p EventPage) []string {
	var out []string
	for _, e := range p.Events {
		out = append(out, fmt.Sprintf("%d %s=%s@%d", e.Kind, e.Key, e.Value, VersionSeq(e.Version)))
	}
	return out
}

func mustEvents(t *testing.T, f *FSM, r int, after uint64, max int) EventPage {
	t.Helper()
	p, err := f.Events(r, after, max, 1<<20)
	if err != nil {
		t.Fatalf("Events(%d, %x): %v", r, after, err)
	}
	return p
}

// Every change of a range is in its history, in version order, with the
// change's own version; a write that changes nothing leaves no event.
func TestHistoryRecordsChanges(t *testing.T) {
	f := owning(t, Options{}, r0)
	head, err := f.HistoryHead(r0)
	if err != nil || head != 0 { // no write in the ownership yet: the floor it began at
		t.Fatalf("head %x %v", head, err)
	}
	mustStep(t, f, SetOp(r0, "a", []byte("1"), 0))
	mustStep(t, f, CASOp(r0, "a", []byte("x"), []byte("2"), 0)) // no match: no event
	mustStep(t, f, CASOp(r0, "a", []byte("1"), []byte("2"), 0))
	mustStep(t, f, IncrOp(r0, "n", 5))
	mustStep(t, f, DeleteOp(r0, "missing")) // nothing to delete: no event
	mustStep(t, f, CADOp(r0, "a", []byte("2")))
	mustStep(t, f, SetOp(r0, "t", []byte("x"), time.Second))
	stepAt(t, f, 2*time.Second, SetOp(r0, "b", []byte("y"), 0)) // sweeps t first
	want := []string{"1 a=1@1", "1 a=2@2", "1 n=5@3", "2 a=@4", "1 t=x@5", "3 t=@6", "1 b=y@7"}
	p := mustEvents(t, f, r0, 0, 100)
	if got := kinds(p); fmt.Sprint(got) != fmt.Sprint(want) || p.More || p.Closed || p.Next != v1(7) {
		t.Fatalf("events %v next %x more %v closed %v\nwant %v", got, p.Next, p.More, p.Closed, want)
	}
	if p.Events[4].ExpireAt != now(time.Second) {
		t.Fatalf("t's expiry %d", p.Events[4].ExpireAt)
	}
	// Paging: after a version, at most max.
	p = mustEvents(t, f, r0, v1(2), 2)
	if got := kinds(p); fmt.Sprint(got) != "[1 n=5@3 2 a=@4]" || !p.More || p.Next != v1(4) {
		t.Fatalf("page %v next %x more %v", got, p.Next, p.More)
	}
	if head, _ := f.HistoryHead(r0); head != v1(7) {
		t.Fatalf("head %x, want the last write's", head)
	}
	if _, err := f.Events(5, 0, 10, 1<<20); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("a range not here: %v", err)
	}
}

// The group keeps at most Options.History events; asking for what was
// evicted is ErrCompacted.
func TestHistoryEviction(t *testing.T) {
	f := owning(t, Options{History: 4}, 0, 1)
	for i := 0; i < 3; i++ {
		mustStep(t, f, SetOp(0, "a", []byte{byte('0' + i)}, 0))
		mustStep(t, f, SetOp(1, "b", []byte{byte('0' + i)}, 0))
	}
	// Six events, four kept: range 0 lost a@1, range 1 lost b@1.
	if _, err := f.Events(0, 0, 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("evicted: %v", err)
	}
	if p := mustEvents(t, f, 0, v1(1), 10); len(p.Events) != 2 {
		t.Fatalf("range 0 after its evicted event: %v", kinds(p))
	}
	if p := mustEvents(t, f, 1, v1(1), 10); len(p.Events) != 2 {
		t.Fatalf("range 1: %v", kinds(p))
	}
	// A byte budget: 10 bytes of keys and values hold the last two of
	// these 4-byte events (key "a" or "b", 3-byte values).
	small := owning(t, Options{HistoryBytes: 10}, 0)
	for i := 0; i < 4; i++ {
		mustStep(t, small, SetOp(0, "a", []byte{'v', '0', byte('0' + i)}, 0))
	}
	if _, err := small.Events(0, v1(1), 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("evicted by bytes: %v", err)
	}
	if p := mustEvents(t, small, 0, v1(2), 10); fmt.Sprint(kinds(p)) != "[1 a=v02@3 1 a=v03@4]" {
		t.Fatalf("kept by bytes: %v", kinds(p))
	}
	// A page stops at its byte budget, after at least one event.
	if p, err := small.Events(0, v1(2), 10, 1); err != nil || len(p.Events) != 1 || !p.More {
		t.Fatalf("page of 1 byte: %v %+v %v", kinds(p), p, err)
	}
	none := owning(t, Options{History: -1}, 0)
	mustStep(t, none, SetOp(0, "a", []byte("1"), 0))
	if _, err := none.Events(0, 0, 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("no history kept: %v", err)
	}
}

// A moving range: the source's history ends Closed at the handoff's epoch,
// the target's starts there, and every write of the target is above it.
func TestHistoryAcrossHandoff(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 20, 1<<10, 0)
	s, tg := g.source, g.target
	before, _ := s.HistoryHead(hr)
	mustStep(t, s, g.sourceCmds[0]) // Freeze(hr, 1, dst)
	p := mustEvents(t, s, hr, before, 100)
	closed, _ := MakeVersion(2, 0)
	if len(p.Events) != 0 || !p.Closed || p.Gone || p.Next != closed {
		t.Fatalf("frozen: %+v", p)
	}
	if head, _ := s.HistoryHead(hr); head != closed {
		t.Fatalf("frozen head %x", head)
	}
	// The last writes before the freeze are still there to drain.
	if p := mustEvents(t, s, hr, before-1, 100); len(p.Events) != 1 || !p.Closed || p.Next != closed {
		t.Fatalf("drain: %v %+v", kinds(p), p)
	}
	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	if _, err := tg.Events(hr, closed, 10, 1<<20); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("sealed target: %v", err)
	}
	mustStep(t, s, ReleaseOp(hr, 2))
	if p := mustEvents(t, s, hr, before, 100); !p.Closed || !p.Gone || p.Peer != dst || p.Next != closed {
		t.Fatalf("gone: %+v", p)
	}
	mustStep(t, tg, ActivateOp(hr, 2))
	if _, err := tg.Events(hr, before, 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("target asked for the source's writes: %v", err)
	}
	w := mustStep(t, tg, SetOp(hr, "key0", []byte("new"), 0))
	p = mustEvents(t, tg, hr, closed, 10)
	if len(p.Events) != 1 || p.Events[0].Version != w.Version || w.Version <= closed {
		t.Fatalf("target: %v, write %x", kinds(p), w.Version)
	}
}

// Unfreeze: the source's history goes on from the freeze.
func TestHistoryAfterUnfreeze(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 5, 1<<10, 0)
	s := g.source
	before, _ := s.HistoryHead(hr)
	mustStep(t, s, g.sourceCmds[0])
	mustStep(t, s, UnfreezeOp(hr, 2))
	w := mustStep(t, s, SetOp(hr, "key0", []byte("again"), 0))
	p := mustEvents(t, s, hr, before, 10)
	if len(p.Events) != 1 || p.Events[0].Version != w.Version || p.Closed {
		t.Fatalf("after unfreeze: %v %+v", kinds(p), p)
	}
}

// A replica restored from a snapshot taken before the first write of a
// moved-in range serves the range's history from the handoff's floor.
func TestHistoryRestoredBeforeFirstWrite(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 5, 1<<10, 0)
	tg := g.target
	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	mustStep(t, tg, ActivateOp(hr, 2))
	r := roundTrip(t, tg, Options{Ranges: 4})
	floor, _ := MakeVersion(2, 0)
	if head, _ := r.HistoryHead(hr); head != floor {
		t.Fatalf("restored head %x, want the floor %x", head, floor)
	}
	w := mustStep(t, r, SetOp(hr, "key0", []byte("x"), 0))
	if p := mustEvents(t, r, hr, floor, 10); len(p.Events) != 1 || p.Events[0].Version != w.Version {
		t.Fatalf("from the floor: %v", kinds(p))
	}
}

// A restored replica's history starts at the snapshot.
func TestHistoryAfterRestore(t *testing.T) {
	f := owning(t, Options{}, r0)
	mustStep(t, f, SetOp(r0, "a", []byte("1"), 0))
	mustStep(t, f, SetOp(r0, "a", []byte("2"), 0))
	r := roundTrip(t, f, Options{})
	if _, err := r.Events(r0, v1(1), 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("before the snapshot: %v", err)
	}
	head, _ := r.HistoryHead(r0)
	if head != v1(2) {
		t.Fatalf("restored head %x", head)
	}
	mustStep(t, r, SetOp(r0, "a", []byte("3"), 0))
	if p := mustEvents(t, r, r0, head, 10); fmt.Sprint(kinds(p)) != "[1 a=3@3]" {
		t.Fatalf("after the snapshot: %v", kinds(p))
	}
}

// A Sweep removes what expired, recording EventExpire, and nothing else;
// NextExpiry tracks the earliest deadline.
func TestSweepAndNextExpiry(t *testing.T) {
	f := owning(t, Options{}, r0)
	if f.NextExpiry() != 0 {
		t.Fatalf("next expiry %d with no TTL", f.NextExpiry())
	}
	mustStep(t, f, SetOp(r0, "t", []byte("x"), time.Second))
	if f.NextExpiry() != now(time.Second) {
		t.Fatalf("next expiry %d, want %d", f.NextExpiry(), now(time.Second))
	}
	l := logAt(t, f.Applied()+1, 2*time.Second, nil)
	l.Data = AppendSweep(nil)
	if rs, ok := f.Apply(l).([]Result); !ok || len(rs) != 0 {
		t.Fatalf("sweep answered %#v", rs)
	}
	if f.NextExpiry() != 0 || f.Len() != 0 {
		t.Fatalf("after the sweep: next expiry %d, %d entries", f.NextExpiry(), f.Len())
	}
	if p := mustEvents(t, f, r0, 0, 10); fmt.Sprint(kinds(p)) != "[1 t=x@1 3 t=@2]" {
		t.Fatalf("events %v", kinds(p))
	}
}

// A range that leaves and comes back: the group's history keeps both
// stays, and a reader positioned in the first, or between the two, is
// sent where the range went in between, never given the second stay's
// changes early.
func TestHistoryRangeComesBack(t *testing.T) {
	g := newHandoffGroups(t, Options{Ranges: 4}, 5, 1<<10, 0)
	s, tg := g.source, g.target
	mustStep(t, s, SetOp(hr, "key0", []byte("first"), 0))
	inFirst, _ := s.HistoryHead(hr)
	mustStep(t, s, SetOp(hr, "key0", []byte("last"), 0))
	// Away to tg: S Frozen(2), Gone(3); tg Owned(3).
	mustStep(t, s, g.sourceCmds[0])
	for _, c := range g.copyCmds {
		mustStep(t, tg, c)
	}
	mustStep(t, s, ReleaseOp(hr, 2))
	mustStep(t, tg, ActivateOp(hr, 2))
	mustStep(t, tg, SetOp(hr, "key0", []byte("away"), 0))
	// And back: tg Frozen(4), S Incoming(4), Owned(5).
	rec := mustStep(t, tg, FreezeOp(hr, 3, src)).Record
	mustStep(t, s, IncomingOp(hr, 4, dst, rec.Count, rec.Bytes))
	for _, c := range exportAll(t, tg, hr, 4, 1<<10) {
		mustStep(t, s, c)
	}
	mustStep(t, tg, ReleaseOp(hr, 4))
	mustStep(t, s, ActivateOp(hr, 4))
	back := mustStep(t, s, SetOp(hr, "key0", []byte("back"), 0))

	closed1, _ := MakeVersion(2, 0)
	floor2, _ := MakeVersion(4, 0)
	// In the first stay: its last change, then the way out.
	p := mustEvents(t, s, hr, inFirst, 10)
	if fmt.Sprint(kinds(p)) != "[1 key0=last@7]" || !p.Closed || !p.Gone || p.Peer != dst || p.Next != closed1 {
		t.Fatalf("from the first stay: %v %+v", kinds(p), p)
	}
	// At the first stay's end, and between the stays: the way out again.
	for _, at := range []uint64{closed1, floor2 - 1} {
		if p := mustEvents(t, s, hr, at, 10); len(p.Events) != 0 || !p.Gone || p.Peer != dst || p.Next != at {
			t.Fatalf("from %x: %v %+v", at, kinds(p), p)
		}
	}
	// There, the changes made away, then back here.
	p = mustEvents(t, tg, hr, closed1, 10)
	if fmt.Sprint(kinds(p)) != "[1 key0=away@1]" || !p.Gone || p.Peer != src || p.Next != floor2 {
		t.Fatalf("away: %v %+v", kinds(p), p)
	}
	p = mustEvents(t, s, hr, floor2, 10)
	if len(p.Events) != 1 || p.Events[0].Version != back.Version || p.Closed {
		t.Fatalf("the second stay: %v %+v", kinds(p), p)
	}
}
