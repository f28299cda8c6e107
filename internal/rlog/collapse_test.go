package rlog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is a slog handler keeping each record as "LEVEL msg k=v ...".
type recorder struct {
	mu    *sync.Mutex
	lines *[]string
}

func newRecorder() recorder { return recorder{mu: &sync.Mutex{}, lines: new([]string)} }

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r recorder) WithGroup(string) slog.Handler            { return r }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", rec.Level, rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	*r.lines = append(*r.lines, b.String())
	r.mu.Unlock()
	return nil
}

// take returns the lines recorded since the last take.
func (r recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := *r.lines
	*r.lines = nil
	return out
}

func newTestCollapser(maxKeys int) (*Collapser, *fakeClock, recorder, *slog.Logger) {
	clk := newFakeClock()
	rec := newRecorder()
	c := NewCollapser(CollapseOptions{Interval: 10 * time.Second, MaxKeys: maxKeys, Now: clk.Now})
	return c, clk, rec, slog.New(rec)
}

func wantLines(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

// N repeats within the interval are one line; the first after it carries
// their count and span.
func TestCollapseRepeats(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	for i := 0; i < 50; i++ {
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1", "try", i)
		clk.Advance(100 * time.Millisecond) // 5s in all
	}
	wantLines(t, "50 repeats within the interval", rec.take(), "ERROR failed to heartbeat to peer=a:1 try=0")

	clk.Advance(4 * time.Second)
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1", "try", 50)
	wantLines(t, "still within the interval", rec.take())

	clk.Advance(time.Second) // 10s since the line
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1", "try", 51)
	wantLines(t, "first after the interval", rec.take(),
		"ERROR failed to heartbeat to peer=a:1 try=51 repeated=50 over=10s")

	clk.Advance(30 * time.Second)
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1", "try", 52)
	wantLines(t, "after a quiet interval, nothing was counted", rec.take(), "ERROR failed to heartbeat to peer=a:1 try=52")
}

// Keys are independent: other peers, other messages, and records naming
// no peer (keyed by message alone).
func TestCollapseKeysIndependent(t *testing.T) {
	c, _, rec, l := newTestCollapser(0)
	for i := 0; i < 3; i++ {
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1")
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "b:2")
		c.Failure(l, slog.LevelError, "failed to appendEntries to", "a:1")
		c.Log(l, slog.LevelWarn, "Election timeout reached, restarting election", "")
	}
	wantLines(t, "one line per key", rec.take(),
		"ERROR failed to heartbeat to",
		"ERROR failed to heartbeat to",
		"ERROR failed to appendEntries to",
		"WARN Election timeout reached, restarting election")
}

// A peer that answers again is logged once, at Info, with its failures,
// after the counts still pending about it; only once its failures have
// settled; and its next failure is written at once.
func TestCollapseReachable(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	c.Reachable(l, "a:1")
	wantLines(t, "an answer from a peer never failing", rec.take())

	for i := 0; i < 5; i++ {
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1")
		c.Failure(l, slog.LevelError, "failed to appendEntries to", "a:1", "peer", "a:1")
		clk.Advance(500 * time.Millisecond)
	}
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "b:2", "peer", "b:2")
	rec.take()

	c.Reachable(l, "a:1") // 500ms after its last failure: not settled
	wantLines(t, "an answer while failures go on", rec.take())

	clk.Advance(500 * time.Millisecond)
	c.Reachable(l, "a:1")
	wantLines(t, "an answer once settled", rec.take(),
		"ERROR failed to heartbeat to peer=a:1 repeated=4 over=3s",
		"ERROR failed to appendEntries to peer=a:1 repeated=4 over=3s",
		"INFO peer reachable again peer=a:1 after=10 for=2s")

	c.Reachable(l, "a:1")
	wantLines(t, "a second answer", rec.take())

	c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1", "peer", "a:1")
	wantLines(t, "a failure after it came back", rec.take(), "ERROR failed to heartbeat to peer=a:1")

	clk.Advance(time.Second)
	c.Reachable(l, "b:2")
	wantLines(t, "another peer's answer", rec.take(), "INFO peer reachable again peer=b:2 after=1 for=0s")
}

// Log (a record about a peer that does not say it is unreachable) is
// collapsed but does not make the peer failing.
func TestCollapseLogIsNoFailure(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	c.Log(l, slog.LevelWarn, "rejecting vote request since we have a leader", "a:1")
	c.Log(l, slog.LevelWarn, "rejecting vote request since we have a leader", "a:1")
	clk.Advance(time.Minute)
	c.Reachable(l, "a:1")
	wantLines(t, "a refused vote, then an answer", rec.take(), "WARN rejecting vote request since we have a leader")
}

// Keys and peers stay within MaxKeys.
func TestCollapseBounded(t *testing.T) {
	c, clk, rec, l := newTestCollapser(8)
	for i := 0; i < 1000; i++ {
		c.Failure(l, slog.LevelError, "failed to heartbeat to", fmt.Sprint("p", i))
		c.Log(l, slog.LevelWarn, fmt.Sprint("message ", i), "")
		clk.Advance(time.Millisecond)
		c.mu.Lock()
		keys, peers, due := len(c.mu.keys), len(c.mu.peers), c.mu.due.len()
		c.mu.Unlock()
		if keys > 8 || peers > 8 || due > 8 || failing(c) != peers {
			t.Fatalf("after %d peers: %d keys, %d peers, %d due, failing %d; want at most 8", i+1, keys, peers, due, failing(c))
		}
	}
	if n := len(rec.take()); n != 2000 {
		t.Errorf("%d lines for 2000 distinct keys, want 2000", n)
	}
}

// A nil Collapser writes every record.
func TestCollapseNil(t *testing.T) {
	var c *Collapser
	rec := newRecorder()
	l := slog.New(rec)
	for i := 0; i < 3; i++ {
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "a:1")
	}
	c.Reachable(l, "a:1")
	if n := len(rec.take()); n != 3 {
		t.Errorf("%d lines, want 3", n)
	}
}

// Many goroutines failing and answering at once (for the race detector):
// every failure is written or counted, and the lines add up.
func TestCollapseConcurrent(t *testing.T) {
	c := NewCollapser(CollapseOptions{Interval: time.Millisecond})
	rec := newRecorder()
	l := slog.New(rec)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			peer := fmt.Sprint("p", g%3)
			for i := 0; i < 2000; i++ {
				c.Failure(l, slog.LevelError, "failed to heartbeat to", peer)
				if i%50 == 0 {
					c.Reachable(l, peer)
				}
			}
		}()
	}
	wg.Wait()
	if len(rec.take()) == 0 {
		t.Error("no line written")
	}
}

func TestPeerOf(t *testing.T) {
	srv := raft.Server{ID: "n1#3", Address: "10.0.0.1:7000"}
	for _, c := range []struct {
		name, msg   string
		args        []interface{}
		peer        string
		unreachable bool
	}{
		{"heartbeat", "failed to heartbeat to", []interface{}{"peer", raft.ServerAddress("10.0.0.1:7000"), "error", "timeout"}, "10.0.0.1:7000", true},
		{"appendEntries", "failed to appendEntries to", []interface{}{"peer", srv, "error", "timeout"}, "10.0.0.1:7000", true},
		{"requestVote", "failed to make requestVote RPC", []interface{}{"target", srv, "error", "timeout", "term", uint64(3)}, "10.0.0.1:7000", true},
		{"install by id", "failed to install snapshot", []interface{}{"peer", raft.ServerID("n1#3"), "id", "s"}, "n1#3", false},
		{"vote refused", "rejecting vote request since we have a leader", []interface{}{"from", raft.ServerAddress("10.0.0.1:7000"), "leader", raft.ServerAddress("x")}, "10.0.0.1:7000", false},
		{"contact", "failed to contact", []interface{}{"server-id", raft.ServerID("n1#3"), "time", time.Second}, "n1#3", false},
		{"no peer", "Election timeout reached, restarting election", nil, "", false},
	} {
		peer, unreachable := peerOf(c.msg, c.args)
		if peer != c.peer || unreachable != c.unreachable {
			t.Errorf("%s: %q, %v; want %q, %v", c.name, peer, unreachable, c.peer, c.unreachable)
		}
	}
}

// Through the hclog adapter, as raft logs: a heartbeat failing every few
// milliseconds across 16 groups is one line until the interval ends, and
// the answer that follows is one Info line.
func TestRaftLoggerCollapses(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	var loggers []hclog.Logger
	for g := 0; g < 16; g++ {
		loggers = append(loggers, New(l, "raft", slog.LevelWarn, c))
	}
	addr := raft.ServerAddress("10.0.0.1:7000")
	for i := 0; i < 100; i++ {
		for _, lg := range loggers {
			lg.Error("failed to heartbeat to", "peer", addr, "backoff time", 10*time.Millisecond, "error", "rpc timeout")
			lg.Warn("Election timeout reached, restarting election")
			lg.Info("entering candidate state") // below the minimum: dropped
		}
		clk.Advance(5 * time.Millisecond)
	}
	wantLines(t, "1600 heartbeats and election timeouts", rec.take(),
		"ERROR failed to heartbeat to component=raft peer=10.0.0.1:7000 backoff time=10ms error=rpc timeout",
		"WARN Election timeout reached, restarting election component=raft")
	clk.Advance(time.Second)
	c.Reachable(l, string(addr))
	wantLines(t, "the peer answers", rec.take(),
		"ERROR failed to heartbeat to peer=10.0.0.1:7000 repeated=1599 over=1.5s",
		"INFO peer reachable again peer=10.0.0.1:7000 after=1600 for=495ms")
}

// failing is the number of peers Reachable sees failing without the lock.
func failing(c *Collapser) int {
	if m := c.failing.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// A peer whose failures stopped 3 intervals ago, without an answer (gone,
// or back at another address), is forgotten at the next record, and
// Reachable is back to one atomic load; a peer still failing now and then
// (raft retrying with backoff) is not forgotten.
func TestCollapseForgetsGonePeer(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "gone:1", "peer", "gone:1")
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "retried:2", "peer", "retried:2")
	for i := 0; i < 6; i++ { // 30s
		clk.Advance(5 * time.Second)
		c.Failure(l, slog.LevelError, "failed to heartbeat to", "retried:2", "peer", "retried:2")
	}
	if n := failing(c); n != 1 {
		t.Errorf("%d peers failing after 30s, want 1 (retried:2)", n)
	}
	clk.Advance(5 * time.Second)
	c.Reachable(l, "retried:2")
	if n := failing(c); n != 0 {
		t.Errorf("%d peers failing after the last answered, want 0", n)
	}
	rec.take()
	c.Reachable(l, "gone:1")
	wantLines(t, "an answer from a forgotten peer", rec.take())
	c.Failure(l, slog.LevelError, "failed to heartbeat to", "gone:1", "peer", "gone:1")
	wantLines(t, "a failure of a forgotten peer", rec.take(), "ERROR failed to heartbeat to peer=gone:1")
}

// A count pending for a key no later record carries (a burst that
// stopped) is written once its interval has passed, by the next record of
// another key or answer of a failing peer; by Flush at the latest.
func TestCollapseLateCount(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	for i := 0; i < 3; i++ {
		c.Log(l, slog.LevelWarn, "rejecting vote request since we have a leader", "a:1", "peer", "a:1")
		c.Log(l, slog.LevelWarn, "Election timeout reached, restarting election", "")
		clk.Advance(time.Second)
	}
	rec.take()
	clk.Advance(6 * time.Second) // 9s since the first lines
	c.Log(l, slog.LevelError, "other", "")
	wantLines(t, "within the interval", rec.take(), "ERROR other")

	clk.Advance(2 * time.Second)
	c.Log(l, slog.LevelError, "other", "")
	wantLines(t, "another key's record once due", rec.take(),
		"WARN rejecting vote request since we have a leader peer=a:1 repeated=2 over=11s",
		"WARN Election timeout reached, restarting election repeated=2 over=11s")

	c.Log(l, slog.LevelWarn, "Election timeout reached, restarting election", "")
	wantLines(t, "a record right after its count went out", rec.take())

	c.Failure(l, slog.LevelError, "failed to heartbeat to", "b:2", "peer", "b:2")
	rec.take()
	clk.Advance(10 * time.Second)
	c.Reachable(l, "b:2")
	wantLines(t, "a failing peer's answer", rec.take(),
		"ERROR other repeated=1 over=12s",
		"WARN Election timeout reached, restarting election repeated=1 over=10s",
		"INFO peer reachable again peer=b:2 after=1 for=0s")

	c.Log(l, slog.LevelWarn, "Election timeout reached, restarting election", "")
	c.Reachable(l, "a:1") // no peer failing: nothing looked at
	wantLines(t, "an answer with no peer failing", rec.take())
	clk.Advance(time.Second)
	c.Flush()
	wantLines(t, "Flush", rec.take(), "WARN Election timeout reached, restarting election repeated=1 over=1s")
	c.Flush()
	wantLines(t, "a second Flush", rec.take())
}

// One call writes at most lateMax late counts; the rest come with the
// next calls, first due first.
func TestCollapseLateCountBounded(t *testing.T) {
	c, clk, rec, l := newTestCollapser(0)
	for i := 0; i < 2*lateMax; i++ {
		c.Log(l, slog.LevelWarn, fmt.Sprint("message ", i), "")
		c.Log(l, slog.LevelWarn, fmt.Sprint("message ", i), "")
		clk.Advance(time.Millisecond)
	}
	rec.take()
	clk.Advance(time.Minute)
	c.Log(l, slog.LevelWarn, "other", "")
	if got := rec.take(); len(got) != lateMax+1 || !strings.HasPrefix(got[0], "WARN message 0 repeated=1") {
		t.Errorf("first call wrote %q; want %d counts from message 0, and its record", got, lateMax)
	}
	c.Log(l, slog.LevelWarn, "other", "")
	if got := rec.take(); len(got) != lateMax || !strings.HasPrefix(got[0], fmt.Sprintf("WARN message %d repeated=1", lateMax)) {
		t.Errorf("second call wrote %q; want the other %d counts", got, lateMax)
	}
}

// Reachable runs on every answer a node reads: it must cost next to
// nothing while no peer fails, and for a peer that is not failing while
// another one does, or did long ago and never answered again.
func BenchmarkReachable(b *testing.B) {
	l := slog.New(newRecorder())
	for _, other := range []string{"none", "failing", "long-dead"} {
		b.Run("other-peer="+other, func(b *testing.B) {
			clk := newFakeClock()
			c := NewCollapser(CollapseOptions{Now: clk.Now})
			if other != "none" {
				c.Failure(l, slog.LevelError, "failed to heartbeat to", "down:1")
			}
			if other == "long-dead" {
				clk.Advance(time.Hour)
				c.Log(l, slog.LevelWarn, "some other record", "")
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c.Reachable(l, "up:2")
				}
			})
		})
	}
}
