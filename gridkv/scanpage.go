package gridkv

import (
	"context"
	"encoding/binary"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/gridkv/gridkv/fsm"
)

// A Scan's page of one range (reqScan): the range's live entries with a
// prefix after a cursor, in key order, read at a point that the request's
// read mode makes linearizable (default, ReadIndex) or not (Stale).

// Bounds the server puts on a page, whatever the asker wants: a page is one
// frame, and its candidates are selected under the range's read lock.
const (
	maxScanPageEntries = 1 << 14
	maxScanPageBytes   = 4 << 20
)

// scanReq is a request for one page: of range rng, read in mode, of the
// keys with prefix after the cursor after, at most maxEntries of them and,
// past the first, about maxBytes of keys and values.
type scanReq struct {
	rng        int
	mode       readMode
	prefix     string
	after      string
	maxEntries int
	maxBytes   int
}

// appendScan encodes a reqScan body: mode byte (first, as in a reqRead,
// for servesLocally), uvarint range, max entries, max bytes, prefix
// length, the prefix, then the cursor.
func appendScan(b []byte, q scanReq) []byte {
	b = append(b, byte(q.mode))
	b = binary.AppendUvarint(b, uint64(q.rng))
	b = binary.AppendUvarint(b, uint64(q.maxEntries))
	b = binary.AppendUvarint(b, uint64(q.maxBytes))
	b = binary.AppendUvarint(b, uint64(len(q.prefix)))
	b = append(b, q.prefix...)
	return append(b, q.after...)
}

// parseScan reads a reqScan body.
func parseScan(body []byte) (scanReq, bool) {
	if len(body) == 0 {
		return scanReq{}, false
	}
	q := scanReq{mode: readMode(body[0])}
	body = body[1:]
	var vals [4]uint64
	for i := range vals {
		v, n := binary.Uvarint(body)
		if n <= 0 {
			return scanReq{}, false
		}
		vals[i], body = v, body[n:]
	}
	if vals[0] > 1<<20 || vals[3] > uint64(len(body)) || (q.mode != readDefault && q.mode != readIndex && q.mode != readStale) {
		return scanReq{}, false
	}
	q.rng = int(vals[0])
	q.maxEntries = int(min(max(vals[1], 1), maxScanPageEntries))
	q.maxBytes = int(min(vals[2], maxScanPageBytes))
	q.prefix, q.after = string(body[:vals[3]]), string(body[vals[3]:])
	return q, true
}

// appendScanPage encodes a page's answer after its status byte: more
// byte, uvarint length and bytes of the last key examined (the cursor to
// resume after; expired entries are examined but left out), uvarint
// count, key bytes, value bytes, then the keys, the values, and per entry
// uvarint key length, value length, version and varint expireAt. The
// entries live at wall time now are copied in; the expired ones are left
// out. Keys and values go in blocks of their own so that the asker takes
// the keys as one string and the values as slices of the answer.
func appendScanPage(b []byte, page []fsm.RangeEntry, more bool, now int64) []byte {
	count, keyBytes, valBytes, metaBytes := 0, 0, 0, 0
	for _, e := range page {
		if !e.Expired(now) {
			count, keyBytes, valBytes = count+1, keyBytes+len(e.Key), valBytes+len(e.Value)
			metaBytes += uvarintLen(uint64(len(e.Key))) + uvarintLen(uint64(len(e.Value))) + uvarintLen(e.Version) +
				uvarintLen(uint64(e.ExpireAt<<1^e.ExpireAt>>63))
		}
	}
	last := ""
	if len(page) > 0 {
		last = page[len(page)-1].Key
	}
	b = slices.Grow(b, 1+uvarintLen(uint64(len(last)))+len(last)+uvarintLen(uint64(count))+uvarintLen(uint64(keyBytes))+
		uvarintLen(uint64(valBytes))+keyBytes+valBytes+metaBytes)
	b = appendBool(b, more)
	b = binary.AppendUvarint(b, uint64(len(last)))
	b = append(b, last...)
	b = binary.AppendUvarint(b, uint64(count))
	b = binary.AppendUvarint(b, uint64(keyBytes))
	b = binary.AppendUvarint(b, uint64(valBytes))
	for _, e := range page {
		if !e.Expired(now) {
			b = append(b, e.Key...)
		}
	}
	for _, e := range page {
		if !e.Expired(now) {
			b = append(b, e.Value...)
		}
	}
	for _, e := range page {
		if !e.Expired(now) {
			b = binary.AppendUvarint(b, uint64(len(e.Key)))
			b = binary.AppendUvarint(b, uint64(len(e.Value)))
			b = binary.AppendUvarint(b, e.Version)
			b = binary.AppendVarint(b, e.ExpireAt)
		}
	}
	return b
}

// uvarintLen is the length of v as a uvarint.
func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// scanPage is one decoded page, taken entry by entry (head, advance): keys
// and values stay in the answer's bytes, and only the head's key is made a
// string, so a page buffered costs little more than its answer.
type scanPage struct {
	keys  []byte
	vals  []byte
	meta  []byte // the entries' lengths, versions and expiries not yet taken
	koff  int    // where the next key starts in keys
	voff  int    // and its value in vals
	head  Entry  // the entry to take, while ok
	ok    bool
	count int    // the page's entries
	more  bool   // keys of the range follow the page
	last  string // the cursor to resume after
}

// size is the bytes of keys and values the page holds.
func (p *scanPage) size() int { return len(p.keys) + len(p.vals) }

// decodeScanPage reads a page's answer (after the status byte) and checks
// it against q: keys in increasing order after q's cursor, with its
// prefix, blocks that match their lengths, a cursor that moves on when
// more follow. The page is positioned at its first entry.
func decodeScanPage(ans []byte, q scanReq) (scanPage, error) {
	if len(ans) == 0 || ans[0] > 1 {
		return scanPage{}, errBadMessage
	}
	p := scanPage{more: ans[0] == 1}
	b := ans[1:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	n, ok := next()
	if !ok || n > uint64(len(b)) {
		return scanPage{}, errBadMessage
	}
	p.last, b = string(b[:n]), b[n:]
	count, ok1 := next()
	keyBytes, ok2 := next()
	valBytes, ok3 := next()
	if !ok1 || !ok2 || !ok3 || keyBytes > uint64(len(b)) || valBytes > uint64(len(b))-keyBytes {
		return scanPage{}, errBadMessage
	}
	p.keys = b[:keyBytes:keyBytes]
	p.vals = b[keyBytes : keyBytes+valBytes : keyBytes+valBytes]
	p.meta = b[keyBytes+valBytes:]
	if p.more && p.last <= q.after {
		return scanPage{}, errBadMessage // a cursor that does not move on
	}
	// Check every entry now, so that advance cannot fail.
	var prev []byte
	seen, koff, voff := uint64(0), 0, 0
	meta := p.meta
	for len(meta) > 0 {
		var vals [3]uint64
		for i := range vals {
			v, n := binary.Uvarint(meta)
			if n <= 0 {
				return scanPage{}, errBadMessage
			}
			vals[i], meta = v, meta[n:]
		}
		_, n := binary.Varint(meta)
		if n <= 0 || vals[0] == 0 || vals[0] > uint64(len(p.keys)-koff) || vals[1] > uint64(len(p.vals)-voff) {
			return scanPage{}, errBadMessage
		}
		meta = meta[n:]
		k := p.keys[koff : koff+int(vals[0])]
		switch {
		case seen == 0 && string(k) <= q.after, seen > 0 && string(k) <= string(prev),
			!strings.HasPrefix(string(k), q.prefix), string(k) > p.last:
			return scanPage{}, errBadMessage
		}
		prev, koff, voff, seen = k, koff+int(vals[0]), voff+int(vals[1]), seen+1
	}
	if seen != count || koff != len(p.keys) || voff != len(p.vals) {
		return scanPage{}, errBadMessage
	}
	p.count = int(count)
	p.advance()
	return p, nil
}

// advance moves the page to its next entry: false when none is left.
// decodeScanPage checked the page, so it never fails.
func (p *scanPage) advance() bool {
	p.ok, p.head = false, Entry{}
	if len(p.meta) == 0 {
		return false
	}
	var vals [3]uint64
	for i := range vals {
		v, n := binary.Uvarint(p.meta)
		vals[i], p.meta = v, p.meta[n:]
	}
	expireAt, n := binary.Varint(p.meta)
	p.meta = p.meta[n:]
	kend, vend := p.koff+int(vals[0]), p.voff+int(vals[1])
	p.head = Entry{Key: string(p.keys[p.koff:kend]), Value: p.vals[p.voff:vend:vend], Version: vals[2]}
	if expireAt != 0 {
		p.head.ExpireAt = time.Unix(0, expireAt)
	}
	p.koff, p.voff, p.ok = kend, vend, true
	return true
}

// serveScan answers a page request for group g (rep: this node's replica
// of it, or nil), read as its mode says: Stale from this replica as it is;
// otherwise by the group's leader, under its lease (default mode) or after
// a ReadIndex round, as serveRead serves a Get.
func (db *DB) serveScan(ctx context.Context, g int, rep *replica, body []byte) []byte {
	q, ok := parseScan(body)
	if !ok || q.rng >= db.cfg.Ranges {
		return append([]byte{stInvalid}, "malformed scan request"...)
	}
	switch {
	case db.isClosed() && (rep == nil || !rep.group.IsLeader()):
		return db.closingAnswer(rep)
	case rep == nil:
		return db.hintRedirect(g)
	case q.mode == readStale:
		// Only from an Owned range: a Frozen one answers stMoving.
		page, more, ref := db.scanRead(rep, q, false)
		if ref.slow {
			return []byte{stMoving}
		}
		return scanAnswer(page, more, ref, fsm.NowNanos())
	case !rep.group.IsLeader():
		return redirect(leaderOf(rep))
	}
	if rep.sole.Load() {
		// A sole voter's leadership needs no confirming.
		if page, more, ref := db.scanRead(rep, q, false); !ref.slow {
			return scanAnswer(page, more, ref, fsm.NowNanos())
		}
	} else if q.mode == readDefault {
		// Under the lease: read once the state has applied the commit
		// index, confirm the lease afterwards, judge expiry by the time
		// it was confirmed at.
		if idx, term, ok := rep.group.LeaseIndex(); ok && db.caughtUp(ctx, rep, idx) {
			if page, more, ref := db.scanRead(rep, q, false); !ref.slow {
				if now, ok := rep.group.ConfirmLease(term); ok {
					return scanAnswer(page, more, ref, now)
				}
			}
		}
		rep.group.LeaseMissed(1) // the ReadIndex way
	}
	idx, err := rep.group.ReadIndex(ctx)
	if err == nil {
		err = rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx))
	}
	switch {
	case err != nil && db.isClosed():
		return db.closingAnswer(rep) // nothing was read: the asker tries another node
	case err != nil:
		return redirectOrUnavailable(rep, err)
	}
	page, more, ref := db.scanRead(rep, q, true) // its ReadIndex came after it
	return scanAnswer(page, more, ref, fsm.NowNanos())
}

// scanRead reads q's page from rep's state, if the group's record of q's
// range lets it serve the read (see readRefusal); the entries are the
// stored ones.
func (db *DB) scanRead(rep *replica, q scanReq, indexed bool) (page []fsm.RangeEntry, more bool, ref refusal) {
	mode := fsm.ReadOwned
	if indexed {
		mode = fsm.ReadIndexed
	}
	page, more, err := rep.fsm.ScanPage(q.rng, mode, q.prefix, q.after, q.maxEntries, q.maxBytes)
	if err == nil {
		return page, more, refusal{}
	}
	return nil, false, db.readRefusal(rep, q.rng, indexed)
}

// scanAnswer is the answer to a page request: ref's answer, or the page
// (copied) with the entries live at wall time now.
func scanAnswer(page []fsm.RangeEntry, more bool, ref refusal, now int64) []byte {
	if ref.ans != nil {
		return ref.ans
	}
	return appendScanPage([]byte{stOK}, page, more, now)
}
