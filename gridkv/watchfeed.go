package gridkv

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/wire"
)

// A feed follows the changes of every range for its watchers: one poller
// goroutine per replica group, each long-polling the group's leader
// (reqWatch) for the changes of the ranges it holds after the feed's
// position in each, and handing them to the watchers whose prefix matches.
// A range's position only moves forward, past each change handed on, so no
// change is handed on twice; a range that moves to another group ends
// Closed at its source (its last changes there, then a floor every change
// at the target is above) and is then polled at the target.
//
// The node's watchers share one feed (DB.shared), started by the first and
// stopped when the last ends; a watch resumed from a cursor has its own.

// watchWait is how long a leader holds a poll while nothing is new (the
// asker sends it in the request: part of the watch protocol, not a Timing;
// a change is answered at once whatever it is); watchPage bounds the
// changes per range in one answer.
const (
	watchWait    = time.Second
	watchPageLen = 256
)

type feed struct {
	db     *DB
	shared bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the pollers

	mu   sync.Mutex
	subs map[*Watcher]struct{}
	// byPrefix indexes subs by prefix; lens lists the prefixes' distinct
	// lengths, ascending (replaced, never changed, so a dispatch can
	// walk it while a watcher ends).
	byPrefix map[string]map[*Watcher]struct{}
	lens     []int
	pending  int // watchers on their way in (sharedFeed handed them the feed)
	ranges   []feedRange
	pollers  map[int]bool // groups with a running poller
	// unprimed counts the ranges without a position; primed is closed
	// while it is 0.
	unprimed int
	primed   chan struct{}
	stopped  bool
}

// feedRange is a feed's position in one range.
type feedRange struct {
	pos   uint64 // the version of the last change handed on (or the start)
	known bool   // false: ask the leader for the range's current position
	group int    // the group polled for it
	// genOf and gen: pos was asked of group genOf-1 (0: not yet) at its
	// creation gen, as this node's layout named it. Across a recovery of
	// the group (RecoverGroup) positions are not comparable: the new
	// creation stamps again the versions of writes the old one lost.
	genOf int
	gen   uint64
	lost  bool // the group said it does not hold the range: find it
	// followed: the range came to group by a Gone page of its last group,
	// which released it there: that group will hold it (it may not have
	// activated it yet), so a "not here" from it means "wait", not "look
	// elsewhere" (a range can move on again before the feed asks, and the
	// routes would send the feed past the stay in between).
	followed bool
	// compacted: the group's leader no longer holds the changes after pos
	// (it may have been caught up from a snapshot since): ask the group's
	// other replicas before giving up.
	compacted bool
}

// sharedFeed returns the node's shared feed, starting one if none runs, with
// the caller counted as pending; nil once the node closed.
func (db *DB) sharedFeed() *feed {
	db.feeds.Lock()
	defer db.feeds.Unlock()
	if f := db.feeds.shared; f != nil {
		f.mu.Lock()
		if !f.stopped {
			f.pending++
			f.mu.Unlock()
			return f
		}
		f.mu.Unlock()
	}
	f := db.startFeedLocked(nil)
	if f != nil {
		f.shared = true
		db.feeds.shared = f
	}
	return f
}

// newFeed starts a feed of its own at cursor from, with the caller pending;
// nil once the node closed.
func (db *DB) newFeed(from Cursor) *feed {
	db.feeds.Lock()
	defer db.feeds.Unlock()
	return db.startFeedLocked(from)
}

// startFeedLocked starts a feed at from (nil: from now); the caller holds
// db.feeds.
func (db *DB) startFeedLocked(from Cursor) *feed {
	if db.feeds.closed {
		return nil
	}
	for f := range db.feeds.all { // forget feeds that are over
		f.mu.Lock()
		over := f.stopped && len(f.pollers) == 0
		f.mu.Unlock()
		if over {
			f.wg.Wait() // its pollers are past their last step
			delete(db.feeds.all, f)
		}
	}
	f := &feed{db: db, subs: map[*Watcher]struct{}{}, byPrefix: map[string]map[*Watcher]struct{}{}, pending: 1, pollers: map[int]bool{}, primed: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	routes := db.lay.Load().routes
	f.ranges = make([]feedRange, db.cfg.Ranges)
	for r := range f.ranges {
		g, _ := routes.lookup(r)
		f.ranges[r] = feedRange{group: g}
		if from != nil {
			f.ranges[r].pos, f.ranges[r].known = from[r], true
		} else {
			f.unprimed++
		}
	}
	if f.unprimed == 0 {
		close(f.primed)
	}
	f.mu.Lock()
	for r := range f.ranges {
		f.ensurePollerLocked(f.ranges[r].group)
	}
	f.mu.Unlock()
	db.feeds.all[f] = struct{}{}
	return f
}

// stopFeeds ends every watch and waits for the feeds' pollers (DB.Close).
func (db *DB) stopFeeds() {
	db.feeds.Lock()
	db.feeds.closed = true
	all := db.feeds.all
	db.feeds.all = nil
	db.feeds.Unlock()
	for f := range all {
		f.mu.Lock()
		for w := range f.subs {
			f.endLocked(w, ErrClosed)
		}
		f.stopLocked()
		f.mu.Unlock()
		f.wg.Wait()
	}
}

// subscribe adds w to f once every range has a position (w starts there),
// or fails when ctx ends or the feed stops first.
func (f *feed) subscribe(ctx context.Context, w *Watcher) error {
	if f == nil {
		return ErrClosed
	}
	w.feed = f
	for {
		f.mu.Lock()
		if f.stopped {
			f.pending--
			f.mu.Unlock()
			return ErrClosed
		}
		if f.unprimed == 0 {
			f.pending--
			w.start = make([]uint64, len(f.ranges))
			for r := range f.ranges {
				w.start[r] = f.ranges[r].pos
			}
			f.addLocked(w)
			f.mu.Unlock()
			return nil
		}
		primed := f.primed
		f.mu.Unlock()
		select {
		case <-primed:
		case <-f.ctx.Done(): // stopped (the DB closed): the loop's top says so
		case <-ctx.Done():
			f.mu.Lock()
			f.pending--
			f.stopIfIdleLocked()
			f.mu.Unlock()
			return timedOut(ctx.Err(), false)
		}
	}
}

// endLocked ends watcher w with err, if it has not ended; the caller holds
// f.mu.
func (f *feed) endLocked(w *Watcher, err error) {
	if w.ended {
		return
	}
	w.ended, w.err = true, err
	close(w.ch)
	if w.stopCtx != nil {
		w.stopCtx()
	}
	f.removeLocked(w)
	f.stopIfIdleLocked()
}

// addLocked and removeLocked keep subs and its index in step.
func (f *feed) addLocked(w *Watcher) {
	f.subs[w] = struct{}{}
	set := f.byPrefix[w.prefix]
	if set == nil {
		set = map[*Watcher]struct{}{}
		f.byPrefix[w.prefix] = set
		if !slices.Contains(f.lens, len(w.prefix)) {
			lens := append(slices.Clone(f.lens), len(w.prefix))
			slices.Sort(lens)
			f.lens = lens
		}
	}
	set[w] = struct{}{}
}

func (f *feed) removeLocked(w *Watcher) {
	delete(f.subs, w)
	set := f.byPrefix[w.prefix]
	delete(set, w)
	if len(set) > 0 {
		return
	}
	delete(f.byPrefix, w.prefix)
	for p := range f.byPrefix {
		if len(p) == len(w.prefix) {
			return
		}
	}
	f.lens = slices.DeleteFunc(slices.Clone(f.lens), func(n int) bool { return n == len(w.prefix) })
}

// dispatchLocked hands e to the watchers whose prefix it has.
func (f *feed) dispatchLocked(e Event) {
	for _, n := range f.lens {
		if n > len(e.Key) {
			return
		}
		for w := range f.byPrefix[e.Key[:n]] {
			w.deliverLocked(e)
		}
	}
}

// stopIfIdleLocked stops f when no watcher uses it or is on its way.
func (f *feed) stopIfIdleLocked() {
	if len(f.subs) == 0 && f.pending == 0 {
		f.stopLocked()
	}
}

func (f *feed) stopLocked() {
	f.stopped = true
	f.cancel()
}

// ensurePollerLocked starts group g's poller if it does not run.
func (f *feed) ensurePollerLocked(g int) {
	if f.stopped || f.pollers[g] {
		return
	}
	f.pollers[g] = true
	f.wg.Add(1)
	go f.poll(g)
}

// poll long-polls group g for the ranges the feed follows there, until none
// is left or the feed stops.
func (f *feed) poll(g int) {
	defer f.wg.Done()
	backoff := 2 * time.Millisecond
	var asks []watchAsk
	var lost, compacted []int
	var req []byte
	for {
		if asks, lost, compacted = f.asks(g, asks[:0]); asks == nil {
			return
		}
		for _, r := range compacted {
			f.askReplicas(g, r)
		}
		if len(lost) > 0 {
			// The group does not hold them (a move this node has not
			// heard of): learn where they are, then look again.
			for _, r := range lost {
				if !f.isFollowed(r) {
					f.db.findRange(f.ctx, r)
				}
			}
			f.rehome(g, lost)
			_ = pause(f.ctx, &backoff) // growing while ranges stay lost; stopped: asks says so
			continue
		}
		ctx, cancel := context.WithTimeout(f.ctx, watchWait+f.db.cfg.Timing.RequestTimeout)
		req = appendWatchRequest(req[:0], watchWait, watchPageLen, false, asks)
		ans, err := f.db.route(ctx, g, -1, reqWatch, req, false)
		cancel()
		var pages []watchPage
		if err == nil {
			pages, err = decodeWatchAnswer(ans)
		}
		if err != nil {
			_ = pause(f.ctx, &backoff)
			continue
		}
		if !f.apply(g, asks, pages) {
			backoff = 2 * time.Millisecond
		}
	}
}

// asks lists what to ask group g, appended to asks: each range the feed
// follows there, at its position (or from now). lost lists those to find
// first, compacted those to ask the group's other replicas for. nil asks:
// the poller is done (the feed stopped, or g holds none of its ranges).
func (f *feed) asks(g int, asks []watchAsk) (_ []watchAsk, lost, compacted []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		lay := f.db.lay.Load()
		for r := range f.ranges {
			fr := &f.ranges[r]
			if fr.group == g && fr.genOf == g+1 && fr.gen < lay.gen(g) {
				if _, ok := lay.logged.RecoveredAt(g, lay.gen(g)); ok && fr.known {
					// Recovered since pos was taken: pos may be above the
					// recovery point, where the new creation's versions
					// name other writes. The watches end; the range
					// starts over from now.
					f.compactedLocked(r)
				}
			}
			if fr.group == g && !fr.lost {
				fr.genOf, fr.gen = g+1, lay.gen(g)
			}
			switch {
			case fr.group != g:
			case fr.lost:
				lost = append(lost, r)
			case fr.compacted:
				compacted = append(compacted, r)
			default:
				asks = append(asks, watchAsk{rng: r, now: !fr.known, after: fr.pos})
			}
		}
	}
	if len(asks) == 0 && len(lost) == 0 && len(compacted) == 0 {
		delete(f.pollers, g)
		return nil, nil, nil
	}
	if asks == nil {
		asks = []watchAsk{}
	}
	return asks, lost, compacted
}

// askReplicas asks every replica of group g, not only its leader, for
// range r's changes after the feed's position: every replica keeps the
// same history, from where it began (a replica caught up from a snapshot
// begins there). One that still has them answers, and the feed goes on;
// when none does, the history is gone and every watch of the feed ends
// with EventCompacted.
func (f *feed) askReplicas(g, r int) {
	f.mu.Lock()
	fr := f.ranges[r]
	f.mu.Unlock()
	if fr.group != g || !fr.compacted {
		return
	}
	asks := []watchAsk{{rng: r, after: fr.pos}}
	body := appendWatchRequest(nil, 0, watchPageLen, true, asks)
	for _, to := range f.db.replicaPeers(f.ctx, g) {
		ctx, cancel := context.WithTimeout(f.ctx, f.db.cfg.Timing.RequestTimeout)
		var ans []byte
		var err error
		if to.id == f.db.host.ID() {
			if rep := f.db.currentReplica(g); rep != nil {
				ans = f.db.serveWatch(ctx, rep, body)
			}
		} else {
			ans, err = f.db.host.Call(ctx, to.id, to.addr, encodeRequest(reqWatch, wireGroup(g, f.db.lay.Load().gen(g)), body))
		}
		cancel()
		if err != nil || len(ans) == 0 || ans[0] != stOK {
			continue
		}
		pages, err := decodeWatchAnswer(ans[1:])
		if err != nil || len(pages) != 1 || pages[0].rng != r || pages[0].status != watchOK {
			continue
		}
		f.mu.Lock()
		f.ranges[r].compacted = false
		f.mu.Unlock()
		f.apply(g, asks, pages)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur := &f.ranges[r]; cur.compacted && cur.group == g && cur.pos == fr.pos && !f.stopped {
		cur.compacted = false
		f.compactedLocked(r)
	}
}

// isFollowed reports whether range r came to its group by a Gone page.
func (f *feed) isFollowed(r int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ranges[r].followed
}

// rehome moves the lost ranges polled at g to the group the routes now
// name (which may be g again: a range on its way in is asked for again);
// a followed range stays at g.
func (f *feed) rehome(g int, lost []int) {
	routes := f.db.lay.Load().routes
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range lost {
		fr := &f.ranges[r]
		if fr.group != g || !fr.lost {
			continue
		}
		fr.lost = false
		if fr.followed {
			continue // ask it again, after the pause
		}
		if to, _ := routes.lookup(r); to != g {
			fr.group = to
			f.ensurePollerLocked(to)
		}
	}
}

// apply takes group g's answer to asks: it hands the changes on and moves
// the positions past them. lost reports a range g said it does not hold.
func (f *feed) apply(g int, asks []watchAsk, pages []watchPage) (lost bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := 0 // asks and pages go by range, pages only for ranges with news
	for _, p := range pages {
		for i < len(asks) && asks[i].rng < p.rng {
			i++
		}
		if i == len(asks) || asks[i].rng != p.rng || f.stopped {
			return lost
		}
		a, fr := asks[i], &f.ranges[p.rng]
		if fr.group != g || fr.known == a.now || (!a.now && fr.pos != a.after) {
			continue // the range's state changed since the ask
		}
		switch p.status {
		case watchNotHere:
			fr.lost, lost = true, true
			continue
		case watchCompacted:
			fr.compacted = true // askReplicas decides
			continue
		}
		fr.followed = false
		if a.now {
			fr.pos, fr.known = p.next, true
			if f.unprimed--; f.unprimed == 0 {
				close(f.primed)
			}
			continue
		}
		for _, e := range p.events {
			if e.Version <= fr.pos {
				continue
			}
			fr.pos = e.Version
			f.dispatchLocked(e)
		}
		if p.flags&pageClosed != 0 && p.next > fr.pos {
			fr.pos = p.next
			for w := range f.subs {
				w.deliverLocked(Event{Kind: EventProgress, Version: p.next, Range: p.rng})
			}
		}
		if p.flags&pageGone != 0 && p.flags&pageMore == 0 {
			fr.group, fr.followed = p.peer, true
			f.ensurePollerLocked(p.peer)
		}
	}
	return lost
}

// compactedLocked: range r's history no longer reaches back to the feed's
// position. Every watcher ends with EventCompacted; the shared feed starts
// the range over from now, for the watchers to come.
func (f *feed) compactedLocked(r int) {
	for w := range f.subs {
		w.deliverLocked(Event{Kind: EventCompacted, Range: r})
		f.endLocked(w, ErrCompacted)
	}
	if f.stopped {
		return
	}
	fr := &f.ranges[r]
	fr.known = false
	if f.unprimed++; f.unprimed == 1 {
		f.primed = make(chan struct{})
	}
}

// replicaPeers lists group g's servers that are live members, as its
// leader names them (or, without an answer from it, as this node's replica
// of g knows them).
func (db *DB) replicaPeers(ctx context.Context, g int) []peer {
	var ids []raft.ServerID
	sctx, cancel := context.WithTimeout(ctx, db.cfg.Timing.RequestTimeout)
	ans, err := db.route(sctx, g, -1, reqStatus, nil, false)
	cancel()
	if err == nil {
		d := wire.Reader{B: ans}
		for len(d.B) > 0 && d.Err == nil {
			id := raft.ServerID(d.Bytes())
			d.Byte() // voter or not: either keeps the history
			if d.Err == nil {
				ids = append(ids, id)
			}
		}
	} else if rep := db.replica(g); rep != nil {
		if servers, err := rep.group.Configuration(); err == nil {
			for _, s := range servers {
				ids = append(ids, s.ID)
			}
		}
	}
	byID := map[raft.ServerID]peer{}
	for _, m := range db.members() {
		p := memberPeer(m)
		byID[p.id] = p
	}
	var out []peer
	for _, id := range ids {
		if p, ok := byID[id]; ok {
			out = append(out, p)
		}
	}
	return out
}
