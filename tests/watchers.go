package tests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// The suite's watchers (Workload.Watch): one per node, on the workload's
// keys, from before the clients begin until after the final reads. Each
// records every event it receives, with the receive time; checkWatches
// holds what they saw to the history.

// watchBuffer is the watchers' WatchBuffer: about three times the events
// one watcher gets in a whole run, at about 90 bytes each (1.4 MiB), so
// that the receiver, which only appends, never lags (and if it did, the
// watch would resume from its cursor).
const watchBuffer = 1 << 14

// watchFault breaks the suite's own watchers on purpose, for a negative
// control (Controls): what gridkv delivered is intact, what the watcher
// records is not, and the watch check must catch it.
type watchFault int

const (
	watchIntact watchFault = iota
	// watchDropOne: the faultAt-th set event the watchers receive (counted
	// over all of them) is not recorded.
	watchDropOne
	// watchSwapOne: that event and the next event of the same key, at the
	// same watcher, trade their changes (kind and value), each keeping its
	// version: the order of versions stays right, only the check against
	// the other watchers and the history can see it.
	watchSwapOne
)

// faultAt is which set event a watchFault breaks: well into the run, and
// soon enough that every run gets there.
const faultAt = 4000

// lateAfter is when the late watcher starts, after the others: in the
// second fault window of a scenario's usual timing.
const lateAfter = 4500 * time.Millisecond

// watchers runs the suite's watchers over one run.
type watchers struct {
	c      *Cluster
	h      *History
	prefix string
	fault  watchFault
	sets   atomic.Int64 // set events received, for the fault
	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{} // closed when stop begins
	wg     sync.WaitGroup
	mu     struct {
		sync.Mutex
		all     []*watcher
		stopped bool
	}
}

// watcher is one of them: a watch, and, each time it ends with its node
// (ErrClosed) or lags (ErrLagged), another from its cursor on a live node.
type watcher struct {
	ws   *watchers
	node int // where it watches now
	mu   struct {
		sync.Mutex
		stream   watchStream
		cur      gridkv.Cursor
		last     map[string]string // each key's state after its last event
		w        *gridkv.Watcher
		stopping bool
		held     *watchEvent // watchSwapOne: the event waiting for its partner
		fault    string      // what the fault did here
	}
}

// commonPrefix is the longest prefix of every key.
func commonPrefix(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	p := keys[0]
	for _, k := range keys[1:] {
		for len(p) > 0 && (len(k) < len(p) || k[:len(p)] != p) {
			p = p[:len(p)-1]
		}
	}
	return p
}

// startWatchers starts a watcher on every node, each watching the keys'
// common prefix from now, and, lateAfter later, one more on node 1 (or
// the next live node), which shares that node's stream: one that begins
// mid-run, under a fault.
func startWatchers(ctx context.Context, c *Cluster, h *History, keys []string, fault watchFault) (*watchers, error) {
	ws := &watchers{c: c, h: h, prefix: commonPrefix(keys), fault: fault, quit: make(chan struct{})}
	ws.ctx, ws.cancel = context.WithCancel(ctx)
	for i := range c.Nodes {
		if err := ws.start(fmt.Sprintf("w%d", i), i); err != nil {
			ws.stop()
			return nil, err
		}
	}
	ws.wg.Add(1)
	go func() {
		defer ws.wg.Done()
		t := time.NewTimer(lateAfter)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ws.quit:
			return
		}
		for k := range c.Nodes {
			i := (1 + k) % len(c.Nodes)
			if !c.Nodes[i].Crashed() && ws.start(fmt.Sprintf("w%d-late", i), i) == nil {
				return
			}
		}
	}()
	return ws, nil
}

// start starts watcher name on node i, from now. ws.ctx is the watch's
// whole life: the start (priming every range's position) is bounded by the
// run's ctx.
func (ws *watchers) start(name string, i int) error {
	n := ws.c.Nodes[i]
	w, err := n.DB().Watch(ws.ctx, ws.prefix, gridkv.WatchBuffer(watchBuffer))
	if err != nil {
		return fmt.Errorf("tests: watch on %s: %w", n.Name, err)
	}
	wt := &watcher{ws: ws, node: i}
	began := ws.h.now()
	wt.mu.stream = watchStream{Name: name, Start: w.Start(), StartAt: began,
		Segments: []watchSegment{{Node: n.Name, Start: w.Start(), Begin: began}}}
	wt.mu.cur, wt.mu.last, wt.mu.w = w.Start(), map[string]string{}, w
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.mu.stopped {
		w.Close()
		return nil
	}
	ws.mu.all = append(ws.mu.all, wt)
	ws.wg.Add(1)
	go wt.run(w)
	return nil
}

// watching lists the watchers started so far.
func (ws *watchers) watching() []*watcher {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.mu.all
}

// run receives w's events and those of each watch resuming it, until the
// suite stops it or it ends for good.
func (wt *watcher) run(w *gridkv.Watcher) {
	defer wt.ws.wg.Done()
	for w != nil {
		for e := range w.Events() {
			wt.receive(e)
		}
		err := w.Err()
		wt.mu.Lock()
		seg := &wt.mu.stream.Segments[len(wt.mu.stream.Segments)-1]
		seg.Finish, seg.Err = wt.ws.h.now(), err.Error()
		stopping := wt.mu.stopping
		resume := errors.Is(err, gridkv.ErrClosed) || errors.Is(err, gridkv.ErrLagged)
		switch {
		case errors.Is(err, gridkv.ErrCompacted):
			why := err.Error()
			if evs := wt.mu.stream.Events; len(evs) > 0 && evs[len(evs)-1].Kind == gridkv.EventCompacted {
				r := evs[len(evs)-1].Range
				why += fmt.Sprintf(" (range %d, after v%s, on %s)", r, fmtVersion(wt.mu.cur[r]), seg.Node)
			}
			wt.endLocked(why)
			wt.mu.Unlock()
			return
		case !stopping && !resume:
			wt.endLocked(err.Error())
			wt.mu.Unlock()
			return
		case stopping:
			wt.endLocked("")
			wt.mu.Unlock()
			return
		}
		wt.mu.Unlock()
		w = wt.resume()
	}
}

// endLocked ends the stream: complete (why == "") or early.
func (wt *watcher) endLocked(why string) {
	if h := wt.mu.held; h != nil { // a swap fault whose partner never came
		wt.recordLocked(*h)
		wt.mu.held = nil
	}
	wt.mu.stream.End = maps.Clone(wt.mu.cur)
	wt.mu.stream.Complete, wt.mu.stream.EndErr = why == "", why
	wt.mu.w = nil
}

// resume starts a watch from the cursor on the watcher's node if it is
// live (a restarted node is a new incarnation), or else on the next live
// one, retrying until it starts or the suite stops the watcher; nil then.
func (wt *watcher) resume() *gridkv.Watcher {
	ws := wt.ws
	backoff := 10 * time.Millisecond
	for attempts := 0; ; attempts++ {
		wt.mu.Lock()
		switch {
		case wt.mu.stopping:
			wt.endLocked("")
			wt.mu.Unlock()
			return nil
		case ws.ctx.Err() != nil: // the run is over without a stop
			wt.endLocked(ws.ctx.Err().Error())
			wt.mu.Unlock()
			return nil
		}
		from := maps.Clone(wt.mu.cur)
		wt.mu.Unlock()
		for k := range ws.c.Nodes {
			i := (wt.node + k) % len(ws.c.Nodes)
			n := ws.c.Nodes[i]
			if n.Crashed() {
				continue
			}
			w, err := n.DB().Watch(ws.ctx, ws.prefix, gridkv.WatchFrom(from), gridkv.WatchBuffer(watchBuffer))
			if err != nil {
				continue
			}
			wt.mu.Lock()
			wt.node = i
			wt.mu.stream.Segments = append(wt.mu.stream.Segments, watchSegment{Node: n.Name, From: from, Start: w.Start(),
				Begin: ws.h.now(), Resumed: true, Attempts: attempts})
			wt.mu.w = w
			stopping := wt.mu.stopping
			wt.mu.Unlock()
			if stopping { // stop found no watch to close
				w.Close()
			}
			return w
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ws.ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// receive records one event, through the fault if one is on.
func (wt *watcher) receive(e gridkv.Event) {
	ev := watchEvent{Kind: e.Kind, Key: e.Key, Value: string(e.Value), Version: e.Version, Range: e.Range,
		Expires: !e.ExpireAt.IsZero(), At: wt.ws.h.now()}
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.mu.cur.Advance(e)
	if ev.keyed() {
		wt.mu.last[ev.Key] = ev.state()
	}
	if held := wt.mu.held; held != nil && ev.keyed() && ev.Key == held.Key {
		wt.mu.fault += fmt.Sprintf(" and %s: each recorded with the other's change", ev)
		held.Kind, ev.Kind = ev.Kind, held.Kind
		held.Value, ev.Value = ev.Value, held.Value
		held.Expires, ev.Expires = ev.Expires, held.Expires
		wt.recordLocked(*held)
		wt.mu.held = nil
	} else if ev.Kind == gridkv.EventSet && wt.ws.fault != watchIntact && wt.ws.sets.Add(1) == faultAt {
		wt.mu.fault = fmt.Sprintf("%s's %s %s", wt.mu.stream.Name, ev.Key, ev)
		if wt.ws.fault == watchDropOne {
			wt.mu.fault = "dropped " + wt.mu.fault
			return
		}
		wt.mu.fault = "swapped " + wt.mu.fault
		wt.mu.held = &ev
		return
	}
	wt.recordLocked(ev)
}

func (wt *watcher) recordLocked(ev watchEvent) {
	wt.mu.stream.Events = append(wt.mu.stream.Events, ev)
	wt.mu.stream.Segments[len(wt.mu.stream.Segments)-1].Events++
}

// drain waits, up to within, until every watcher still running has seen
// each key reach its final value; it returns how long that took. One that
// does not get there fails the check (checkWatches, rule d).
func (ws *watchers) drain(final map[string]string, within time.Duration) time.Duration {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ws.ctx, within)
	defer cancel()
	poll(ctx, 10*time.Millisecond, func() bool {
		for _, wt := range ws.watching() {
			wt.mu.Lock()
			running := wt.mu.w != nil
			caughtUp := true
			for k, v := range final {
				if wt.mu.last[k] != v {
					caughtUp = false
				}
			}
			wt.mu.Unlock()
			if running && !caughtUp {
				return false
			}
		}
		return true
	})
	return time.Since(start)
}

// stop ends every watcher, waits for them, and returns their streams and
// what the fault (if any) did.
func (ws *watchers) stop() ([]*watchStream, string) {
	ws.mu.Lock()
	if !ws.mu.stopped {
		ws.mu.stopped = true
		close(ws.quit)
	}
	ws.mu.Unlock()
	for _, wt := range ws.watching() {
		wt.mu.Lock()
		wt.mu.stopping = true
		w := wt.mu.w
		wt.mu.Unlock()
		if w != nil {
			w.Close()
		}
	}
	ws.wg.Wait()
	ws.cancel()
	var streams []*watchStream
	fault := ""
	for _, wt := range ws.watching() {
		wt.mu.Lock()
		s := wt.mu.stream
		streams = append(streams, &s)
		if wt.mu.fault != "" {
			fault = wt.mu.fault
		}
		wt.mu.Unlock()
	}
	return streams, fault
}
