package gridkv

import (
	"container/heap"
	"context"
	"fmt"
	"iter"
	"sync"
)

// How a Scan reads: page requests in flight at once, and the bytes of
// keys plus values the ranges' buffered pages add up to (two pages per
// range: the one being merged and the next one, fetched ahead).
const (
	scanWorkers = 8
	// scanBufferBytes is the keys and values of every range's two pages:
	// 14 MiB, about 16 MiB with the answers' framing (lengths, versions,
	// expiries: ~12% for 16-byte keys and 100-byte values).
	scanBufferBytes = 14 << 20
	// minScanPageBytes keeps pages useful when there are very many ranges
	// (above 14,336 the buffer grows past scanBufferBytes).
	minScanPageBytes = 512
	// scanPageEntries bounds a page's entries, whatever their size.
	scanPageEntries = 4096
)

// scanPageBytes is the keys plus values each page of a Scan asks for
// (a page holds at least one entry, whatever its size).
func scanPageBytes(ranges int) int {
	return min(max(scanBufferBytes/(2*ranges), minScanPageBytes), maxScanPageBytes)
}

// Scan returns the live keys with the given prefix, in key order, as an
// iterator. An empty prefix scans every key. The iterator yields (entry,
// nil) per key; on failure it yields (Entry{}, err) once and stops. Each
// iteration runs a scan of its own; nothing is read before it starts.
//
// Options: Limit(n) yields at most n entries; After(key) starts after key
// (which need not exist), the cursor for paging: a caller that stopped at
// key K passes After(K) to get what follows. The read mode is the default
// or ReadIndex(), linearizable, or Stale(); Quorum is ErrInvalid. Errors
// match the API's sentinels: ErrInvalid for a bad option (Quorum, Limit
// with n <= 0, a nil option) or a prefix or After key longer than a key
// may be; ErrClosed when the DB is closed or closes during the scan;
// ErrTimeout (wrapping ctx.Err()) once ctx ends; ErrUnavailable when a
// range has no reachable quorum.
//
// Every range is read, since the hash spreads a prefix's keys over all of
// them: in pages of its keys in key order, each page at its own point. In
// the default mode a page is read by the range's group leader under its
// lease, or after a ReadIndex round when it holds no valid lease, as Get is
// served; with ReadIndex() after a ReadIndex round always; with Stale()
// from this node's replica of the range if it has one, else another
// replica, which may miss recent writes. So the scan as a whole is not one
// snapshot: each range (each page) is read at its own point, and a key
// written or deleted during the scan may or may not appear. In the
// linearizable modes, a key committed before the scan started and not
// deleted (nor expired) before it ended always appears, exactly once: a
// range that moves between replica groups during the scan is read on from
// its last key at its new group.
//
// Entries are copies, never the store's memory; the values of one page
// (a few KiB) share an allocation. Expiry is judged when each page is read
// (under the lease, at the time it was confirmed).
//
// Cost and memory: up to 8 page requests are in flight, and the ranges'
// pages are merged in key order. Each range holds the page being merged
// and, while the pages held stay under 14 MiB of keys and values, the next
// one, fetched ahead; a page asks for about 14 MiB / (2 x Ranges) and holds
// at least one entry. With the pages' framing that is about 16 MiB (up to
// 14,336 ranges; the default is 1024), whatever the scan's size, as long
// as entries are smaller than a page; with larger values it is up to
// Ranges entries, one per range, plus 14 MiB. The first page of every range is read
// before the first entry is yielded, Limit or not. A page costs its
// serving node a walk of the range's entries (the store keeps no key
// order). Breaking out of the loop, or ctx ending, stops every goroutine
// the scan started, and the iterator waits for them before it returns.
func (db *DB) Scan(ctx context.Context, prefix string, opts ...ReadOption) iter.Seq2[Entry, error] {
	o, err := db.scanOpts(opts)
	if err == nil && len(prefix) > maxKeyBytes {
		err = fmt.Errorf("%w: prefix of %d bytes (at most %d)", ErrInvalid, len(prefix), maxKeyBytes)
	}
	return func(yield func(Entry, error) bool) {
		if db.met != nil {
			// One operation per iteration, timed to its end (the caller's
			// loop body included), with the error it yielded if any.
			start, inner := db.met.start(), yield
			var failed error
			yield = func(e Entry, err error) bool {
				if err != nil {
					failed = err
				}
				return inner(e, err)
			}
			defer func() { db.met.observe(opScan, pathOf(o.mode), start, failed) }()
		}
		if db.isClosed() {
			yield(Entry{}, ErrClosed)
			return
		}
		if err := joinErrors(err, ctxErr(ctx)); err != nil {
			yield(Entry{}, err)
			return
		}
		s := db.newScan(ctx, prefix, o)
		defer s.stop()
		s.run(yield)
	}
}

// scan is one iteration of a Scan: the merge, run by the iterating
// goroutine, and the workers that fetch pages for it.
//
// Threading: the ranges' state (scanRange) is touched only by the merge;
// workers get a range number and a cursor (scanJob) and send back the page
// (scanResult). A range has at most one page request outstanding, so
// neither channel, each with room for one item per range, ever blocks.
type scan struct {
	db      *DB
	parent  context.Context
	ctx     context.Context // ended by stop
	cancel  context.CancelFunc
	req     scanReq // the page request, without range and cursor
	limit   int     // entries to yield; 0: all
	yielded int

	ranges   []scanRange
	buffered int      // bytes of keys and values in the pages held
	heads    scanHeap // ranges with an entry to merge, by that entry's key
	waiting  int      // ranges with nothing to merge until their page comes
	jobs     chan scanJob
	results  chan scanResult
	wg       sync.WaitGroup
}

// scanRange is a range's part in the merge.
type scanRange struct {
	rng      int
	cur      scanPage  // the page being merged
	next     *scanPage // the next page, fetched ahead
	fetching bool      // a page request is outstanding
	hungry   bool      // cur is used up and the merge waits for the next page
	// deferred: the next page was not fetched ahead (the pages held were
	// over the buffer's budget); it is fetched, after deferredAfter, once
	// cur is used up.
	deferred      bool
	deferredAfter string
}

type scanJob struct {
	rs    *scanRange // only handed back, never touched by the worker
	rng   int
	after string
}

type scanResult struct {
	rs   *scanRange
	page *scanPage // a pointer: the channel's buffer holds one result per range
	err  error
}

func (db *DB) newScan(ctx context.Context, prefix string, o readOptions) *scan {
	ranges := db.cfg.Ranges
	s := &scan{
		db: db, parent: ctx, limit: o.limit,
		req:     scanReq{mode: o.mode, prefix: prefix, maxEntries: scanPageEntries, maxBytes: scanPageBytes(ranges)},
		ranges:  make([]scanRange, ranges),
		jobs:    make(chan scanJob, ranges),
		results: make(chan scanResult, ranges),
	}
	if o.limit > 0 {
		s.req.maxEntries = min(s.req.maxEntries, o.limit)
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	for r := range s.ranges {
		rs := &s.ranges[r]
		rs.rng, rs.hungry = r, true
		s.waiting++
		s.fetch(rs, o.after)
	}
	for range min(scanWorkers, ranges) {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.work() }()
	}
	return s
}

// stop ends the workers and waits for them.
func (s *scan) stop() {
	s.cancel()
	close(s.jobs)
	s.wg.Wait()
}

// run merges the ranges' pages and yields their entries in key order.
func (s *scan) run(yield func(Entry, error) bool) {
	done := s.ctx.Done()
	for {
		for s.waiting > 0 {
			select {
			case res := <-s.results:
				if res.err != nil {
					yield(Entry{}, res.err)
					return
				}
				s.arrived(res)
			case <-done:
				yield(Entry{}, timedOut(s.parent.Err(), false))
				return
			}
		}
		if len(s.heads) == 0 {
			return
		}
		select {
		case <-done:
			yield(Entry{}, timedOut(s.parent.Err(), false))
			return
		default:
		}
		rs := s.heads[0]
		if !yield(rs.cur.head, nil) {
			return
		}
		if s.yielded++; s.yielded == s.limit {
			return
		}
		if rs.cur.advance() {
			heap.Fix(&s.heads, 0)
		} else {
			heap.Pop(&s.heads)
			s.refill(rs)
		}
	}
}

// arrived takes a range's page: to merge now if the merge waits for it,
// else as the page fetched ahead.
func (s *scan) arrived(res scanResult) {
	rs := res.rs
	rs.fetching = false
	s.buffered += res.page.size()
	if !rs.hungry {
		rs.next = res.page
		return
	}
	rs.hungry = false
	s.waiting--
	s.install(rs, res.page)
}

// install makes p the page rs merges, and fetches the page after it
// unless p holds all the entries the Limit lets the scan still yield; while
// the pages held are over the buffer's budget, that fetch waits until p is
// used up.
func (s *scan) install(rs *scanRange, p *scanPage) {
	rs.cur = *p
	if p.more && (s.limit == 0 || p.count < s.limit-s.yielded) {
		if s.buffered < scanBufferBytes {
			s.fetch(rs, p.last)
		} else {
			rs.deferred, rs.deferredAfter = true, p.last
		}
	}
	if rs.cur.ok {
		heap.Push(&s.heads, rs)
		return
	}
	s.refill(rs) // a page of expired entries only, or none
}

// refill follows rs's used-up page with the next one: the one fetched
// ahead, else the one on its way (the merge waits for it). A range with
// neither is done, or has yielded all the Limit lets the scan yield.
func (s *scan) refill(rs *scanRange) {
	s.buffered -= rs.cur.size()
	rs.cur = scanPage{}
	switch {
	case rs.deferred:
		rs.deferred = false
		s.fetch(rs, rs.deferredAfter)
		rs.hungry = true
		s.waiting++
	case rs.next != nil:
		p := rs.next
		rs.next = nil
		s.install(rs, p)
	case rs.fetching:
		rs.hungry = true
		s.waiting++
	}
}

func (s *scan) fetch(rs *scanRange, after string) {
	rs.fetching = true
	s.jobs <- scanJob{rs: rs, rng: rs.rng, after: after}
}

// work fetches pages until stop.
func (s *scan) work() {
	for j := range s.jobs {
		if s.ctx.Err() != nil {
			continue // stopping: drain
		}
		p, err := s.page(j.rng, j.after)
		s.results <- scanResult{rs: j.rs, page: &p, err: err}
	}
}

// page fetches range rng's page after the cursor after, from the group
// the routing table names; route follows the range if it moved.
func (s *scan) page(rng int, after string) (scanPage, error) {
	q := s.req
	q.rng, q.after = rng, after
	g, _ := s.db.lay.Load().routes.lookup(rng)
	ans, err := s.db.route(s.ctx, g, rng, reqScan, appendScan(nil, q), false)
	if err != nil {
		return scanPage{}, err
	}
	return decodeScanPage(ans, q)
}

// scanHeap orders ranges by the key of the entry each would yield next.
type scanHeap []*scanRange

func (h scanHeap) Len() int           { return len(h) }
func (h scanHeap) Less(i, j int) bool { return h[i].cur.head.Key < h[j].cur.head.Key }
func (h scanHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *scanHeap) Push(x any)        { *h = append(*h, x.(*scanRange)) }
func (h *scanHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}
