package raftgroup

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// applyWaiter waits for a group's Apply futures on behalf of callers that
// must also watch a context (a raft future offers no channel to select on).
// One goroutine per group does it for all callers, from the group's start
// to its shutdown, instead of one goroutine per call: gridkv keeps one Apply
// in flight per group, so a goroutine alive only while futures are owed
// would still be one per call. Raft answers a replica's Apply futures in
// the order it took them (in log order on a leader, at once when it
// refuses), so the goroutine waits for them in turn; a finished future is
// reported at most as late as the one queued before it.
//
// Threading: wait is safe for concurrent use; start and stop are called
// once each, by the group.
type applyWaiter struct {
	wake chan struct{} // one slot: work was queued
	stop chan struct{}
	mu   struct {
		sync.Mutex
		queue   []pendingApply
		running bool // the goroutine takes new work
	}
}

type pendingApply struct {
	f    raft.Future
	done chan error // one slot: the caller may have left
}

// start runs the waiter's goroutine under h (none if h is closing).
func (w *applyWaiter) start(h *Host) {
	w.wake, w.stop = make(chan struct{}, 1), make(chan struct{})
	w.mu.Lock()
	defer w.mu.Unlock()
	if h.spawn(w.run) {
		w.mu.running = true
		h.mux.stats.goroutines.Add(1)
	}
}

// close makes the goroutine answer the callers already queued and return;
// later callers wait for their futures themselves. Call it after raft has shut down: raft
// answers every future by then.
func (w *applyWaiter) close() {
	w.mu.Lock()
	running := w.mu.running
	w.mu.running = false
	w.mu.Unlock()
	if running {
		close(w.stop)
	}
}

// wait returns f's error (mapped, see mapErr), or ErrTimeout once ctx ends.
func (w *applyWaiter) wait(ctx context.Context, f raft.Future) error {
	if ctx.Done() == nil {
		return mapErr(f.Error())
	}
	done := make(chan error, 1)
	w.mu.Lock()
	if !w.mu.running {
		// Stopped: raft has shut down and answers f at once (or the host
		// closed before the group started, as Group.wait assumes too).
		w.mu.Unlock()
		return mapErr(f.Error())
	}
	w.mu.queue = append(w.mu.queue, pendingApply{f: f, done: done})
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // already woken
	}
	select {
	case err := <-done:
		return mapErr(err)
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	}
}

func (w *applyWaiter) run() {
	for {
		select {
		case <-w.wake:
			w.answerQueued()
		case <-w.stop:
			w.answerQueued()
			return
		}
	}
}

// answerQueued answers the queued callers, in order, until none is left.
func (w *applyWaiter) answerQueued() {
	for {
		w.mu.Lock()
		if len(w.mu.queue) == 0 {
			w.mu.queue = nil
			w.mu.Unlock()
			return
		}
		p := w.mu.queue[0]
		w.mu.queue[0] = pendingApply{}
		w.mu.queue = w.mu.queue[1:]
		w.mu.Unlock()
		p.done <- p.f.Error()
	}
}
