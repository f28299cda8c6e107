package fsm

import "context"

type waiter struct {
	index uint64
	ch    chan struct{}
}

// WaitApplied returns once the state machine has applied the log entry at
// index (or a later one), or when ctx ends, with ctx's error.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	if f.applied.Load() >= index {
		return nil
	}
	ch := make(chan struct{})
	// Count ourselves before checking again: advance stores applied, then
	// reads nwait, so either it sees us or we see its index.
	f.nwait.Add(1)
	f.waitMu.Lock()
	if f.applied.Load() >= index {
		f.waitMu.Unlock()
		f.nwait.Add(-1)
		return nil
	}
	f.waiters = append(f.waiters, waiter{index: index, ch: ch})
	f.waitMu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		f.waitMu.Lock()
		for i, w := range f.waiters {
			if w.ch == ch {
				f.waiters = append(f.waiters[:i], f.waiters[i+1:]...)
				f.nwait.Add(-1)
				break
			}
		}
		f.waitMu.Unlock()
		select {
		case <-ch: // released while we were giving up
			return nil
		default:
			return ctx.Err()
		}
	}
}

// advance records index as applied and releases the waiters it satisfies.
func (f *FSM) advance(index uint64) {
	var due int64
	if len(f.due) > 0 {
		due = f.due[0].expiries[0].at
	}
	f.nextDue.Store(due)
	f.applied.Store(index)
	if f.nwait.Load() == 0 {
		return
	}
	f.waitMu.Lock()
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.index <= index {
			close(w.ch)
			f.nwait.Add(-1)
		} else {
			kept = append(kept, w)
		}
	}
	for i := len(kept); i < len(f.waiters); i++ {
		f.waiters[i] = waiter{}
	}
	f.waiters = kept
	f.waitMu.Unlock()
}
