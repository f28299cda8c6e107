package gridkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/testutil"
)

// scanAll runs a Scan to its end and returns its entries, or its error.
func scanAll(ctx context.Context, db *DB, prefix string, opts ...ReadOption) ([]Entry, error) {
	var out []Entry
	for e, err := range db.Scan(ctx, prefix, opts...) {
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
	return out, nil
}

// entryKeys is the keys of entries, in their order.
func entryKeys(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Key
	}
	return out
}

// wantKeys is the keys of want with prefix, sorted.
func wantKeys(want map[string]string, prefix string) []string {
	var out []string
	for k := range want {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// checkScan fails unless entries are exactly want's keys with prefix, in
// order, with their values.
func checkScan(t *testing.T, what string, entries []Entry, want map[string]string, prefix string) {
	t.Helper()
	if got, exp := entryKeys(entries), wantKeys(want, prefix); !slices.Equal(got, exp) {
		t.Fatalf("%s: %d keys, want %d (first difference at %d)", what, len(got), len(exp), firstDiff(got, exp))
	}
	for _, e := range entries {
		if string(e.Value) != want[e.Key] || e.Version == 0 {
			t.Fatalf("%s: %q = %q version %d, want %q", what, e.Key, e.Value, e.Version, want[e.Key])
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// scanWorkersRunning counts the goroutines of Scans' workers.
func scanWorkersRunning() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "gridkv.(*scan).work")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Scans on 3 nodes, 2 groups per node: prefix filtering and key order over
// many ranges, from every node and in each mode; values, versions and
// expiries; Limit and After paging; expired keys left out.
func TestScan(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	want := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1200; i += 8 {
				k := fmt.Sprintf("%s/%04d", []string{"a", "ab", "b"}[i%3], i)
				v := strings.Repeat("v", i%50) + k
				if i%10 == 0 {
					v = "" // empty values are entries too
				}
				var opts []WriteOption
				if i%7 == 0 {
					opts = append(opts, WithTTL(time.Hour))
				}
				if err := nodes[i%3].Set(ctx, k, []byte(v), opts...); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[k] = v
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// Keys that expire: written last, gone from every scan once expired
	// (and not yet swept: no write follows to sweep them).
	for i := range 20 {
		if err := nodes[0].Set(ctx, fmt.Sprintf("a/x%02d", i), []byte("short"), WithTTL(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the short keys expired", func() bool {
		_, err := nodes[1].Get(ctx, "a/x19")
		return errors.Is(err, ErrNotFound)
	})

	for i, db := range nodes {
		for _, prefix := range []string{"", "a", "a/", "ab/", "b/01", "c", "b/0999"} {
			for _, mode := range []struct {
				name string
				opts []ReadOption
			}{{"default", nil}, {"readindex", []ReadOption{ReadIndex()}}} {
				entries, err := scanAll(ctx, db, prefix, mode.opts...)
				if err != nil {
					t.Fatalf("node %d, %s, prefix %q: %v", i, mode.name, prefix, err)
				}
				checkScan(t, fmt.Sprintf("node %d, %s, prefix %q", i, mode.name, prefix), entries, want, prefix)
			}
		}
		// Stale: every write has applied on the leaders; followers may
		// trail them by a moment.
		testutil.Eventually(t, 10*time.Second, "a stale scan with every key", func() bool {
			entries, err := scanAll(ctx, db, "", Stale())
			return err == nil && slices.Equal(entryKeys(entries), wantKeys(want, ""))
		})
	}

	entries, err := scanAll(ctx, nodes[2], "a/")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := 0
		fmt.Sscanf(e.Key[strings.IndexByte(e.Key, '/')+1:], "%d", &n)
		if hasTTL := n%7 == 0; hasTTL == e.ExpireAt.IsZero() || hasTTL && time.Until(e.ExpireAt) < 50*time.Minute {
			t.Fatalf("%q expires at %v", e.Key, e.ExpireAt)
		}
		if e.Value == nil {
			t.Fatalf("%q: nil value, want an empty one", e.Key)
		}
	}
	// Copies: changing a value changes nothing stored.
	if len(entries[1].Value) > 0 {
		entries[1].Value[0] ^= 0xff
		if v, _ := nodes[2].Get(ctx, entries[1].Key); string(v) != want[entries[1].Key] {
			t.Fatalf("a scanned value aliases the store: %q", v)
		}
	}

	// Limit and After: pages of n give the full set, in order, once (for
	// n = 1, the first few pages: each reads every range).
	all := wantKeys(want, "a")
	for _, n := range []int{1, 7, 100, 5000} {
		var got []string
		var opts []ReadOption
		for pages := 0; n > 1 || pages < 5; pages++ {
			page, err := scanAll(ctx, nodes[pages%3], "a", append(opts, Limit(n))...)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > n {
				t.Fatalf("Limit(%d): a page of %d", n, len(page))
			}
			got = append(got, entryKeys(page)...)
			if len(page) < n {
				break
			}
			opts = []ReadOption{After(page[len(page)-1].Key)}
		}
		if n > 1 && len(got) != len(all) || !slices.Equal(got, all[:len(got)]) {
			t.Fatalf("Limit(%d) pages: %d keys, want %d (first difference at %d)", n, len(got), len(all), firstDiff(got, all))
		}
	}
	// After a key that does not exist, and with a prefix before it.
	if page, err := scanAll(ctx, nodes[1], "", After("ab/"), Limit(3)); err != nil || !slices.Equal(entryKeys(page), wantKeys(want, "ab/")[:3]) {
		t.Fatalf("After(ab/): %v %v", entryKeys(page), err)
	}
	if page, err := scanAll(ctx, nodes[1], "a/", After("b")); err != nil || len(page) != 0 {
		t.Fatalf("After past the prefix: %v %v", entryKeys(page), err)
	}
}

// Bad options and prefixes are ErrInvalid, for Scan and for Get; an ended
// ctx is ErrTimeout; a closed DB is ErrClosed. Each error comes once.
func TestScanErrors(t *testing.T) {
	db := openCluster(t, 1, Config{Timing: LocalTiming()})[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	once := func(what string, seq func(func(Entry, error) bool), want error) {
		t.Helper()
		n := 0
		for e, err := range seq {
			n++
			if !errors.Is(err, want) || e.Key != "" {
				t.Fatalf("%s: %+v %v, want %v", what, e, err, want)
			}
		}
		if n != 1 {
			t.Fatalf("%s: %d yields, want 1", what, n)
		}
	}
	once("Quorum", db.Scan(ctx, "", Quorum(1)), ErrInvalid)
	once("Limit(0)", db.Scan(ctx, "", Limit(0)), ErrInvalid)
	once("Limit(-1)", db.Scan(ctx, "", Limit(-1)), ErrInvalid)
	once("nil option", db.Scan(ctx, "", nil), ErrInvalid)
	once("long prefix", db.Scan(ctx, strings.Repeat("p", 64<<10+1)), ErrInvalid)
	once("long After", db.Scan(ctx, "", After(strings.Repeat("p", 64<<10+1))), ErrInvalid)
	for _, opt := range []ReadOption{Limit(1), After("a")} {
		if _, err := db.Get(ctx, "k", opt); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Get with a Scan option: %v", err)
		}
	}
	ended, end := context.WithCancel(ctx)
	end()
	once("ended ctx", db.Scan(ended, ""), ErrTimeout)
	if entries, err := scanAll(ctx, db, "", Stale(), Limit(5)); err != nil || len(entries) != 1 || string(entries[0].Value) != "v" {
		t.Fatalf("single node: %+v %v", entries, err)
	}
	seq := db.Scan(ctx, "")
	db.Close()
	once("closed", seq, ErrClosed)
	once("closed, ended ctx", db.Scan(ended, ""), ErrClosed)
	if n := scanWorkersRunning(); n != 0 {
		t.Fatalf("%d scan workers left", n)
	}
}

// Breaking out of a scan, or its ctx ending mid-scan, leaves none of its
// goroutines; the ctx's end is ErrTimeout.
func TestScanStops(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 300 {
		if err := nodes[i%3].Set(ctx, fmt.Sprint("k", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for _, err := range nodes[1].Scan(ctx, "k") {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
	if n := scanWorkersRunning(); n != 0 {
		t.Fatalf("%d scan workers left after a break", n)
	}
	short, stop := context.WithCancel(ctx)
	n = 0
	var last error
	for _, err := range nodes[2].Scan(short, "", ReadIndex()) {
		if err != nil {
			last = err
			continue
		}
		if n++; n == 10 {
			stop()
		}
	}
	stop()
	if !errors.Is(last, ErrTimeout) || !errors.Is(last, context.Canceled) || n != 10 {
		t.Fatalf("ctx ended mid-scan: %d entries, then %v", n, last)
	}
	if n := scanWorkersRunning(); n != 0 {
		t.Fatalf("%d scan workers left after the ctx ended", n)
	}
}

// Scans while ranges move between groups, back and forth: each returns
// every key written before it, once, in order, with its value. The moving
// ranges hold 1 KB values, so each is read in several pages, resumed at
// their cursor across the moves.
func TestScanWhileRangesMove(t *testing.T) {
	nodes := formCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, GroupsPerNode: 1})
	for _, db := range nodes {
		db.handoffTimeout.Store(int64(5 * time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ranges := nodes[0].cfg.Ranges
	moving := []int{3, 5, 8, 13}
	want := map[string]string{}
	big := bytes.Repeat([]byte("x"), 1000)
	for _, r := range moving {
		for _, k := range keysIn("m", r, ranges, 40) {
			v := append([]byte(k), big...)
			if err := nodes[0].Set(ctx, k, v); err != nil {
				t.Fatal(err)
			}
			want[k] = string(v)
		}
	}
	for i := range 400 {
		k := fmt.Sprint("s", i)
		if err := nodes[i%3].Set(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		want[k] = k
	}

	moveCtx, stopMoves := context.WithCancel(ctx)
	var moves sync.WaitGroup
	var movesMu sync.Mutex
	done := 0
	moveErrs := make(chan error, len(moving))
	for i, r := range moving {
		moves.Add(1)
		go func() {
			defer moves.Done()
			db := nodes[i%3]
			for moveCtx.Err() == nil {
				g, _ := db.lay.Load().routes.lookup(r)
				err := db.moveRange(moveCtx, r, (g+1)%db.groupCount())
				switch {
				case moveCtx.Err() != nil:
					return
				case errors.Is(err, ErrUnavailable):
					continue // rolled back: try again
				case err != nil:
					moveErrs <- fmt.Errorf("move of range %d: %w", r, err)
					return
				}
				movesMu.Lock()
				done++
				movesMu.Unlock()
			}
		}()
	}
	scans := 0
	for {
		movesMu.Lock()
		d := done
		movesMu.Unlock()
		if scans >= 6 && d >= 8 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after %d scans, %d moves: %v", scans, d, ctx.Err())
		}
		opts := [][]ReadOption{nil, {ReadIndex()}}[scans%2]
		entries, err := scanAll(ctx, nodes[scans%3], "", opts...)
		if err != nil {
			t.Fatalf("scan %d: %v", scans, err)
		}
		checkScan(t, fmt.Sprintf("scan %d during moves", scans), entries, want, "")
		scans++
	}
	stopMoves()
	moves.Wait()
	select {
	case err := <-moveErrs:
		t.Fatal(err)
	default:
	}
	t.Logf("%d scans during %d moves", scans, done)
	for _, r := range moving {
		waitSettled(t, nodes, r, 30*time.Second)
	}
	entries, err := scanAll(ctx, nodes[1], "m")
	if err != nil {
		t.Fatal(err)
	}
	checkScan(t, "after the moves", entries, want, "m")
}

// A page request and a page answer round-trip; the answer leaves expired
// entries out but resumes after them; malformed answers are refused.
func TestScanPageWire(t *testing.T) {
	q := scanReq{rng: 700, mode: readIndex, prefix: "p/", after: "p/b", maxEntries: 9, maxBytes: 1000}
	if got, ok := parseScan(appendScan(nil, q)); !ok || got != q {
		t.Fatalf("request round trip: %+v %v", got, ok)
	}
	for _, bad := range [][]byte{nil, {byte(readQuorum), 1, 1, 1, 0}, {byte(readStale), 1, 1, 1, 5, 'p'}} {
		if _, ok := parseScan(bad); ok {
			t.Fatalf("parsed %v", bad)
		}
	}
	now := time.Now().UnixNano()
	page := []fsm.RangeEntry{
		{Key: "p/c", Entry: fsm.Entry{Value: []byte("1"), Version: 5}},
		{Key: "p/d", Entry: fsm.Entry{Value: []byte{}, Version: 6, ExpireAt: now + int64(time.Hour)}},
		{Key: "p/e", Entry: fsm.Entry{Value: []byte("gone"), Version: 7, ExpireAt: now}},
	}
	ans := appendScanPage(nil, page, true, now)
	p, err := decodeScanPage(ans, q)
	if err != nil || !p.more || p.last != "p/e" {
		t.Fatalf("decoded %+v %v", p, err)
	}
	var got []Entry
	for ; p.ok; p.advance() {
		got = append(got, p.head)
	}
	if len(got) != 2 || got[0].Key != "p/c" || string(got[0].Value) != "1" || got[0].Version != 5 || !got[0].ExpireAt.IsZero() ||
		got[1].Key != "p/d" || got[1].Value == nil || len(got[1].Value) != 0 || got[1].ExpireAt.UnixNano() != now+int64(time.Hour) {
		t.Fatalf("entries %+v", got)
	}
	if cap(got[0].Value) != 1 {
		t.Fatalf("a value's capacity runs into the next one's: %d", cap(got[0].Value))
	}
	// Only expired entries: none to yield, the cursor moves on.
	if p, err := decodeScanPage(appendScanPage(nil, page[2:], true, now), q); err != nil || p.ok || p.last != "p/e" {
		t.Fatalf("expired page: %+v %v", p, err)
	}
	for name, ans := range map[string][]byte{
		"truncated":     ans[:len(ans)-1],
		"out of order":  appendScanPage(nil, []fsm.RangeEntry{page[1], page[0]}, false, now),
		"at the cursor": appendScanPage(nil, []fsm.RangeEntry{{Key: "p/b"}}, false, now),
		"other prefix":  appendScanPage(nil, []fsm.RangeEntry{{Key: "q/z"}}, false, now),
		"stuck cursor":  appendScanPage(nil, nil, true, now),
		"empty":         nil,
	} {
		if _, err := decodeScanPage(ans, q); err == nil {
			t.Fatalf("%s: decoded", name)
		}
	}
}
