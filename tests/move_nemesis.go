package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/gridkv/gridkv/placement"
)

// RangeMoveStorm moves hash ranges between replica groups while it is on:
// every Every, the range of one of the workload's keys (named k0..k<Keys-1>,
// as Workload names them), or now and then any range, to a random other
// group, asked of a random live node (testhook.Node.MoveRange: the range's
// source group decides). One move at a time, each bounded by MoveTimeout.
// With Also, half the keyed moves move the range of one of those keys
// instead (the scanners' steady keys).
type RangeMoveStorm struct {
	Every       time.Duration
	Keys        int
	Also        []string
	MoveTimeout time.Duration

	stop chan struct{}
	wg   sync.WaitGroup
	mu   struct {
		sync.Mutex
		tried, moved, rolledBack int
	}
}

func (*RangeMoveStorm) Name() string { return "range-move-storm" }

// Summary says how many moves the last window tried and completed.
func (s *RangeMoveStorm) Summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d of %d range moves completed, %d refused or rolled back", s.mu.moved, s.mu.tried, s.mu.rolledBack)
}

func (s *RangeMoveStorm) Start(c *Cluster, rng *rand.Rand) string {
	s.stop = make(chan struct{})
	s.mu.Lock()
	s.mu.tried, s.mu.moved, s.mu.rolledBack = 0, 0, 0
	s.mu.Unlock()
	seed := rng.Uint64()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		r := rand.New(rand.NewPCG(seed, 2))
		t := time.NewTicker(s.Every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			live := c.Live()
			if len(live) == 0 {
				continue
			}
			hook := live[r.IntN(len(live))].hook()
			if hook == nil {
				continue
			}
			rg := r.IntN(c.ranges())
			if s.Keys > 0 && r.IntN(4) > 0 {
				key := fmt.Sprint("k", r.IntN(s.Keys))
				if len(s.Also) > 0 && r.IntN(2) == 0 {
					key = s.Also[r.IntN(len(s.Also))]
				}
				rg = placement.RangeOf(key, c.ranges())
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.MoveTimeout)
			err := hook.MoveRange(ctx, rg, r.IntN(hook.Groups()))
			cancel()
			s.mu.Lock()
			s.mu.tried++
			if err == nil {
				s.mu.moved++
			} else if ctx.Err() == nil {
				s.mu.rolledBack++
			}
			s.mu.Unlock()
		}
	}()
	return fmt.Sprintf("range moves every %v", s.Every)
}

func (s *RangeMoveStorm) Stop(*Cluster) {
	close(s.stop)
	s.wg.Wait()
}

// OwnershipSettled checks the handoff design's I6 on the live nodes: no
// range in a handoff state (Frozen, Incoming, Sealed) at any group's
// leader, and each of the cluster's ranges Owned by exactly one group, as
// the groups' leaders have applied. It says what is wrong otherwise.
func (c *Cluster) OwnershipSettled() (bool, string) {
	owners := map[int][]int{} // range -> groups owning it
	led := map[int]bool{}
	for _, n := range c.Live() {
		h := n.hook()
		if h == nil {
			continue
		}
		for _, rep := range h.Ranges() {
			if !rep.Leader || led[rep.Range] {
				continue
			}
			led[rep.Range] = true
			if rep.Moving > 0 {
				return false, fmt.Sprintf("group %d holds %d ranges in a handoff", rep.Range, rep.Moving)
			}
			for _, r := range rep.Owned {
				owners[r] = append(owners[r], rep.Range)
			}
		}
	}
	if len(led) < c.groups() {
		return false, fmt.Sprintf("%d of %d groups have a leader", len(led), c.groups())
	}
	var bad []string
	for r := range c.ranges() {
		if gs := owners[r]; len(gs) != 1 {
			sort.Ints(gs)
			bad = append(bad, fmt.Sprintf("range %d owned by groups %v", r, gs))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 5 {
			bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
		}
		return false, fmt.Sprint(bad)
	}
	return true, ""
}

// WaitOwnershipSettled polls OwnershipSettled until it holds or timeout
// passes.
func (c *Cluster) WaitOwnershipSettled(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := c.OwnershipSettled()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ownership not settled %v after the heal (I6): %s", timeout, why)
		}
		<-time.After(50 * time.Millisecond)
	}
}
