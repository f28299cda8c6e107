package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testutil"
)

// nextEvent waits for w's next event that is not EventProgress.
func nextEvent(t *testing.T, w *Watcher, within time.Duration) Event {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case e, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended: %v", w.Err())
			}
			if e.Kind == EventProgress {
				continue
			}
			return e
		case <-timeout:
			t.Fatalf("no event within %v", within)
		}
	}
}

func describe(e Event) string {
	return fmt.Sprintf("%v %s=%s", e.Kind, e.Key, e.Value)
}

// A watch sees every change to its prefix after it started, per key in
// commit order with growing versions, and nothing else.
func TestWatch(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := nodes[0].Set(ctx, "p/before", []byte("0")); err != nil {
		t.Fatal(err)
	}
	w, err := nodes[1].Watch(ctx, "p/")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := w.Start()
	if len(start) != nodes[1].cfg.Ranges {
		t.Fatalf("start cursor names %d ranges", len(start))
	}
	steps := []struct {
		do   func() error
		want string
	}{
		{func() error { return nodes[0].Set(ctx, "q/other", []byte("x")) }, ""},
		{func() error { return nodes[2].Set(ctx, "p/a", []byte("1")) }, "set p/a=1"},
		{func() error { _, err := nodes[0].Incr(ctx, "p/n", 5); return err }, "set p/n=5"},
		{func() error { return nodes[1].Set(ctx, "p/a", []byte("2"), WithTTL(time.Hour)) }, "set p/a=2"},
		{func() error { _, err := nodes[0].CompareAndDelete(ctx, "p/a", []byte("2")); return err }, "delete p/a="},
		{func() error { return nodes[0].Delete(ctx, "p/absent") }, ""},
		{func() error { return nodes[2].Delete(ctx, "p/n") }, "delete p/n="},
	}
	// Per key, in order (keys of different ranges are not ordered).
	wants := map[string][]string{}
	n := 0
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatal(err)
		}
		if s.want != "" {
			key := strings.Fields(strings.Split(s.want, "=")[0])[1]
			wants[key] = append(wants[key], s.want)
			n++
		}
	}
	got := map[string][]string{}
	last := map[string]uint64{}
	for i := 0; i < n; i++ {
		e := nextEvent(t, w, 10*time.Second)
		got[e.Key] = append(got[e.Key], describe(e))
		if e.Version <= last[e.Key] || e.Version <= start[e.Range] {
			t.Fatalf("%q: version %x after %x (start %x)", describe(e), e.Version, last[e.Key], start[e.Range])
		}
		last[e.Key] = e.Version
		if loc, _ := nodes[0].Locate(e.Key); loc.Range != e.Range {
			t.Fatalf("%q: range %d, the key's is %d", describe(e), e.Range, loc.Range)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(wants) {
		t.Fatalf("events %v\nwant %v", got, wants)
	}
	select {
	case e := <-w.Events():
		t.Fatalf("unexpected event %q", describe(e))
	case <-time.After(200 * time.Millisecond):
	}

	// A key that expires: its event comes though nothing else is written
	// (the group's leader logs a sweep once the expiry has passed).
	if err := nodes[0].Set(ctx, "p/ttl", []byte("x"), WithTTL(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, w, 10*time.Second); describe(e) != "set p/ttl=x" || e.ExpireAt.IsZero() {
		t.Fatalf("ttl set: %q %v", describe(e), e.ExpireAt)
	}
	if e := nextEvent(t, w, 10*time.Second); describe(e) != "expire p/ttl=" {
		t.Fatalf("event %q, want the expiry", describe(e))
	}
	w.Close()
	if _, ok := <-w.Events(); ok || !errors.Is(w.Err(), ErrClosed) {
		t.Fatalf("after Close: %v", w.Err())
	}
}

// A watch follows a range that moves between groups and a group whose
// leader changes; resumed from a cursor it picks up exactly where it was;
// one whose history is gone ends with ErrCompacted; a slow one is cut off.
func TestWatchAcrossMovesAndLeaders(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1})
	for _, db := range nodes {
		db.handoffTimeout.Store(int64(3 * time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	lay := nodes[0].lay.Load()
	const r = 5
	keys := keysIn("m/", r, nodes[0].cfg.Ranges, 2)
	k := keys[0]
	w, err := nodes[2].Watch(ctx, "m/")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cur := w.Start()
	expect := func(want string) Event {
		t.Helper()
		e := nextEvent(t, w, 15*time.Second)
		if describe(e) != want {
			t.Fatalf("event %q, want %q", describe(e), want)
		}
		if e.Version <= cur[e.Range] {
			t.Fatalf("%q: version %x not above %x", want, e.Version, cur[e.Range])
		}
		cur.Advance(e)
		return e
	}
	if err := nodes[0].Set(ctx, k, []byte("1")); err != nil {
		t.Fatal(err)
	}
	before := expect("set " + k + "=1")

	from := lay.genesis(r)
	to := (from + 1) % lay.groups
	if err := nodes[1].moveRange(ctx, r, to); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].Set(ctx, k, []byte("2")); err != nil {
		t.Fatal(err)
	}
	// The watch hands on an EventProgress for the range on the way; the
	// cursor takes it.
	progressed := false
	for e := range w.Events() {
		cur.Advance(e)
		if e.Kind == EventProgress {
			progressed = true
			continue
		}
		if describe(e) != "set "+k+"=2" || e.Version <= before.Version {
			t.Fatalf("after the move: %q at %x (before %x)", describe(e), e.Version, before.Version)
		}
		break
	}
	if !progressed {
		t.Fatal("no EventProgress for the moved range")
	}

	// The group's leader changes.
	// A transfer may be refused (no voter heard from lately, a cooldown)
	// or find leadership already moved: it is tried again.
	testutil.Eventually(t, 15*time.Second, "a leadership transfer", func() bool {
		_, p := leaderAmong(nodes, to)
		return p != nil && p.group.TransferLeadership(ctx, "", "") == nil
	})
	if err := nodes[0].Set(ctx, k, []byte("3")); err != nil {
		t.Fatal(err)
	}
	expect("set " + k + "=3")

	// Resume: a new watch from the cursor gets what came after it, only.
	resume := Cursor{}
	for r, v := range cur {
		resume[r] = v
	}
	w.Close()
	if err := nodes[0].Set(ctx, keys[1], []byte("4")); err != nil {
		t.Fatal(err)
	}
	w2, err := nodes[1].Watch(ctx, "m/", WatchFrom(resume))
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if e := nextEvent(t, w2, 15*time.Second); describe(e) != "set "+keys[1]+"=4" {
		t.Fatalf("resumed: %q", describe(e))
	}

	// From before the move: the range's history at its group begins at
	// the move.
	old := Cursor{}
	for r, v := range resume {
		old[r] = v
	}
	old[r] = before.Version - 1
	w3, err := nodes[0].Watch(ctx, "m/", WatchFrom(old))
	if err != nil {
		t.Fatal(err)
	}
	defer w3.Close()
	var kinds []EventKind
	for e := range w3.Events() {
		kinds = append(kinds, e.Kind)
	}
	if !errors.Is(w3.Err(), ErrCompacted) || len(kinds) == 0 || kinds[len(kinds)-1] != EventCompacted {
		t.Fatalf("from before the move: %v, events %v", w3.Err(), kinds)
	}

	// A watcher that does not read is cut off; writes go on.
	w4, err := nodes[0].Watch(ctx, "slow/", WatchBuffer(2))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := nodes[i%3].Set(ctx, fmt.Sprint("slow/", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for w4.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("slow watcher not cut off")
		}
		<-time.After(10 * time.Millisecond)
	}
	if !errors.Is(w4.Err(), ErrLagged) {
		t.Fatalf("slow watcher: %v", w4.Err())
	}
}

// Ending a watch: by ctx, and by the DB closing; bad options.
func TestWatchEnds(t *testing.T) {
	db, err := Open(Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Watch(ctx, "", WatchBuffer(0)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("WatchBuffer(0): %v", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	w1, err := db.Watch(wctx, "")
	if err != nil {
		t.Fatal(err)
	}
	w2, err := db.Watch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, "abc", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*Watcher{w1, w2} {
		if e := nextEvent(t, w, 10*time.Second); describe(e) != "set abc=v" {
			t.Fatalf("event %q", describe(e))
		}
	}
	wcancel()
	for range w1.Events() {
	}
	if !errors.Is(w1.Err(), ErrTimeout) || !errors.Is(w1.Err(), context.Canceled) {
		t.Fatalf("after ctx: %v", w1.Err())
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for range w2.Events() {
	}
	if !errors.Is(w2.Err(), ErrClosed) {
		t.Fatalf("after DB.Close: %v", w2.Err())
	}
	if _, err := db.Watch(ctx, ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
}

// The reqWatch request and answer round-trip, the smallest ones included;
// cut or bad ones are refused.
func TestWatchWire(t *testing.T) {
	asks := []watchAsk{{rng: 0, now: true}, {rng: 1023, after: 1 << 60}}
	req := appendWatchRequest(nil, 1500*time.Millisecond, 256, true, asks)
	wait, max, any, got, err := decodeWatchRequest(req)
	if err != nil || wait != 1500*time.Millisecond || max != 256 || !any || fmt.Sprint(got) != fmt.Sprint(asks) {
		t.Fatalf("request: %v %d %v %v", wait, max, got, err)
	}
	pages := []watchPage{
		{rng: 0}, // the smallest page: 6 bytes
		{rng: 7, flags: pageClosed | pageGone, next: 1 << 50, peer: 3, events: []Event{
			{Kind: EventSet, Key: "k", Value: []byte("v"), Version: 9, ExpireAt: time.Unix(0, 12345), Range: 7},
			{Kind: EventDelete, Key: "k", Version: 10, Range: 7}}},
	}
	var ans []byte
	ans = binary.AppendUvarint(ans, uint64(len(pages)))
	for _, p := range pages {
		ans = appendWatchPage(ans, p)
	}
	back, err := decodeWatchAnswer(ans)
	if err != nil || len(back) != 2 || back[0].rng != 0 || len(back[0].events) != 0 ||
		back[1].next != 1<<50 || back[1].peer != 3 || back[1].flags != pageClosed|pageGone ||
		describe(back[1].events[0]) != "set k=v" || !back[1].events[0].ExpireAt.Equal(time.Unix(0, 12345)) ||
		describe(back[1].events[1]) != "delete k=" || back[1].events[1].Version != 10 {
		t.Fatalf("answer: %+v %v", back, err)
	}
	for i := range ans {
		if _, err := decodeWatchAnswer(ans[:i]); err == nil {
			t.Fatalf("an answer cut at %d of %d bytes decoded", i, len(ans))
		}
	}
	for i := range req {
		if _, _, _, _, err := decodeWatchRequest(req[:i]); err == nil {
			t.Fatalf("a request cut at %d of %d bytes decoded", i, len(req))
		}
	}
	bad := appendWatchPage(binary.AppendUvarint(nil, 1), watchPage{events: []Event{{Kind: EventProgress, Key: "k"}}})
	if _, err := decodeWatchAnswer(bad); err == nil {
		t.Fatal("an event of kind progress off the wire decoded")
	}
}
