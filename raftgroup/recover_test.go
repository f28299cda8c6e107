package raftgroup

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/testutil"
)

// A group whose other two replicas are gone is started again, as a new
// group, from the survivor's replica (GroupOptions.RecoverFrom): it leads
// alone, its state machine holds every write the survivor had applied,
// each once (a counter incremented before and after a snapshot), its
// indexes go on from the old group's, and it takes writes and new
// replicas; the old replica is left as it was.
func TestRecoverFromSurvivor(t *testing.T) {
	// 80 writes through one leader, the increments not idempotent (the
	// count must come out exact, so they are not retried elsewhere): slow
	// timings keep a stall from electing another.
	c := newTestCluster(t, 3, 1, slowTimings)
	c.waitLeaders(1, 15*time.Second)
	l := c.waitLeader(0)
	lg := c.hosts[l].Group(0)
	incr, _ := fsm.Encode(fsm.IncrOp(0, "count", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	survivor := (l + 1) % 3
	for i := 0; i < 40; i++ {
		set(t, lg, fmt.Sprint("k", i), "v")
		if _, err := lg.Apply(ctx, incr); err != nil {
			t.Fatal(err)
		}
		if i == 20 {
			// Entries both inside and after the survivor's snapshot, and
			// only those after it in its log.
			sr := c.hosts[survivor].Group(0).Raft()
			rc := sr.ReloadableConfig()
			rc.TrailingLogs = 0
			if err := sr.ReloadConfig(rc); err != nil {
				t.Fatal(err)
			}
			if err := sr.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := c.fsms[survivor][0]
	testutil.Eventually(t, 10*time.Second, "the survivor to apply every write", func() bool {
		v, _, ok, _ := f.Get(0, "count", fsm.NowNanos())
		return ok && string(v) == "40"
	})
	for i, h := range c.hosts {
		if i != survivor {
			_ = h.Close()
		}
	}
	h := c.hosts[survivor]
	old := h.Group(0)
	lastIndex, lastTerm := old.LastLog()
	if first, _ := old.logs.FirstIndex(); first <= 1 {
		t.Fatalf("the survivor's log starts at %d: the test needs it trimmed by a snapshot", first)
	}
	nf := fsm.New(fsm.Options{})
	g, err := h.CreateGroup(1<<16, nf, GroupOptions{RecoverFrom: old})
	if err != nil {
		t.Fatal(err)
	}
	if i, term := g.LastLog(); i < lastIndex || term < lastTerm {
		t.Fatalf("LastLog %d, %d after the recovery; %d, %d before", i, term, lastIndex, lastTerm)
	}
	if h.Group(0) != old {
		t.Fatal("the old replica is gone")
	}
	if v, _, _, _ := f.Get(0, "count", fsm.NowNanos()); string(v) != "40" {
		t.Fatalf("the old replica's count = %s, want 40", v)
	}
	testutil.Eventually(t, 15*time.Second, "the new group to lead alone", g.IsLeader)
	servers, err := g.Configuration()
	if err != nil || len(servers) != 1 || servers[0].ID != h.ID() || servers[0].Suffrage != raft.Voter {
		t.Fatalf("configuration %v, %v; want this replica alone", servers, err)
	}
	for i := 0; i < 40; i++ {
		if _, _, ok, _ := nf.Get(0, fmt.Sprint("k", i), fsm.NowNanos()); !ok {
			t.Fatalf("k%d lost", i)
		}
	}
	res := set(t, g, "after", "v")
	if res.Version <= lastIndex {
		t.Fatalf("a write after the recovery has version %d, not above the old group's last index %d", res.Version, lastIndex)
	}
	if _, err := g.Apply(ctx, incr); err != nil {
		t.Fatal(err)
	}
	if v, _, _, _ := nf.Get(0, "count", fsm.NowNanos()); string(v) != "41" {
		t.Fatalf("count = %s after one more increment, want 41", v)
	}
	if v, _, _, _ := f.Get(0, "count", fsm.NowNanos()); string(v) != "40" {
		t.Fatalf("the old replica's count = %s, want 40 still", v)
	}

	// A new replica joins and catches up.
	extra, err := NewHost(c.config("n3"))
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	ef := fsm.New(fsm.Options{})
	if _, err := extra.CreateGroup(1<<16, ef, GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := g.AddVoter(ctx, extra.ID(), extra.Addr()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the new replica to catch up", func() bool {
		v, _, _, _ := ef.Get(0, "count", fsm.NowNanos())
		_, _, ok, _ := ef.Get(0, "after", fsm.NowNanos())
		return ok && string(v) == "41"
	})
}

// A group recovered from a replica holds that replica's leases off (the
// new group may take writes it never sees); when the caller abandons the
// new group and keeps the old replica, the old one leases again.
func TestAbandonedRecoveryGivesLeasesBack(t *testing.T) {
	c := newTestCluster(t, 1, 1)
	c.waitLeaders(1, 10*time.Second)
	old := c.hosts[0].Group(0)
	g, err := c.hosts[0].CreateGroup(1<<16, fsm.New(fsm.Options{}), GroupOptions{RecoverFrom: old})
	if err != nil {
		t.Fatal(err)
	}
	if n := old.lease.changing.Load(); n != 1 {
		t.Fatalf("the old replica's lease holds = %d while recovered from, want 1", n)
	}
	if err := g.Abandon(); err != nil {
		t.Fatal(err)
	}
	if n := old.lease.changing.Load(); n != 0 {
		t.Fatalf("the old replica's lease holds = %d after the recovery was abandoned, want 0", n)
	}
	if err := g.Abandon(); err != nil { // twice: no second release
		t.Fatal(err)
	}
	if n := old.lease.changing.Load(); n != 0 {
		t.Fatalf("lease holds = %d after a second Abandon, want 0", n)
	}
}
