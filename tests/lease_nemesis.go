package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// The nemeses of leader leases: clocks that jump and stall, a leader cut
// off while it hands its leaderships away, a slow-clocked leader cut off.
// Clocks are the suite's (testhook.Clock), given to the nodes by the
// scenario's Tune.

// ClockJumps moves every range's leadership to the node whose clock runs
// slowest (waiting up to Pull) and cuts it off: the leader whose lease
// lasts longest in real time, among followers one of which runs fastest.
// In two windows of every three it also makes a node's lease clock jump by
// 100ms to 1s: mostly the isolated leader's clock standing still while its
// wall clock runs on (a suspended machine), else some node's clock leaping
// ahead. A leader whose clock stands still would hold its lease that much
// longer in real time unless it notices.
type ClockJumps struct {
	Pull    time.Duration
	windows int
}

func (*ClockJumps) Name() string { return "clock-jumps" }

func (m *ClockJumps) Start(c *Cluster, rng *rand.Rand) string {
	m.windows++
	var n *Node
	for _, o := range c.Live() {
		if o.Clock() != nil && (n == nil || o.Clock().Rate() < n.Clock().Rate()) {
			n = o
		}
	}
	if n == nil {
		return ""
	}
	leads := takeLeadership(c, n, m.Pull)
	c.Isolate(n)
	desc := fmt.Sprintf("isolate %s (clock rate %.3f, leads %d ranges)", n.Name, n.Clock().Rate(), leads)
	if m.windows%3 == 1 {
		return desc
	}
	d := time.Duration(100+rng.IntN(900)) * time.Millisecond
	how := "jumps ahead"
	if rng.IntN(4) == 0 {
		live := c.Live()
		n = live[rng.IntN(len(live))]
	} else {
		d, how = -d, "stands still"
	}
	n.Clock().Jump(d)
	return fmt.Sprintf("%s; %s's clock %s by %v", desc, n.Name, how, d.Abs())
}

func (*ClockJumps) Stop(c *Cluster) { c.Heal() }

// StallLeader stalls the lease clock of the node leading the most ranges
// for For, longer than a lease: every clock reading the node takes in that
// time is used only when the stall ends (a process descheduled between
// reading its clock and acting on it: between a read's lease check and its
// reply, between taking an AppendEntries' send time and sending it). In
// every other window it also cuts the node off; in the others, the stalled
// heartbeats let the majority elect other leaders meanwhile.
type StallLeader struct {
	For     time.Duration
	Pull    time.Duration // see IsolateLeader
	windows int
}

func (*StallLeader) Name() string { return "stall-leader" }

func (m *StallLeader) Start(c *Cluster, rng *rand.Rand) string {
	m.windows++
	n, most := busiest(c, nil)
	if n == nil || n.Clock() == nil {
		return ""
	}
	if m.Pull > 0 {
		most = takeLeadership(c, n, m.Pull)
	}
	desc := fmt.Sprintf("stall %s's clock for %v (leads %d ranges)", n.Name, m.For, most)
	if m.windows%2 == 0 {
		c.Isolate(n)
		desc += ", isolated"
	}
	n.Clock().Stall(m.For)
	return desc
}

func (*StallLeader) Stop(c *Cluster) { c.Heal() }

// TransferIsolate first moves every range's leadership to the node
// leading the most ranges (up to Within), so that all reads go through it.
// Then it cuts every message to that node (what it sends still arrives)
// and starts raw leadership transfers of each range it leads, without
// waiting: each target gets the TimeoutNow and wins at once, while the old
// leader hears of nothing. Once a target leads (polled, up to Within) it
// cuts the node's outbound traffic too. The old leader must stop serving
// lease reads when it starts the transfer: its lease would otherwise
// outlive its leadership by up to a lease.
type TransferIsolate struct{ Within time.Duration }

func (TransferIsolate) Name() string { return "transfer-isolate" }

func (m TransferIsolate) Start(c *Cluster, rng *rand.Rand) string {
	n, _ := busiest(c, nil)
	if n == nil {
		return ""
	}
	takeLeadership(c, n, m.Within)
	ranges := n.hook().Leads()
	c.CutInto(n)
	started := 0
	for _, r := range ranges {
		if n.hook().StartTransfer(r) == nil {
			started++
		}
	}
	moved := func() bool {
		for _, o := range c.Live() {
			if o != n && slices.ContainsFunc(o.hook().Leads(), func(r int) bool { return slices.Contains(ranges, r) }) {
				return true
			}
		}
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.Within)
	defer cancel()
	took := poll(ctx, 5*time.Millisecond, moved)
	c.Isolate(n)
	outcome := fmt.Sprintf("a target led after %v", took.Round(time.Millisecond))
	if ctx.Err() != nil {
		outcome = fmt.Sprintf("no target led within %v", m.Within)
	}
	return fmt.Sprintf("cut traffic into %s, started %d of %d transfers, %s; then isolated it", n.Name, started, len(ranges), outcome)
}

func (TransferIsolate) Stop(c *Cluster) { c.Heal() }

// leaseSettle is how long a nemesis waits, after moving leaderships to a
// node, before it cuts the node off: a new leader holds a lease only once
// a read has committed its term's barrier and a quorum has acked it since,
// which the workload's reads bring about within tens of milliseconds.
const leaseSettle = 150 * time.Millisecond

// takeLeadership moves every range's leadership to n (see
// Cluster.PullLeadership), waiting up to within, then leaves leaseSettle
// for the leases; it returns how many ranges n leads.
func takeLeadership(c *Cluster, n *Node, within time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	c.PullLeadership(ctx, n)
	cancel()
	t := time.NewTimer(leaseSettle)
	<-t.C
	return len(n.hook().Leads())
}

// poll checks cond every tick until it holds or ctx ends, and returns how
// long it waited.
func poll(ctx context.Context, tick time.Duration, cond func() bool) time.Duration {
	start := time.Now()
	t := time.NewTicker(tick)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return time.Since(start)
		case <-t.C:
		}
	}
	return time.Since(start)
}

// IsolateNode, over and over while the fault is on, cuts node Index off
// in two steps, from one other node for Lead, then from all for For, and
// heals for Rest (long enough for the reconciler to hand the node back the
// ranges placement has it lead, and for its leases to return).
//
// The first step sharpens the race that a lease with too little margin
// loses. The followers of an isolated leader elect another only once both
// have stopped following it: each forgets its leader when its heartbeat
// timer, firing every HeartbeatTimeout to twice that, finds it has heard
// nothing for a HeartbeatTimeout, and until both have, pre-votes fail.
// After the first step one has forgotten it already, and the election
// follows the other's first timer: about three times as many ranges elect
// a new leader within half a HeartbeatTimeout of the second step as when
// both timers had to fire.
type IsolateNode struct {
	Index           int
	Lead, For, Rest time.Duration

	stop  chan struct{}
	wg    sync.WaitGroup
	leads []int // per cycle of the last window
}

func (*IsolateNode) Name() string { return "isolate-node" }

// Summary says how many ranges the node led in each cycle.
func (m *IsolateNode) Summary() string {
	return fmt.Sprintf("%d cycles, leading %v ranges", len(m.leads), m.leads)
}

func (m *IsolateNode) Start(c *Cluster, rng *rand.Rand) string {
	n := c.Nodes[m.Index]
	var others []*Node
	for _, o := range c.Nodes {
		if o != n {
			others = append(others, o)
		}
	}
	first := others[rng.IntN(len(others))]
	m.stop, m.leads = make(chan struct{}), nil
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		wait := func(d time.Duration) bool {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-m.stop:
				return false
			case <-t.C:
				return true
			}
		}
		for {
			m.leads = append(m.leads, len(n.hook().Leads()))
			c.Cut(n, first)
			if !wait(m.Lead) {
				return
			}
			c.Isolate(n)
			if !wait(m.For) {
				return
			}
			c.Heal()
			if !wait(m.Rest) {
				return
			}
		}
	}()
	return fmt.Sprintf("cut %s off from %s for %v, then from all for %v, heal for %v", n.Name, first.Name, m.Lead, m.For, m.Rest)
}

func (m *IsolateNode) Stop(c *Cluster) {
	close(m.stop)
	m.wg.Wait()
	c.Heal()
}
