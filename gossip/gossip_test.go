package gossip

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{NodeID: "n1", Incarnation: 7, RPCAddr: "127.0.0.1:9000"},
		{NodeID: "n2", Incarnation: 1 << 60, RPCAddr: "[::1]:1", Leads: []int{0, 3, 63, 255}},
		{NodeID: "n3", RPCAddr: "x", Leads: []int{4100}}, // bitmap of 513 bytes: too big, omitted
	} {
		b, err := encodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > maxMeta {
			t.Fatalf("%d bytes", len(b))
		}
		got, err := decodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		wantLeads := fmt.Sprint(m.Leads)
		if got.LeadsOmitted {
			wantLeads = "[]"
		}
		if got.NodeID != m.NodeID || got.Incarnation != m.Incarnation || got.RPCAddr != m.RPCAddr || fmt.Sprint(got.Leads) != wantLeads && !(wantLeads == "[]" && got.Leads == nil) {
			t.Fatalf("round trip %+v -> %+v", m, got)
		}
		if m.NodeID == "n3" && !got.LeadsOmitted {
			t.Fatal("oversized leads not marked omitted")
		}
	}
	if _, err := encodeMeta(Meta{NodeID: strings.Repeat("x", 600)}); err == nil {
		t.Fatal("oversized node id accepted")
	}
}

func FuzzDecodeMeta(f *testing.F) {
	b, _ := encodeMeta(Meta{NodeID: "n", RPCAddr: "a:1", Leads: []int{1, 9}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMeta(data)
		if err == nil && len(m.Leads) > 8*len(data) {
			t.Fatalf("%d leads from %d bytes", len(m.Leads), len(data))
		}
	})
}

type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) has(kind EventKind, name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if ev.Kind == kind && ev.Member.Name == name {
			return true
		}
	}
	return false
}

var eventually = testutil.Eventually

func start(t *testing.T, name string, rec *recorder) *Node {
	t.Helper()
	var n *Node
	var ready sync.WaitGroup
	ready.Add(1)
	n, err := Start(Config{
		Name:   name,
		Meta:   Meta{NodeID: name, Incarnation: 1, RPCAddr: "127.0.0.1:1"},
		Preset: Local,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(ev Event) {
			ready.Wait()
			// Calling back into the node from the handler must not deadlock.
			_ = n.Members()
			rec.mu.Lock()
			rec.events = append(rec.events, ev)
			rec.mu.Unlock()
		},
	})
	ready.Done()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestJoinEventsMetaLeaveAndFail(t *testing.T) {
	recs := []*recorder{{}, {}, {}}
	a := start(t, "a", recs[0])
	defer a.Close(time.Second)
	b := start(t, "b", recs[1])
	defer b.Close(time.Second)

	// c joins through a seed that is not up yet, then through a.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	c := start(t, "c", recs[2])
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if _, err := c.Join(ctx, []string{deadAddr}); err == nil {
		t.Fatal("join through a dead seed succeeded")
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(ctx, []string{deadAddr, a.Addr()}); err != nil {
		t.Fatal(err)
	}
	for i, n := range []*Node{a, b, c} {
		eventually(t, 10*time.Second, fmt.Sprintf("node %d to see 3 members", i), func() bool { return len(n.Members()) == 3 })
	}
	eventually(t, 5*time.Second, "join events", func() bool {
		return recs[0].has(EventJoin, "b") && recs[0].has(EventJoin, "c") && recs[2].has(EventJoin, "a")
	})

	if err := b.SetMeta(Meta{NodeID: "b", Incarnation: 1, RPCAddr: "127.0.0.1:2", Leads: []int{5}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the metadata update to reach a", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" && m.Meta.RPCAddr == "127.0.0.1:2" && fmt.Sprint(m.Meta.Leads) == "[5]" {
				return recs[0].has(EventUpdate, "b")
			}
		}
		return false
	})

	// An announced leave reaches the others while b is still a member, and
	// a later SetMeta does not take it back.
	if err := b.AnnounceLeave(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMeta(Meta{NodeID: "b", Incarnation: 1, RPCAddr: "127.0.0.1:2", Leads: []int{6}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a to see b leaving", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" && m.Meta.Leaving && fmt.Sprint(m.Meta.Leads) == "[6]" {
				return true
			}
		}
		return false
	})

	if err := b.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a leave event for b", func() bool { return recs[0].has(EventLeave, "b") })
	if recs[0].has(EventFail, "b") {
		t.Fatal("a graceful leave was reported as a failure")
	}

	// c vanishes without leaving: the others declare it dead.
	c.ml.Shutdown()
	eventually(t, 20*time.Second, "a fail event for c", func() bool { return recs[0].has(EventFail, "c") })
	close(c.stop)
	c.wg.Wait()
	c.closeOnce.Do(func() {})
	eventually(t, 5*time.Second, "a to list only itself", func() bool { return len(a.Members()) == 1 })
}

// With the fault seam, a cut between two members' gossip addresses makes
// each declare the other dead; healing brings them back together.
func TestFaultSeamPartitionsGossip(t *testing.T) {
	faults := faultnet.New(1)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var nodes []*Node
	for _, name := range []string{"a", "b"} {
		n, err := Start(Config{Name: name, Meta: Meta{NodeID: name, Incarnation: 1, RPCAddr: "127.0.0.1:1"},
			Preset: Local, Logger: quiet, Faults: faults})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close(time.Second)
		nodes = append(nodes, n)
	}
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "both to see 2 members", func() bool { return len(a.Members()) == 2 && len(b.Members()) == 2 })

	// Lossy and delayed packets alone do not break membership.
	faults.Set(a.Addr(), b.Addr(), faultnet.Rule{Drop: 0.2, Delay: time.Millisecond, Jitter: 5 * time.Millisecond, Duplicate: 0.1})

	faults.Partition(a.Addr(), b.Addr())
	eventually(t, 20*time.Second, "each to see only itself", func() bool { return len(a.Members()) == 1 && len(b.Members()) == 1 })
	faults.HealAll()
	if _, err := b.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "both to see 2 members again", func() bool { return len(a.Members()) == 2 && len(b.Members()) == 2 })
}
