package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/internal/wire"
)

// A reqWatch request (kind, uvarint group, then this body) asks a group's
// leader for the changes of some of its ranges (see watchfeed.go):
//
//	uvarint wait (milliseconds the leader may hold the request while
//	nothing is new; 0: answer at once), uvarint max events per range, flag
//	byte (watchAnyReplica: any replica answers, not only the leader),
//	uvarint n, then per range: uvarint range, flag byte (watchFromNow:
//	answer the range's current position instead of events), uvarint after.
//
// Its answer is stOK, uvarint n, then per range with news (events, a new
// position, or a status other than watchOK), in the request's order:
// uvarint range, status byte (watchOK, watchCompacted, watchNotHere), flags
// byte (pageMore, pageClosed, pageGone), uvarint next, uvarint peer group,
// uvarint count, then per event: kind byte, uvarint version, varint
// expireAt, uvarint key length, key, uvarint value length, value.
const reqWatch byte = 19

// Per-range statuses in a reqWatch answer.
const (
	watchOK        byte = 0 // events (maybe none) and the next position
	watchCompacted byte = 1 // the history no longer reaches back to after
	watchNotHere   byte = 2 // the group does not hold the range (ask the routes)
)

// Request and page flags.
const (
	watchAnyReplica byte = 1
	watchFromNow    byte = 1

	pageMore   byte = 1
	pageClosed byte = 2
	pageGone   byte = 4
)

// watchAsk is one range of a reqWatch request.
type watchAsk struct {
	rng   int
	now   bool
	after uint64
}

// watchPage is one range of a reqWatch answer.
type watchPage struct {
	rng    int
	status byte
	flags  byte
	next   uint64
	peer   int
	events []Event
}

func appendWatchRequest(b []byte, wait time.Duration, max int, any bool, asks []watchAsk) []byte {
	b = slices.Grow(b, 4*binary.MaxVarintLen64+len(asks)*(1+2*binary.MaxVarintLen32))
	b = binary.AppendUvarint(b, uint64(wait/time.Millisecond))
	b = binary.AppendUvarint(b, uint64(max))
	var flags byte
	if any {
		flags = watchAnyReplica
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(asks)))
	for _, a := range asks {
		b = binary.AppendUvarint(b, uint64(a.rng))
		var f byte
		if a.now {
			f = watchFromNow
		}
		b = append(b, f)
		b = binary.AppendUvarint(b, a.after)
	}
	return b
}

// errBadWatch: a malformed reqWatch request or answer.
var errBadWatch = errors.New("malformed watch message")

func decodeWatchRequest(b []byte) (wait time.Duration, max int, any bool, asks []watchAsk, err error) {
	d := wire.Reader{B: b}
	wait = time.Duration(d.Uvarint()) * time.Millisecond
	max = int(d.Uvarint())
	any = d.Byte()&watchAnyReplica != 0
	n := d.Uvarint()
	if n > uint64(len(d.B))/3 { // an ask takes 3 bytes at least
		return 0, 0, false, nil, errBadWatch
	}
	asks = make([]watchAsk, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		a := watchAsk{rng: int(d.Uvarint())}
		a.now = d.Byte()&watchFromNow != 0
		a.after = d.Uvarint()
		asks = append(asks, a)
	}
	if d.Err != nil || len(d.B) != 0 || max <= 0 {
		return 0, 0, false, nil, errBadWatch
	}
	return wait, max, any, asks, nil
}

func appendWatchPage(b []byte, p watchPage) []byte {
	b = binary.AppendUvarint(b, uint64(p.rng))
	b = append(b, p.status, p.flags)
	b = binary.AppendUvarint(b, p.next)
	b = binary.AppendUvarint(b, uint64(p.peer))
	b = binary.AppendUvarint(b, uint64(len(p.events)))
	for _, e := range p.events {
		b = append(b, byte(e.Kind))
		b = binary.AppendUvarint(b, e.Version)
		var at int64
		if !e.ExpireAt.IsZero() {
			at = e.ExpireAt.UnixNano()
		}
		b = binary.AppendVarint(b, at)
		b = binary.AppendUvarint(b, uint64(len(e.Key)))
		b = append(b, e.Key...)
		b = binary.AppendUvarint(b, uint64(len(e.Value)))
		b = append(b, e.Value...)
	}
	return b
}

// decodeWatchAnswer reads a reqWatch answer's body (after stOK). Keys and
// values are copies.
func decodeWatchAnswer(b []byte) ([]watchPage, error) {
	d := wire.Reader{B: b}
	n := d.Uvarint()
	if n > uint64(len(d.B))/6 { // a page takes 6 bytes at least
		return nil, errBadWatch
	}
	pages := make([]watchPage, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		p := watchPage{rng: int(d.Uvarint()), status: d.Byte(), flags: d.Byte(), next: d.Uvarint(), peer: int(d.Uvarint())}
		count := d.Uvarint()
		if count > uint64(len(d.B))/5 { // an event takes 5 bytes at least
			return nil, errBadWatch
		}
		p.events = make([]Event, 0, count)
		for j := uint64(0); j < count && d.Err == nil; j++ {
			e := Event{Kind: EventKind(d.Byte()), Version: d.Uvarint(), Range: p.rng}
			if e.Kind < EventSet || e.Kind > EventExpire {
				return nil, errBadWatch
			}
			if at := d.Varint(); at != 0 {
				e.ExpireAt = time.Unix(0, at)
			}
			e.Key = string(d.Bytes())
			if v := d.Bytes(); e.Kind == EventSet {
				e.Value = append([]byte{}, v...)
			}
			p.events = append(p.events, e)
		}
		pages = append(pages, p)
	}
	if d.Err != nil || len(d.B) != 0 {
		return nil, errBadWatch
	}
	return pages, nil
}

// serveWatch answers a reqWatch request at group rep's leader (or any
// replica, when it says so): each asked range's changes after its
// position, or its current position. While nothing is new it holds the
// request, up to the asked wait, until the group applies another entry.
func (db *DB) serveWatch(ctx context.Context, rep *replica, body []byte) []byte {
	wait, max, any, asks, err := decodeWatchRequest(body)
	switch {
	case err != nil:
		return []byte{stInvalid}
	case !any && !rep.group.IsLeader():
		return redirect(leaderOf(rep))
	}
	var deadline time.Time
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	for {
		applied := rep.fsm.Applied()
		pages, news := db.watchPages(rep, asks, max)
		if news || wait == 0 || !time.Now().Before(deadline) || db.isClosed() {
			out := binary.AppendUvarint([]byte{stOK}, uint64(len(pages)))
			for _, p := range pages {
				out = appendWatchPage(out, p)
			}
			return out
		}
		wctx, cancel := context.WithDeadline(ctx, deadline)
		err := rep.fsm.WaitApplied(wctx, applied+1)
		if err == nil {
			// Linger a little, so that one answer carries the changes of
			// the entries applying right after.
			t := time.NewTimer(watchLinger)
			select {
			case <-t.C:
			case <-wctx.Done():
			}
			t.Stop()
		}
		cancel()
		if err != nil && ctx.Err() != nil {
			return []byte{stUnavailable} // the asker gave up
		}
	}
}

// watchLinger is how long a held poll waits, once the group applies an
// entry, before it answers; an answer holds at most watchAnswerBytes of
// keys and values (at least one change), of which one range's at most
// watchRangeBytes. What does not fit comes with the next poll.
const (
	watchLinger      = time.Millisecond
	watchAnswerBytes = 4 << 20
	watchRangeBytes  = 1 << 20
)

// watchPages reads the pages of the asked ranges with news (see reqWatch)
// from rep's state; news reports whether there is any.
func (db *DB) watchPages(rep *replica, asks []watchAsk, maxEvents int) (pages []watchPage, news bool) {
	budget := watchAnswerBytes
	for _, a := range asks {
		if budget <= 0 {
			break // the ranges left wait for the next poll
		}
		pages = append(pages, watchPage{rng: a.rng})
		p := &pages[len(pages)-1]
		if a.now {
			head, err := rep.fsm.HistoryHead(a.rng)
			if err != nil {
				p.status = watchNotHere
			}
			p.next = head
			news = true
			continue
		}
		page, err := rep.fsm.Events(a.rng, a.after, maxEvents, min(budget, watchRangeBytes))
		switch {
		case errors.Is(err, fsm.ErrCompacted):
			p.status, news = watchCompacted, true
			continue
		case err != nil:
			p.status, news = watchNotHere, true
			continue
		}
		p.next, p.peer = page.Next, page.Peer
		if page.More {
			p.flags |= pageMore
		}
		if page.Closed {
			p.flags |= pageClosed
		}
		if page.Gone {
			p.flags |= pageGone
		}
		for _, e := range page.Events {
			budget -= len(e.Key) + len(e.Value)
			ev := Event{Kind: EventKind(e.Kind), Key: e.Key, Value: e.Value, Version: e.Version, Range: a.rng}
			if e.ExpireAt != 0 {
				ev.ExpireAt = time.Unix(0, e.ExpireAt)
			}
			p.events = append(p.events, ev)
		}
		if len(p.events) > 0 || page.Next != a.after || page.Gone {
			news = true
		} else {
			pages = pages[:len(pages)-1] // nothing new
		}
	}
	return pages, news
}
