package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
)

// Nemesis injects one kind of fault. Start begins a fault and describes
// it; Stop ends it. The runner alternates them, so a nemesis may assume
// Stop follows each Start. A nemesis whose fault cannot be undone (a
// crash) makes Stop a no-op and keeps count itself.
type Nemesis interface {
	Name() string
	Start(c *Cluster, rng *rand.Rand) string
	Stop(c *Cluster)
}

// NoFaults is the baseline.
type NoFaults struct{}

func (NoFaults) Name() string                      { return "none" }
func (NoFaults) Start(*Cluster, *rand.Rand) string { return "" }
func (NoFaults) Stop(*Cluster)                     {}

func names(nodes []*Node) string {
	var s []string
	for _, n := range nodes {
		s = append(s, n.Name)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func shuffled(nodes []*Node, rng *rand.Rand) []*Node {
	out := append([]*Node(nil), nodes...)
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// IsolateLeader cuts off the node that leads the most ranges: a leader in a
// minority, while the majority elects another. With Pull, it first moves
// every range's leadership to that node (waiting up to Pull), so that
// every range has a leader cut off, and every read goes through one.
type IsolateLeader struct{ Pull time.Duration }

func (IsolateLeader) Name() string { return "isolate-leader" }

func (m IsolateLeader) Start(c *Cluster, rng *rand.Rand) string {
	_, desc := isolateBusiestNode(c, nil, m.Pull)
	return desc
}

// isolateBusiest cuts off the live node, other than except, that leads
// the most ranges, and describes it ("" when there is none).
func isolateBusiest(c *Cluster, except *Node) string {
	_, desc := isolateBusiestNode(c, except, 0)
	return desc
}

// isolateBusiestNode is isolateBusiest, which also returns the node; with
// pull > 0 it first moves every range's leadership to it (takeLeadership).
func isolateBusiestNode(c *Cluster, except *Node, pull time.Duration) (*Node, string) {
	best, most := busiest(c, except)
	if best == nil {
		return nil, ""
	}
	if pull > 0 {
		most = takeLeadership(c, best, pull)
	}
	c.Isolate(best)
	return best, fmt.Sprintf("isolate %s (leads %d ranges)", best.Name, most)
}

// busiest is the live node, other than except, that leads the most
// ranges, and how many it leads.
func busiest(c *Cluster, except *Node) (*Node, int) {
	var best *Node
	most := -1
	leads := c.Leaders()
	for _, n := range c.Live() {
		if n != except && leads[n] > most {
			best, most = n, leads[n]
		}
	}
	return best, most
}

func (IsolateLeader) Stop(c *Cluster) { c.Heal() }

// RandomHalves splits the nodes at random into a minority and a majority.
type RandomHalves struct{}

func (RandomHalves) Name() string { return "random-halves" }

func (RandomHalves) Start(c *Cluster, rng *rand.Rand) string {
	nodes := shuffled(c.Nodes, rng)
	k := len(nodes) / 2
	c.Partition(nodes[:k], nodes[k:])
	return fmt.Sprintf("halves %s | %s", names(nodes[:k]), names(nodes[k:]))
}

func (RandomHalves) Stop(c *Cluster) { c.Heal() }

// MajoritiesRing (5 nodes): each node sees only its two neighbours in a
// random ring, so every node is in a majority but no two agree which.
type MajoritiesRing struct{}

func (MajoritiesRing) Name() string { return "majorities-ring" }

func (MajoritiesRing) Start(c *Cluster, rng *rand.Rand) string {
	ring := shuffled(c.Nodes, rng)
	n := len(ring)
	for i := range ring {
		for j := range ring {
			d := (j - i + n) % n
			if i < j && d != 1 && d != n-1 {
				c.Cut(ring[i], ring[j])
			}
		}
	}
	return "ring " + names(ring)
}

func (MajoritiesRing) Stop(c *Cluster) { c.Heal() }

// Bridge (5 nodes): two sides of two nodes, and one node that sees both.
type Bridge struct{}

func (Bridge) Name() string { return "bridge" }

func (Bridge) Start(c *Cluster, rng *rand.Rand) string {
	nodes := shuffled(c.Nodes, rng)
	k := len(nodes) / 2
	left, bridge, right := nodes[:k], nodes[k], nodes[k+1:]
	c.Partition(left, right)
	return fmt.Sprintf("bridge %s over %s | %s", bridge.Name, names(left), names(right))
}

func (Bridge) Stop(c *Cluster) { c.Heal() }

// BadLinks makes every link lossy, duplicating and reordering.
type BadLinks struct{ Rule faultnet.Rule }

func (BadLinks) Name() string { return "lossy-reorder" }

func (b BadLinks) Start(c *Cluster, rng *rand.Rand) string {
	for _, x := range c.Nodes {
		for _, y := range c.Nodes {
			if x != y {
				c.SetLink(x, y, b.Rule)
			}
		}
	}
	r := b.Rule
	return fmt.Sprintf("links drop %.0f%% dup %.0f%% delay %v+%v", 100*r.Drop, 100*r.Duplicate, r.Delay, r.Jitter)
}

func (BadLinks) Stop(c *Cluster) { c.Heal() }

// CrashMinority crashes one node, at most Max in a run (state gone; no
// restart until the restart issue adds it).
type CrashMinority struct {
	Max     int
	crashed int
}

func (*CrashMinority) Name() string { return "crash-minority" }

func (m *CrashMinority) Start(c *Cluster, rng *rand.Rand) string {
	live := c.Live()
	if m.crashed >= m.Max || len(live) <= len(c.Nodes)/2+1 {
		return ""
	}
	n := live[rng.IntN(len(live))]
	c.Crash(n)
	m.crashed++
	return "crash " + n.Name
}

func (*CrashMinority) Stop(*Cluster) {}

// RestartSameAddress crashes one node (kill -9: its in-memory state is
// gone) and restarts it at once on the same addresses under the same
// NodeID, as a supervisor would, then cuts off the node leading the most
// ranges: the others elect leaders while the restarted node's replicas are
// still empty, and Raft traffic meant for its previous incarnation reaches
// the new one. Stop heals the partition; the restarted node stays.
//
// It restarts a node only once the cluster is ready again (every range
// with its replicas, up to ReadyWait): with in-memory logs, a second node
// lost before the first one's replicas are replaced loses the ranges both
// held, which is documented data loss, not a bug to find.
type RestartSameAddress struct{ ReadyWait time.Duration }

func (RestartSameAddress) Name() string { return "restart-same-address" }

func (m RestartSameAddress) Start(c *Cluster, rng *rand.Rand) string {
	live := c.Live()
	n := live[rng.IntN(len(live))]
	ctx, cancel := context.WithTimeout(context.Background(), m.ReadyWait)
	defer cancel()
	for _, o := range live {
		if err := o.DB().WaitReady(ctx); err != nil {
			return ""
		}
	}
	c.Crash(n)
	desc := "crash and restart " + n.Name
	if err := c.Restart(n); err != nil {
		return desc + ": " + err.Error()
	}
	if cut := isolateBusiest(c, n); cut != "" {
		desc += ", " + cut
	}
	return desc
}

func (RestartSameAddress) Stop(c *Cluster) { c.Heal() }

// Pause holds all of one node's traffic, both ways, while its clocks run
// (a stopped process: timers fire, nothing gets in or out), and delivers
// it when the pause ends.
type Pause struct{ For time.Duration }

func (Pause) Name() string { return "pause" }

func (p Pause) Start(c *Cluster, rng *rand.Rand) string {
	live := c.Live()
	n := live[rng.IntN(len(live))]
	until := time.Now().Add(p.For)
	for _, o := range c.Nodes {
		if o != n {
			c.SetLink(n, o, faultnet.Rule{HoldUntil: until})
			c.SetLink(o, n, faultnet.Rule{HoldUntil: until})
		}
	}
	return fmt.Sprintf("pause %s for %v", n.Name, p.For)
}

func (Pause) Stop(c *Cluster) { c.Heal() }

// TransferStorm moves leaderships of random ranges every Every.
type TransferStorm struct {
	Every  time.Duration
	Groups int

	stop         chan struct{}
	wg           sync.WaitGroup
	tried, moved int
}

// Summary says how many transfers the last window tried and completed.
func (s *TransferStorm) Summary() string {
	return fmt.Sprintf("%d of %d transfers completed", s.moved, s.tried)
}

func (*TransferStorm) Name() string { return "transfer-storm" }

func (s *TransferStorm) Start(c *Cluster, rng *rand.Rand) string {
	s.stop = make(chan struct{})
	s.tried, s.moved = 0, 0
	seed := rng.Uint64()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		r := rand.New(rand.NewPCG(seed, 1))
		t := time.NewTicker(s.Every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.TransferLeadership(ctx, r.IntN(s.Groups))
			cancel()
			s.tried++
			if err == nil {
				s.moved++
			}
		}
	}()
	return fmt.Sprintf("leadership transfers every %v", s.Every)
}

func (s *TransferStorm) Stop(*Cluster) {
	close(s.stop)
	s.wg.Wait()
}

// sortedWindows orders windows by start.
func sortedWindows(ws []Window) {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Start < ws[j].Start })
}

// Mixed picks one of its nemeses at random for each window, or, InTurn,
// each in turn.
type Mixed struct {
	Of     []Nemesis
	InTurn bool
	cur    Nemesis
	turn   int
}

func (*Mixed) Name() string { return "mixed" }

func (m *Mixed) Start(c *Cluster, rng *rand.Rand) string {
	if m.InTurn {
		m.cur = m.Of[m.turn%len(m.Of)]
		m.turn++
	} else {
		m.cur = m.Of[rng.IntN(len(m.Of))]
	}
	return m.cur.Name() + ": " + m.cur.Start(c, rng)
}

func (m *Mixed) Stop(c *Cluster) {
	m.cur.Stop(c)
	m.cur = nil
}

// Both runs two nemeses at once (the second's Start after the first's).
type Both [2]Nemesis

func (b *Both) Name() string { return b[0].Name() + "+" + b[1].Name() }

func (b *Both) Start(c *Cluster, rng *rand.Rand) string {
	return b[0].Start(c, rng) + "; " + b[1].Start(c, rng)
}

func (b *Both) Stop(c *Cluster) {
	b[1].Stop(c)
	b[0].Stop(c)
}

// Summary joins the summaries of those that have one.
func (b *Both) Summary() string {
	var out []string
	for _, n := range b {
		if sm, ok := n.(interface{ Summary() string }); ok {
			out = append(out, sm.Summary())
		}
	}
	return strings.Join(out, "; ")
}
