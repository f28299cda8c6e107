package gossip

import (
	"context"
	"errors"
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
	settings := []Setting{{"Heartbeat", "300ms"}, {"Groups", "64"}}
	for _, m := range []Meta{
		{NodeID: "n1", Incarnation: 7, RPCAddr: "127.0.0.1:9000"},
		{NodeID: "n2", Incarnation: 1 << 60, RPCAddr: "[::1]:1", Groups: 6, GenesisGroups: 4, LayoutEpoch: 1 << 40, LayoutCreation: 1 << 33, Leads: []int{0, 3, 63, 255}},
		{NodeID: "n3", RPCAddr: "x", Leads: []int{4100}}, // bitmap of 513 bytes: too big, omitted
	} {
		b, err := encodeMeta(m, settings)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > maxMeta {
			t.Fatalf("%d bytes", len(b))
		}
		got, gotSettings, err := decodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		wantLeads := fmt.Sprint(m.Leads)
		if got.LeadsOmitted {
			wantLeads = "[]"
		}
		if got.NodeID != m.NodeID || got.Incarnation != m.Incarnation || got.RPCAddr != m.RPCAddr || got.Groups != m.Groups || got.GenesisGroups != m.GenesisGroups || got.LayoutEpoch != m.LayoutEpoch || got.LayoutCreation != m.LayoutCreation || fmt.Sprint(got.Leads) != wantLeads && !(wantLeads == "[]" && got.Leads == nil) {
			t.Fatalf("round trip %+v -> %+v", m, got)
		}
		if fmt.Sprint(gotSettings) != fmt.Sprint(settings) {
			t.Fatalf("settings %v -> %v", settings, gotSettings)
		}
		if m.NodeID == "n3" && !got.LeadsOmitted {
			t.Fatal("oversized leads not marked omitted")
		}
	}
	if _, err := encodeMeta(Meta{NodeID: strings.Repeat("x", 600)}, nil); err == nil {
		t.Fatal("oversized node id accepted")
	}
	if _, err := encodeMeta(Meta{NodeID: "n"}, []Setting{{"Big", strings.Repeat("x", 600)}}); err == nil {
		t.Fatal("oversized settings accepted")
	}
	old := []byte{1, 0, 7, 2, 'n', '1', 1, 'x', 0}
	if _, _, err := decodeMeta(old); err == nil || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("version 1 metadata: %v", err)
	}
}

func TestDiffSettings(t *testing.T) {
	mine := []Setting{{"Heartbeat", "1s"}, {"Groups", "64"}, {"ReplicaCount", "3"}}
	for _, c := range []struct {
		theirs []Setting
		want   string
	}{
		{mine, ""},
		{[]Setting{{"Heartbeat", "1s"}, {"Groups", "16"}, {"ReplicaCount", "1"}}, "Groups 16 (64 here), ReplicaCount 1 (3 here)"},
		{[]Setting{{"Heartbeat", "1s"}, {"ReplicaCount", "3"}}, "Groups unset (64 here)"},
		{[]Setting{{"Extra", "x"}, {"Heartbeat", "1s"}, {"Groups", "64"}, {"ReplicaCount", "3"}}, "Extra x (unset here)"},
		{nil, "Heartbeat unset (1s here), Groups unset (64 here), ReplicaCount unset (3 here)"},
	} {
		if got := diffSettings(mine, c.theirs); got != c.want {
			t.Errorf("diff with %v = %q, want %q", c.theirs, got, c.want)
		}
	}
	if _, err := sortSettings([]Setting{{"A", "1"}, {"A", "2"}}); err == nil {
		t.Fatal("a repeated setting accepted")
	}
	if _, err := sortSettings([]Setting{{"", "1"}}); err == nil {
		t.Fatal("an unnamed setting accepted")
	}
}

func TestCheckMerge(t *testing.T) {
	settings := []Setting{{"Groups", "64"}}
	meta := func(groups string) []byte {
		b, err := encodeMeta(Meta{NodeID: "p"}, []Setting{{"Groups", groups}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ok, other := meta("64"), meta("16")
	// This node is "me" at 10.0.0.1:1; it counts "m" live at 10.0.0.2:1.
	live := map[string]string{"me": "10.0.0.1:1", "m": "10.0.0.2:1"}
	for _, c := range []struct {
		name   string
		peers  []peer
		want   error  // nil: merged
		text   string // in the refusal
		holder bool
	}{
		{"a compatible newcomer", []peer{{name: "n", addr: "10.0.0.3:1", live: true, meta: ok}}, nil, "", false},
		{"a newcomer with other settings", []peer{{name: "n", addr: "10.0.0.3:1", live: true, meta: other}},
			ErrIncompatible, `member "n" at 10.0.0.3:1 has Groups 16 (64 here)`, false},
		{"unreadable metadata", []peer{{name: "n", addr: "10.0.0.3:1", live: true, meta: []byte{9}}},
			ErrIncompatible, "cannot read", false},
		{"a dead node with other settings", []peer{{name: "n", addr: "10.0.0.3:1", meta: other}}, nil, "", false},
		{"a newcomer taking a live member's name", []peer{{name: "m", addr: "10.0.0.3:1", live: true, meta: ok}},
			nil, `refused "m" at 10.0.0.3:1: a member of that name is live at 10.0.0.2:1`, false},
		{"a live member holding this node's name", []peer{{name: "me", addr: "10.0.0.9:1", live: true, meta: ok, ip: net.IPv4(10, 0, 0, 9), port: 1}},
			ErrNameTaken, `"me" is live at 10.0.0.9:1`, true},
		{"a dead member of this node's name", []peer{{name: "me", addr: "10.0.0.9:1", meta: ok}}, nil, "", false},
		{"this node's name at its own address (a restart there)", []peer{{name: "me", addr: "10.0.0.1:1", live: true, meta: other}}, nil, "", false},
		{"a known member at its known address", []peer{{name: "m", addr: "10.0.0.2:1", live: true, meta: ok}}, nil, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := checkMerge("me", settings, live, c.peers)
			if c.text == "" {
				if r != nil {
					t.Fatalf("refused: %v", r.err)
				}
				return
			}
			if r == nil {
				t.Fatal("merged")
			}
			if c.want != nil && !errors.Is(r.err, c.want) || !strings.Contains(r.err.Error(), c.text) || (r.holder != nil) != c.holder {
				t.Fatalf("refusal %v (holder %v), want %v with %q", r.err, r.holder, c.want, c.text)
			}
		})
	}
}

func FuzzDecodeMeta(f *testing.F) {
	b, _ := encodeMeta(Meta{NodeID: "n", RPCAddr: "a:1", Leads: []int{1, 9}}, []Setting{{"Groups", "64"}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, _, err := decodeMeta(data)
		if err == nil && len(m.Leads) > 8*len(data) {
			t.Fatalf("%d leads from %d bytes", len(m.Leads), len(data))
		}
	})
}

type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) count(kind EventKind, name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.events {
		if ev.Kind == kind && ev.Member.Name == name {
			n++
		}
	}
	return n
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
	return startWith(t, name, nil, rec)
}

func startWith(t *testing.T, name string, settings []Setting, rec *recorder) *Node {
	t.Helper()
	var n *Node
	var ready sync.WaitGroup
	ready.Add(1)
	n, err := Start(Config{
		Name:     name,
		Meta:     Meta{NodeID: name, Incarnation: 1, RPCAddr: "127.0.0.1:1"},
		Settings: settings,
		Preset:   Local,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
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

// A node whose settings differ from the cluster's is refused by both sides
// of its join, at once and for good: the error names each differing setting
// with both values, and neither side ever counts the other.
func TestJoinRefusedOnSettings(t *testing.T) {
	recA, recB := &recorder{}, &recorder{}
	a := startWith(t, "a", []Setting{{"Groups", "64"}, {"ReplicaCount", "3"}}, recA)
	defer a.Close(time.Second)
	b := startWith(t, "b", []Setting{{"Groups", "16"}, {"ReplicaCount", "1"}}, recB)
	defer b.Close(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := b.Join(ctx, []string{a.Addr()})
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("join: %v, want ErrIncompatible", err)
	}
	if want := fmt.Sprintf(`member "a" at %s has Groups 64 (16 here), ReplicaCount 3 (1 here)`, a.Addr()); !strings.Contains(err.Error(), want) {
		t.Fatalf("join: %v, want it to say %s", err, want)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("refusal took %v: retried?", time.Since(start))
	}
	if len(a.Members()) != 1 || len(b.Members()) != 1 || recA.has(EventJoin, "b") || recB.has(EventJoin, "a") {
		t.Fatalf("counted each other: a sees %v, b sees %v", a.Members(), b.Members())
	}
	// Learning of b other than by its join (an alive message) is refused too.
	bNode := b.ml.LocalNode()
	if err := (*delegate)(a).NotifyAlive(bNode); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("alive message of b: %v", err)
	}
	if err := (*delegate)(a).NotifyAlive(a.ml.LocalNode()); err != nil {
		t.Fatalf("alive message of a itself: %v", err)
	}
}

// A second live node with a member's name is refused (ErrNameTaken) and
// never counted; once that member crashed and was declared dead, a node of
// its name joins from another address, as a restart does.
func TestJoinNameTakenThenRestart(t *testing.T) {
	recA := &recorder{}
	a := start(t, "a", recA)
	defer a.Close(time.Second)
	x := start(t, "x", &recorder{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := x.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a to see x", func() bool { return len(a.Members()) == 2 })

	dup := start(t, "x", &recorder{})
	_, err := dup.Join(ctx, []string{a.Addr()})
	dup.Close(time.Second)
	if !errors.Is(err, ErrNameTaken) || !strings.Contains(err.Error(), x.Addr()) {
		t.Fatalf("duplicate join: %v, want ErrNameTaken naming %s", err, x.Addr())
	}
	if ms := a.Members(); len(ms) != 2 || ms[1].Name != "x" || ms[1].Addr != x.Addr() {
		t.Fatalf("a sees %+v", ms)
	}

	// x crashes; a node of the same name at another address joins at
	// once, is held off while a still counts x, and gets in once a
	// declares it dead.
	xAddr := x.Addr()
	x.Crash()
	restarted := start(t, "x", &recorder{})
	defer restarted.Close(time.Second)
	if restarted.Addr() == xAddr {
		t.Fatal("the restart reused the address")
	}
	if _, err := restarted.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	eventually(t, 20*time.Second, "a to see x at its new address", func() bool {
		ms := a.Members()
		return len(ms) == 2 && ms[1].Name == "x" && ms[1].Addr == restarted.Addr()
	})
	// x failed once (its crash) and joined twice (at first, and restarted):
	// the refused duplicate's exit cost it nothing. Events reach the
	// recorder after the member table, so wait for them first.
	events := func() (int, int) {
		return recA.count(EventFail, "x") + recA.count(EventLeave, "x"), recA.count(EventJoin, "x")
	}
	eventually(t, 10*time.Second, "a's events for x", func() bool { f, j := events(); return f >= 1 && j >= 2 })
	if f, j := events(); f != 1 || j != 2 {
		t.Fatalf("a saw x fail or leave %d times and join %d times, want 1 and 2", f, j)
	}
}

func TestJoinEventsMetaLeaveAndFail(t *testing.T) {
	recs := []*recorder{{}, {}, {}}
	a := start(t, "a", recs[0])
	defer a.Close(time.Second)
	b := start(t, "b", recs[1])
	defer b.Close(time.Second)

	// c joins through a seed that is not up yet, then through a.
	deadAddr := testutil.FreeAddrs(t, 1)[0]
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
	// Generous waits: on a loaded machine the broadcast may take more than
	// a second to go out, and either call then fails.
	if err := b.AnnounceLeave(5 * time.Second); err != nil {
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

	if err := b.Close(5 * time.Second); err != nil {
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

// Close of the last member returns nil, even while it still counts a member
// alive that crashed (nobody is there to take the leave); with a live
// member that the leave could not reach in time, it reports the failure.
func TestCloseLastMember(t *testing.T) {
	alone := start(t, "alone", &recorder{})
	if err := alone.Close(time.Second); err != nil {
		t.Fatalf("Close of the only member: %v", err)
	}

	join := func(n, seed *Node) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := n.Join(ctx, []string{seed.Addr()}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "both to count each other", func() bool {
			return len(n.Members()) == 2 && len(seed.Members()) == 2
		})
	}

	// b crashes; a still counts it alive when it closes, and cannot gossip
	// its leave within the time given: nobody was there to take it.
	a, b := start(t, "a", &recorder{}), start(t, "b", &recorder{})
	join(b, a)
	b.Crash()
	if len(a.Members()) != 2 {
		t.Fatal("a already dropped b: the case is not tested")
	}
	if err := a.Close(time.Nanosecond); err != nil {
		t.Fatalf("Close with only a crashed member left: %v", err)
	}

	// d is alive but the leave cannot be gossiped within a nanosecond.
	c, d := start(t, "c", &recorder{}), start(t, "d", &recorder{})
	defer d.Close(time.Second)
	join(d, c)
	if err := c.Close(time.Nanosecond); err == nil {
		t.Fatal("Close reported no failure although a live member was not told in time")
	}
}
