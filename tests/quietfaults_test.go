package tests

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// nodeLines is a slog handler that keeps, per node (the "node" or
// "member" attribute its logger carries), the WARN and ERROR records and
// the "peer reachable again" ones.
type nodeLines struct {
	mu    *sync.Mutex
	lines map[string][]string
	node  string
}

func (h nodeLines) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (h nodeLines) WithGroup(string) slog.Handler                 { return h }
func (h nodeLines) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == "node" || a.Key == "member" {
			h.node = a.Value.String()
		}
	}
	return h
}

func (h nodeLines) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn && r.Message != "peer reachable again" {
		return nil
	}
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "peer" || a.Key == "repeated" {
			line += fmt.Sprintf(" %s=%v", a.Key, a.Value)
		}
		return true
	})
	h.mu.Lock()
	h.lines[h.node] = append(h.lines[h.node], line)
	h.mu.Unlock()
	return nil
}

// take returns node's lines since the last take.
func (h nodeLines) take(node string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.lines[node]
	delete(h.lines, node)
	return out
}

func (h nodeLines) count(node, sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, l := range h.lines[node] {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// A node cut off for a few seconds is a handful of lines on each node, not
// one per heartbeat: raft's failures about a peer collapse into one line
// per message per interval (10s), and the peer coming back is one Info
// line, "peer reachable again". Measured with Local timings, 16 groups per
// node: before collapsing, a 60s fault run wrote 659 to 1,912 ERROR lines
// per node (go run ./cmd/gridkv-jepsen -logcount 60s), and a 3s cut here
// some 300 per node; after, 6 to 14 WARN and ERROR lines per node, 6 of
// them gridkv's own reconcile warnings (already one per group and step per
// 10s). The bound, 60, leaves room for a loaded machine (stalls stretch
// the cut and set off more elections, in more groups, each a few more
// lines and reconcile-step warnings), not for a flood.
func TestIsolatedNodeIsFewLines(t *testing.T) {
	logs := nodeLines{mu: &sync.Mutex{}, lines: map[string][]string{}}
	base := gridkv.Config{Timing: gridkv.LocalTiming(), GroupsPerNode: 16, Logger: slog.New(logs)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 3, Seed: 1, Base: &base})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range c.Nodes {
		logs.take(n.Name) // formation's, if any
	}

	cut := c.Nodes[2]
	c.Isolate(cut)
	start := time.Now()
	// Until every node has failed to reach the others for 2s: hundreds of
	// failed heartbeats and votes each, without collapsing.
	poll(ctx, 20*time.Millisecond, func() bool {
		for _, n := range c.Nodes {
			if logs.count(n.Name, "failed to") == 0 {
				return false
			}
		}
		return time.Since(start) >= 2*time.Second
	})
	c.Heal()
	// Until every node has logged a peer back.
	poll(ctx, 20*time.Millisecond, func() bool {
		for _, n := range c.Nodes {
			if logs.count(n.Name, "peer reachable again") == 0 {
				return false
			}
		}
		return true
	})
	if ctx.Err() != nil {
		t.Fatal("the isolated node's peers were never logged reachable again")
	}
	for _, n := range c.Nodes {
		lines := logs.take(n.Name)
		loud := 0
		for _, l := range lines {
			if !strings.HasPrefix(l, "INFO") {
				loud++
			}
		}
		t.Logf("%s: %d WARN/ERROR lines over %v cut off and healed:\n  %s", n.Name, loud, time.Since(start).Round(time.Millisecond), strings.Join(lines, "\n  "))
		if loud > 60 {
			t.Errorf("%s: %d WARN/ERROR lines, want at most 60", n.Name, loud)
		}
	}
}
