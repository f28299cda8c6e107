package raftgroup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/rlog"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCluster is n hosts in this process over loopback TCP, each holding a
// replica of every group.
type testCluster struct {
	t      testing.TB
	hosts  []*Host
	fsms   []map[GroupID]*fsm.FSM
	faults *faultnet.Net
	tune   []func(*Config) // what newTestCluster was given
}

// fastConfig is a test host's Config: 300ms timings. LeaderLeaseTimeout
// is HeartbeatTimeout, as in gridkv's Timing presets: a leader steps down
// only after a whole HeartbeatTimeout without a quorum, not after a CPU
// stall of half of it on a loaded CI machine. raftgroup's read lease and
// vote guard do not rest on it (they derive from HeartbeatTimeout alone).
func fastConfig(node string, faults *faultnet.Net) Config {
	return Config{
		NodeID:             node,
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 300 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		RPCTimeout:         time.Second,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		Faults:             faults,
	}
}

// slowTimings is a tune for newTestCluster (and any host added to such a
// cluster: HeartbeatTimeout must be the same on every node) giving 1s
// heartbeat, election and leader lease time-outs, for tests that push a
// long sequence through one leader and need it to stay leader: under the
// race detector on a loaded 2-core machine, stalls of 300ms happen.
func slowTimings(cfg *Config) {
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = time.Second, time.Second, time.Second
}

// newTestCluster starts n hosts (tune adjusts each one's Config) with a
// replica of every group on each; they are closed when the test ends.
func newTestCluster(t testing.TB, n, groups int, tune ...func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, faults: faultnet.New(1), tune: tune}
	for i := 0; i < n; i++ {
		h, err := NewHost(c.config(fmt.Sprintf("n%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		c.hosts = append(c.hosts, h)
		c.fsms = append(c.fsms, map[GroupID]*fsm.FSM{})
	}
	t.Cleanup(c.close)
	var servers []raft.Server
	for _, h := range c.hosts {
		servers = append(servers, raft.Server{ID: h.ID(), Address: raft.ServerAddress(h.Addr())})
	}
	for g := 0; g < groups; g++ {
		for i, h := range c.hosts {
			f := fsm.New(fsm.Options{})
			if _, err := h.CreateGroup(GroupID(g), f, GroupOptions{Bootstrap: servers}); err != nil {
				t.Fatal(err)
			}
			c.fsms[i][GroupID(g)] = f
		}
	}
	return c
}

// config is a host's Config in c: fastConfig on c's network with c's
// tunes, which a host added later needs too (HeartbeatTimeout must be the
// same on every node).
func (c *testCluster) config(node string) Config {
	cfg := fastConfig(node, c.faults)
	for _, f := range c.tune {
		f(&cfg)
	}
	return cfg
}

func (c *testCluster) close() {
	for _, h := range c.hosts {
		_ = h.Close()
	}
}

var eventually = testutil.Eventually

// leader returns the host index leading group g, or -1.
func (c *testCluster) leader(g GroupID) int {
	for i, h := range c.hosts {
		if gr := h.Group(g); gr != nil && gr.IsLeader() {
			return i
		}
	}
	return -1
}

func (c *testCluster) waitLeaders(groups int, within time.Duration) {
	c.t.Helper()
	eventually(c.t, within, "every group to elect a leader", func() bool {
		for g := 0; g < groups; g++ {
			if c.leader(GroupID(g)) < 0 {
				return false
			}
		}
		return true
	})
}

// genesisData makes the test state machines own range 0, where every
// test key lives; applying it again changes nothing.
var genesisData, _ = fsm.Encode(fsm.GenesisOp([]int{0}))

// set writes key in range 0 through g, its leader, after the Genesis.
func set(t testing.TB, g *Group, key, value string) *fsm.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := g.Apply(ctx, genesisData); err != nil {
		t.Fatalf("apply to group %d: %v", g.ID, err)
	}
	data, _ := fsm.Encode(fsm.SetOp(0, key, []byte(value), 0))
	resp, err := g.Apply(ctx, data)
	if err != nil {
		t.Fatalf("apply to group %d: %v", g.ID, err)
	}
	return resp.(*fsm.Result)
}

// waitLeader waits until some replica leads group g and returns its
// host's index: nobody may lead at the instant a test asks (a new
// election on a loaded machine), and c.hosts[-1] would panic.
func (c *testCluster) waitLeader(g GroupID) int {
	c.t.Helper()
	l := -1
	eventually(c.t, 15*time.Second, fmt.Sprintf("a leader of group %d", g), func() bool {
		l = c.leader(g)
		return l >= 0
	})
	return l
}

// errMoved is what an onLeader attempt returns when it sees that
// leadership moved under it (a follower it picked leads now).
var errMoved = errors.New("leadership moved during the attempt")

// leadershipMoved reports whether err says the replica asked does not
// lead (any more): the attempt is tried again through the next leader.
func leadershipMoved(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeaderLost) || errors.Is(err, errMoved) ||
		errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost)
}

// onLeader runs attempt with the host index of group g's leader of the
// moment until it returns nil, again whenever it fails because
// leadership moved: 3 hosts under the race detector, on a loaded
// machine, elect again now and then. Leadership moved only if the
// attempt says so (errMoved), or it failed with a leadershipMoved error
// and the replica it ran on no longer leads in the term it led in (within
// a second): a leader that wrongly refuses in its own term fails the
// test, as does any other error, and an attempt that never succeeds
// within 30s. Attempts must be safe to repeat.
func (c *testCluster) onLeader(g GroupID, what string, attempt func(li int) error) {
	c.t.Helper()
	eventually(c.t, 30*time.Second, what, func() bool {
		l := c.leader(g)
		if l < 0 {
			return false
		}
		r := c.hosts[l].Group(g).Raft()
		term := r.CurrentTerm()
		err := attempt(l)
		if err == nil {
			return true
		}
		if !errors.Is(err, errMoved) && !(leadershipMoved(err) && stepsDown(r, term)) {
			c.t.Fatalf("%s through host %d, leading in term %d: %v", what, l, term, err)
		}
		c.t.Logf("%s through host %d: %v; again through the next leader", what, l, err)
		return false
	})
}

// stepsDown reports whether r, which led in term, leads no more in it
// within a second: raft steps down before it fails a request for lost
// leadership, but the state is read apart from the error.
func stepsDown(r *raft.Raft, term uint64) bool {
	return testutil.Within(time.Second, func() bool { return r.State() != raft.Leader || r.CurrentTerm() != term })
}

// setViaLeader writes key in range 0 of group g through its leader of the
// moment, again while a new election makes it lose leadership. Both
// writes are idempotent, so a write applied before its leader lost
// leadership may be written again.
func (c *testCluster) setViaLeader(g GroupID, key, value string) {
	c.t.Helper()
	c.onLeader(g, fmt.Sprintf("a write of %s to group %d", key, g), func(l int) error {
		return applyWrite(c.hosts[l].Group(g), key, value)
	})
}

// applyWrite applies the Genesis, then key=value, through g.
func applyWrite(g *Group, key, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := g.Apply(ctx, genesisData); err != nil {
		return err
	}
	data, _ := fsm.Encode(fsm.SetOp(0, key, []byte(value), 0))
	_, err := g.Apply(ctx, data)
	return err
}

func TestManyGroupsElectAndReplicate(t *testing.T) {
	const groups = 64
	c := newTestCluster(t, 3, groups)
	c.waitLeaders(groups, 30*time.Second)
	for g := 0; g < groups; g++ {
		c.setViaLeader(GroupID(g), fmt.Sprint("key", g), fmt.Sprint("value", g))
	}
	eventually(t, 10*time.Second, "writes on every replica", func() bool {
		for g := 0; g < groups; g++ {
			for i := range c.hosts {
				v, _, ok, _ := c.fsms[i][GroupID(g)].Get(0, fmt.Sprint("key", g), fsm.NowNanos())
				if !ok || string(v) != fmt.Sprint("value", g) {
					return false
				}
			}
		}
		return true
	})
}

func TestPartitionedLeaderIsReplacedAndItsWritesFail(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	c.setViaLeader(0, "before", "1")
	// Should old lose leadership before it is cut off, the write to it
	// fails all the same (ErrNotLeader).
	old := c.waitLeader(0)

	var others []string
	for i, h := range c.hosts {
		if i != old {
			others = append(others, h.Addr())
		}
	}
	c.faults.Isolate(c.hosts[old].Addr(), others...)

	// A write to the isolated leader cannot commit: it must fail (leadership
	// lost) or time out, never succeed.
	data, _ := fsm.Encode(fsm.SetOp(0, "during", []byte("lost"), 0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.hosts[old].Group(0).Apply(ctx, data)
	if err == nil {
		t.Fatal("write to an isolated leader succeeded")
	}
	if !errors.Is(err, ErrLeaderLost) && !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrTimeout) {
		t.Fatalf("unexpected error %v", err)
	}

	eventually(t, 10*time.Second, "a new leader in the majority", func() bool {
		l := c.leader(0)
		return l >= 0 && l != old
	})
	// old stepped down before its write failed (or within the 10s it
	// timed out in): the leader of the moment is in the majority.
	c.setViaLeader(0, "after", "2")

	c.faults.HealAll()
	eventually(t, 10*time.Second, "the old leader to catch up", func() bool {
		_, _, ok, _ := c.fsms[old][0].Get(0, "after", fsm.NowNanos())
		return ok
	})
	for i := range c.hosts {
		if _, _, ok, _ := c.fsms[i][0].Get(0, "during", fsm.NowNanos()); ok {
			t.Fatalf("host %d applied the write the isolated leader could not commit", i)
		}
	}
}

func TestAddAndRemoveReplica(t *testing.T) {
	// One leader takes the writes, the snapshot and both configuration
	// changes: slow timings keep a stall from electing another.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	l := c.hosts[c.waitLeader(0)].Group(0)
	for i := 0; i < 100; i++ {
		set(t, l, fmt.Sprint("k", i), "v")
	}
	// Force a snapshot so the new replica is caught up by InstallSnapshot
	// as well as by the log.
	if err := l.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	set(t, l, "after-snapshot", "v")

	extra, err := NewHost(c.config("n3"))
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	f := fsm.New(fsm.Options{})
	if _, err := extra.CreateGroup(0, f, GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.AddVoter(ctx, extra.ID(), extra.Addr()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the new replica to catch up", func() bool {
		_, _, ok1, _ := f.Get(0, "k99", fsm.NowNanos())
		_, _, ok2, _ := f.Get(0, "after-snapshot", fsm.NowNanos())
		return ok1 && ok2
	})

	// Remove a follower that is not the leader.
	var victim *Host
	for _, h := range c.hosts {
		if g := h.Group(0); g != nil && !g.IsLeader() {
			victim = h
			break
		}
	}
	if err := l.RemoveServer(ctx, victim.ID()); err != nil {
		t.Fatal(err)
	}
	servers, err := l.Configuration()
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 3 {
		t.Fatalf("configuration has %d servers, want 3", len(servers))
	}
	for _, s := range servers {
		if s.ID == victim.ID() {
			t.Fatal("removed server still in the configuration")
		}
	}
	set(t, l, "after-remove", "v")
	eventually(t, 10*time.Second, "writes to reach the added replica", func() bool {
		_, _, ok, _ := f.Get(0, "after-remove", fsm.NowNanos())
		return ok
	})
}

func TestTransferLeadership(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	old := c.waitLeader(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Refused, not started, while no follower answers (hashicorp/raft#696).
	for i, h := range c.hosts {
		if i != old {
			c.faults.Partition(c.hosts[old].Addr(), h.Addr())
		}
	}
	eventually(t, 5*time.Second, "the transfer to be refused", func() bool {
		return errors.Is(c.hosts[old].Group(0).TransferLeadership(ctx, "", ""), ErrTransferRefused)
	})
	c.faults.HealAll()
	eventually(t, 10*time.Second, "a transfer to start and succeed", func() bool {
		old = c.leader(0)
		return old >= 0 && c.hosts[old].Group(0).TransferLeadership(ctx, "", "") == nil
	})
	eventually(t, 10*time.Second, "a different leader", func() bool {
		l := c.leader(0)
		return l >= 0 && l != old
	})
}

func TestServerIDCarriesIncarnation(t *testing.T) {
	id := ServerID("node-a", 42)
	node, inc, err := ParseServerID(id)
	if err != nil || node != "node-a" || inc != 42 {
		t.Fatalf("ParseServerID(%q) = %q, %d, %v", id, node, inc, err)
	}
	if _, _, err := ParseServerID("plain"); err == nil {
		t.Fatal("id without incarnation accepted")
	}
	if _, err := NewHost(Config{NodeID: "a/b"}); err == nil {
		t.Fatal("node id with '/' accepted")
	}
}

func TestVerifyLeader(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The leader verifies and a follower refuses, both in one leadership.
	l := -1
	c.onLeader(0, "the leader to verify its leadership and a follower to refuse", func(li int) error {
		l = li
		if err := c.hosts[li].Group(0).VerifyLeader(ctx); err != nil {
			return fmt.Errorf("leader: %w", err)
		}
		f := (li + 1) % len(c.hosts)
		err := c.hosts[f].Group(0).VerifyLeader(ctx)
		if !errors.Is(err, ErrNotLeader) && c.leader(0) != li {
			return fmt.Errorf("%w: follower %d: %v", errMoved, f, err)
		}
		if !errors.Is(err, ErrNotLeader) {
			return fmt.Errorf("follower: %v, want ErrNotLeader", err)
		}
		return nil
	})
	// Isolated, the leader cannot confirm its leadership.
	var others []string
	for i, h := range c.hosts {
		if i != l {
			others = append(others, h.Addr())
		}
	}
	c.faults.Isolate(c.hosts[l].Addr(), others...)
	short, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := c.hosts[l].Group(0).VerifyLeader(short); err == nil {
		t.Fatal("isolated leader verified its leadership")
	}
}

// Frames with a lazy flag keep it out of the kind the server sees.
func TestLazyFlagIsNotPartOfKind(t *testing.T) {
	if kindInstallSnapshot|lazyFlag == kindInstallSnapshot || lazyFlag&respFlag != 0 {
		t.Fatal("flag bits overlap")
	}
	for k := kindHello; k <= kindRetire; k++ {
		if k&(lazyFlag|respFlag) != 0 {
			t.Fatalf("kind %d uses a flag bit", k)
		}
	}
}

// Lossy, slow, duplicating and reordering links: every acknowledged write is
// applied, and every replica ends with the same state.
func TestWritesSurviveBadLinks(t *testing.T) {
	const groups, writes = 4, 25
	c := newTestCluster(t, 3, groups)
	c.waitLeaders(groups, 10*time.Second)
	rule := faultnet.Rule{Drop: 0.05, Duplicate: 0.2, Delay: time.Millisecond, Jitter: 3 * time.Millisecond}
	for _, a := range c.hosts {
		for _, b := range c.hosts {
			if a != b {
				c.faults.Set(a.Addr(), b.Addr(), rule)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for g := GroupID(0); g < groups; g++ {
		for i := -1; i < writes; i++ { // the Genesis first
			data := genesisData
			if i >= 0 {
				data, _ = fsm.Encode(fsm.SetOp(0, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i)), 0))
			}
			for {
				if time.Now().After(deadline) {
					t.Fatal("writes made no progress over bad links")
				}
				l := -1
				eventually(t, 10*time.Second, "a leader", func() bool { l = c.leader(g); return l >= 0 })
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := c.hosts[l].Group(g).Apply(ctx, data)
				cancel()
				if err == nil {
					break // acknowledged; retries of a failed attempt are idempotent Sets
				}
			}
		}
	}
	c.faults.HealAll()
	eventually(t, 15*time.Second, "replicas to converge with every acknowledged write", func() bool {
		for g := GroupID(0); g < groups; g++ {
			for i := range c.hosts {
				f := c.fsms[i][g]
				if f.Len() != writes {
					return false
				}
				for w := 0; w < writes; w++ {
					v, _, ok, _ := f.Get(0, fmt.Sprint("k", w), fsm.NowNanos())
					if !ok || string(v) != fmt.Sprint("v", w) {
						return false
					}
				}
			}
		}
		return true
	})
}

// A group whose log passes MaxLogBytes is snapshotted and its log trimmed.
func TestLogBytesBoundTriggersSnapshot(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	value := string(make([]byte, 64<<10))
	for i := 0; i < 128; i++ { // 8 MiB of entries: twice the default bound
		c.setViaLeader(0, fmt.Sprint("k", i%8), value)
	}
	// The leader now holds every entry in its log, as leader or as the
	// follower it was before an election.
	l := c.hosts[c.waitLeader(0)].Group(0)
	eventually(t, 10*time.Second, "the log to be trimmed below the bound", func() bool {
		return l.LogBytes() < 4<<20
	})
	if n, _ := l.logs.FirstIndex(); n <= 1 {
		t.Fatalf("log not trimmed: first index %d", n)
	}
}

// Leader changes are reported; shutting down one group and then the hosts
// leaves no goroutine behind.
func TestLeaderObservationAndCleanShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	type change struct {
		group  GroupID
		leader raft.ServerID
	}
	changes := make(chan change, 1024)
	c := newTestCluster(t, 3, 2, func(cfg *Config) {
		cfg.OnLeaderChange = func(g GroupID, l raft.ServerID) {
			select {
			case changes <- change{g, l}:
			default:
			}
		}
	})
	hosts := c.hosts
	if _, err := hosts[0].CreateGroup(0, fsm.New(fsm.Options{}), GroupOptions{}); !errors.Is(err, ErrGroupExists) {
		t.Fatalf("duplicate group: %v", err)
	}
	seen := map[GroupID]bool{}
	timeout := time.After(10 * time.Second)
	for len(seen) < 2 {
		select {
		case c := <-changes:
			if c.leader != "" {
				seen[c.group] = true
			}
		case <-timeout:
			t.Fatalf("leader observed for %d of 2 groups", len(seen))
		}
	}
	if hosts[0].LeaderChanges() == 0 {
		t.Fatal("LeaderChanges not counted")
	}
	if err := hosts[1].Group(1).Shutdown(); err != nil {
		t.Fatal(err)
	}
	if hosts[1].Group(1) != nil {
		t.Fatal("shut-down group still listed")
	}
	for _, h := range hosts {
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
	}
	if _, err := hosts[0].CreateGroup(5, fsm.New(fsm.Options{}), GroupOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateGroup after Close: %v", err)
	}
}

func TestCall(t *testing.T) {
	c := newTestCluster(t, 2, 0)
	c.hosts[1].SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		switch string(req) {
		case "slow":
			<-ctx.Done()
			return nil, ctx.Err()
		case "fail":
			return nil, errors.New("nope")
		}
		return append([]byte("echo:"), req...), nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Many calls in flight on one connection.
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		go func() {
			got, err := c.hosts[0].Call(ctx, c.hosts[1].ID(), c.hosts[1].Addr(), []byte(fmt.Sprint(i)))
			if err == nil && string(got) != fmt.Sprint("echo:", i) {
				err = fmt.Errorf("call %d got %q", i, got)
			}
			errs <- err
		}()
	}
	for i := 0; i < 50; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.hosts[0].Call(ctx, c.hosts[1].ID(), c.hosts[1].Addr(), []byte("fail")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("handler error: %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, err := c.hosts[0].Call(short, c.hosts[1].ID(), c.hosts[1].Addr(), []byte("slow")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("slow call: %v, want ErrTimeout", err)
	}
	if _, err := c.hosts[1].Call(ctx, c.hosts[0].ID(), c.hosts[0].Addr(), []byte("x")); err == nil || !strings.Contains(err.Error(), "no rpc handler") {
		t.Fatalf("call without handler: %v", err)
	}
}

// A duplicated or reordered request frame is served once: a write
// forwarded between nodes must not apply twice (the Jepsen-style suite's
// lossy-reorder scenario, which duplicates frames, found a history where it
// did).
func TestCallServedOnceOverDuplicatingLinks(t *testing.T) {
	c := newTestCluster(t, 2, 0)
	var served sync.Map // request -> *atomic.Int32
	c.hosts[1].SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		n, _ := served.LoadOrStore(string(req), new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		return req, nil
	})
	c.faults.Set(c.hosts[0].Addr(), c.hosts[1].Addr(), faultnet.Rule{Duplicate: 1, Jitter: 2 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.hosts[0].Call(ctx, c.hosts[1].ID(), c.hosts[1].Addr(), []byte(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	served.Range(func(k, v any) bool {
		if n := v.(*atomic.Int32).Load(); n != 1 {
			t.Errorf("request %s served %d times", k, n)
		}
		return true
	})
}

func TestReadIndexAndFSMIndex(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	// Every step through one leader; all again through the next should
	// leadership move (the write is idempotent, and a retry writes it
	// last again).
	c.onLeader(0, "a write, a read index and a barrier through one leader", func(li int) error {
		l := c.hosts[li].Group(0)
		if err := applyWrite(l, "k", "v"); err != nil {
			return err
		}
		wrote := c.fsms[li][0].Applied() // the write's index: nothing else is written
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		idx, err := l.ReadIndex(ctx)
		if err != nil {
			return err
		}
		if idx < wrote {
			t.Fatalf("read index %d below the acknowledged write at %d", idx, wrote)
		}
		// Barrier entries are not given to the FSM: FSMIndex maps past them.
		if err := l.Raft().Barrier(0).Error(); err != nil {
			return err
		}
		last := l.Raft().LastIndex()
		if got := l.FSMIndex(last); got != wrote {
			t.Fatalf("FSMIndex(%d) = %d, want the last command at %d", last, got, wrote)
		}
		if err := c.fsms[li][0].WaitApplied(ctx, l.FSMIndex(last)); err != nil {
			t.Fatal(err)
		}
		f := (li + 1) % 3
		_, err = c.hosts[f].Group(0).ReadIndex(ctx)
		if !errors.Is(err, ErrNotLeader) && c.leader(0) != li {
			return fmt.Errorf("%w: ReadIndex on follower %d: %v", errMoved, f, err)
		}
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("ReadIndex on a follower: %v", err)
		}
		return nil
	})
}

// After the log is compacted past the last command, FSMIndex asks for no
// wait: the snapshot covers it.
func TestFSMIndexAfterCompaction(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	c.waitLeaders(1, 10*time.Second)
	var l *Group
	li := -1
	// The write and the barriers through one leader; all again through the
	// next should leadership move (the write is idempotent).
	c.onLeader(0, "a write and 3 barriers through one leader", func(i int) error {
		li, l = i, c.hosts[i].Group(0)
		if err := applyWrite(l, "k", "v"); err != nil {
			return err
		}
		for i := 0; i < 3; i++ { // barriers only: no command after the write
			if err := l.Raft().Barrier(0).Error(); err != nil {
				return err
			}
		}
		return nil
	})
	rc := l.Raft().ReloadableConfig()
	rc.TrailingLogs = 0
	if err := l.Raft().ReloadConfig(rc); err != nil {
		t.Fatal(err)
	}
	if err := l.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	last := l.Raft().LastIndex()
	if first, _ := l.logs.FirstIndex(); first <= last && first != 0 {
		t.Logf("log still holds %d..%d", first, last)
	}
	got := l.FSMIndex(last)
	f := c.fsms[li][0]
	if got > f.Applied() {
		t.Fatalf("FSMIndex(%d) = %d, beyond what the FSM applied (%d): a read would wait forever", last, got, f.Applied())
	}
}

// A group whose raft finishes starting after Close began is shut down by
// CreateGroup (which then returns ErrClosed), not left running: Close
// returns and no goroutine is left (goleak checks at the end).
func TestCreateGroupRacingClose(t *testing.T) {
	for i := range 10 {
		h, err := NewHost(fastConfig("n0", nil))
		if err != nil {
			t.Fatal(err)
		}
		self := []raft.Server{{ID: h.ID(), Address: raft.ServerAddress(h.Addr())}}
		created := make(chan error, 1)
		go func() {
			for g := GroupID(0); ; g++ {
				if _, err := h.CreateGroup(g, fsm.New(fsm.Options{}), GroupOptions{Bootstrap: self}); err != nil {
					created <- err
					return
				}
			}
		}()
		// Let a few groups start, then close while more are starting.
		testutil.Eventually(t, 10*time.Second, "a group created", func() bool { return len(h.Groups()) > i%3 })
		closed := make(chan error, 1)
		go func() { closed <- h.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Close did not return")
		}
		if err := <-created; !errors.Is(err, ErrClosed) {
			t.Fatalf("CreateGroup after Close: %v", err)
		}
	}
}

// Close writes the failures the node's log collapser still holds counted:
// a peer failing when the node stopped is not left at its first line.
func TestCloseWritesCollapsedCounts(t *testing.T) {
	var out syncBuffer
	cfg := fastConfig("n0", nil)
	cfg.Logger = slog.New(slog.NewTextHandler(&out, nil))
	h, err := NewHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lg := rlog.New(h.log, "raft", slog.LevelWarn, h.collapse) // as each group's raft logs
	for range 3 {
		lg.Error("failed to heartbeat to", "peer", raft.ServerAddress("192.0.2.1:7000"), "error", "dial timeout")
	}
	if n := strings.Count(out.String(), "failed to heartbeat to"); n != 1 {
		t.Fatalf("%d lines before Close, want 1:\n%s", n, out.String())
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "repeated=2") {
		t.Errorf("no count of the 2 failures collapsed after Close:\n%s", out.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
