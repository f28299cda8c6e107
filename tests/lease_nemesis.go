package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// The nemeses of leader leases: clocks that jump and stall, a leader cut
// off while it hands its leaderships away, a slow-clocked leader cut off.
// Clocks are the suite's (testhook.Clock), given to the nodes by the
// scenario's Tune.

// ClockJumps cuts off the node leading the most ranges, as IsolateLeader,
// and in every other window also makes one node's lease clock jump by
// 100ms to 1s, most often the isolated leader's: forward, or standing
// still while its wall clock runs on (a suspended machine). A leader whose
// clock stands still would hold its lease that much longer in real time
// unless it notices the jump.
type ClockJumps struct{ windows int }

func (*ClockJumps) Name() string { return "clock-jumps" }

func (m *ClockJumps) Start(c *Cluster, rng *rand.Rand) string {
	m.windows++
	n, desc := isolateBusiestNode(c, nil)
	if n == nil || m.windows%2 == 1 {
		return desc
	}
	if rng.IntN(3) == 0 { // now and then a follower's clock
		live := c.Live()
		n = live[rng.IntN(len(live))]
	}
	clk := n.Clock()
	if clk == nil {
		return desc
	}
	d := time.Duration(100+rng.IntN(900)) * time.Millisecond
	how := "jumps ahead"
	if rng.IntN(2) == 0 {
		d, how = -d, "stands still"
	}
	clk.Jump(d)
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
	windows int
}

func (*StallLeader) Name() string { return "stall-leader" }

func (m *StallLeader) Start(c *Cluster, rng *rand.Rand) string {
	m.windows++
	n, most := busiest(c, nil)
	if n == nil || n.Clock() == nil {
		return ""
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

// TransferIsolate cuts every message to the node leading the most ranges
// (what it sends still arrives), then starts raw leadership transfers of
// each range it leads, without waiting: each target gets the TimeoutNow
// and wins at once, while the old leader hears of nothing. Once a target
// leads (polled, up to Within) it cuts the node's outbound traffic too.
// The old leader must stop serving lease reads when it starts the
// transfer: its lease would otherwise outlive its leadership by up to a
// lease.
type TransferIsolate struct{ Within time.Duration }

func (TransferIsolate) Name() string { return "transfer-isolate" }

func (m TransferIsolate) Start(c *Cluster, rng *rand.Rand) string {
	n, _ := busiest(c, nil)
	if n == nil {
		return ""
	}
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

// IsolateNode cuts off node Index whenever it leads ranges (no fault in a
// window where it leads none).
type IsolateNode struct{ Index int }

func (IsolateNode) Name() string { return "isolate-node" }

func (m IsolateNode) Start(c *Cluster, rng *rand.Rand) string {
	n := c.Nodes[m.Index]
	leads := len(n.hook().Leads())
	if n.Crashed() || leads == 0 {
		return ""
	}
	c.Isolate(n)
	return fmt.Sprintf("isolate %s (leads %d ranges)", n.Name, leads)
}

func (IsolateNode) Stop(c *Cluster) { c.Heal() }
