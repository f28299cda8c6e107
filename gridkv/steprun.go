package gridkv

import (
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The reconciler's steps run off its loop (reconcile), on goroutines the
// step runner starts and the DB waits for at Close: at most
// maxParallelSteps groups at once, never two steps of one group at once.
// So a node that drops packets rather than refusing them, whose steps each
// wait out Timing.StepTimeout, no longer holds up every group this node
// leads in turn. A target whose step used up its StepTimeout is
// remembered as slow for a while: groups whose steps go only to slow
// targets are started after the others and hold at most half of the
// runner's goroutines, so the other groups wait at most one step for a
// goroutine.

// maxParallelSteps bounds the groups whose steps run at once on one node.
// A step is mostly waiting (an RPC, a Raft commit), so a few more than
// the cores cost little; more would only queue on the same peers.
const maxParallelSteps = 8

// slowForSteps is how long, in StepTimeouts, a target counts as slow after
// a step to it timed out. While steps to it are pending, one of them is in
// flight and, timing out, marks it again.
const slowForSteps = 2

// groupWork is what one group this node leads needs: the configuration
// changes to try, in order (nextSteps), or, with none, to become sole.
type groupWork struct {
	r   int
	rep *replica
	// servers is the configuration the steps were worked out from
	// (runGroup makes none if it has changed).
	servers []raft.Server
	steps   []confStep
	sole    bool
}

// stale reports whether w's group has a configuration other than the one
// w's steps were worked out from. (hashicorp/raft's GetConfiguration
// gives no log index, so the servers are compared.)
func (w groupWork) stale() bool {
	servers, err := w.rep.group.Configuration()
	return err != nil || !slices.Equal(servers, w.servers)
}

// toSlow reports whether w's first step goes to a slow target. Once
// pickWork has ordered w's steps, slow targets last, all of them do then.
func (w groupWork) toSlow(slow map[raft.ServerID]bool) bool {
	return len(w.steps) > 0 && slow[w.steps[0].to.id]
}

// pickWork is the step runner's decision for one pass, as a pure function:
// of work (in the order to prefer), the groups to start now, each with its
// steps reordered so that those to slow targets come last (the steps a
// group lists are alternatives, each safe on its own; their order only
// says which to try first). Groups in busy are skipped (a step of theirs
// is in flight). At most free groups are picked, the ones whose first
// step goes to a healthy target first, and at most slowFree of the others.
func pickWork(work []groupWork, busy map[int]bool, slow map[raft.ServerID]bool, free, slowFree int) []groupWork {
	var healthy, toSlow []groupWork
	for _, w := range work {
		if busy[w.r] {
			continue
		}
		if len(slow) > 0 {
			w.steps = slices.Clone(w.steps)
			slices.SortStableFunc(w.steps, func(a, b confStep) int {
				switch sa, sb := slow[a.to.id], slow[b.to.id]; {
				case sa == sb:
					return 0
				case sb:
					return -1
				}
				return 1
			})
		}
		if w.toSlow(slow) {
			toSlow = append(toSlow, w)
		} else {
			healthy = append(healthy, w)
		}
	}
	free = max(free, 0)
	out := slices.Clone(healthy[:min(len(healthy), free)])
	return append(out, toSlow[:min(len(toSlow), max(slowFree, 0), free-len(out))]...)
}

// stepRunner runs the reconciler's steps (stepRunner.startAll).
//
// Threading: safe for concurrent use; run by the reconciler's loop, and
// told of steps' outcomes by its goroutines (noteTarget).
type stepRunner struct {
	wg      *sync.WaitGroup // the DB's: Close waits for the runner's goroutines
	limit   int             // groups whose steps run at once
	slowFor time.Duration   // how long a target whose step timed out counts as slow

	mu struct {
		sync.Mutex
		busy                 map[int]bool // groups whose steps are in flight
		running, slowRunning int          // of them, and of them those started toward a slow target
		// slow is the targets whose last step timed out, and until when
		// they count as slow.
		slow map[raft.ServerID]time.Time
	}
}

func newStepRunner(wg *sync.WaitGroup, limit int, slowFor time.Duration) *stepRunner {
	s := &stepRunner{wg: wg, limit: limit, slowFor: slowFor}
	s.mu.busy = map[int]bool{}
	s.mu.slow = map[raft.ServerID]time.Time{}
	return s
}

// startAll starts run, on a goroutine of its own, for the groups of work
// that pickWork picks; it does not wait for them. A group with a step in
// flight is left out: a later pass has it again if it still needs a step.
func (s *stepRunner) startAll(work []groupWork, run func(groupWork)) {
	if len(work) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	slow := map[raft.ServerID]bool{}
	for id, until := range s.mu.slow {
		if now.Before(until) {
			slow[id] = true
		} else {
			delete(s.mu.slow, id)
		}
	}
	slowLimit := max(s.limit/2, 1)
	for _, w := range pickWork(work, s.mu.busy, slow, s.limit-s.mu.running, slowLimit-s.mu.slowRunning) {
		toSlow := w.toSlow(slow)
		s.mu.busy[w.r] = true
		s.mu.running++
		if toSlow {
			s.mu.slowRunning++
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.finish(w.r, toSlow)
			run(w)
		}()
	}
}

func (s *stepRunner) finish(r int, toSlow bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.busy, r)
	s.mu.running--
	if toSlow {
		s.mu.slowRunning--
	}
}

// noteTarget records how a step to target ended: it used up its
// StepTimeout (timedOut), or it ended before.
func (s *stepRunner) noteTarget(target raft.ServerID, timedOut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if timedOut {
		s.mu.slow[target] = time.Now().Add(s.slowFor)
	} else {
		delete(s.mu.slow, target)
	}
}
