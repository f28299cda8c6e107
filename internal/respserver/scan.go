package respserver

import (
	"container/list"
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"

	"github.com/gridkv/gridkv/gridkv"
)

// maxScanCount is the largest SCAN COUNT honoured; a larger one is
// clamped to it, so that a page (and the scan's Limit) stays bounded.
const maxScanCount = 10000

// cursorTable maps the SCAN cursors this server handed out to the last
// key each page returned. Redis clients (go-redis, redis-cli --scan)
// parse a cursor as an unsigned 64-bit decimal, which cannot carry a key
// of up to 64 KiB, so the key stays here and the client holds a random
// number naming it. The table keeps the newest cursors, at most max of
// them and at most maxBytes of keys (the newest is kept whatever its
// size); older ones are dropped. A cursor may be used again (a client
// retrying a page gets the same page, give or take the writes since).
//
// Threading: safe for concurrent use (a client may page on one connection
// and go on on another).
type cursorTable struct {
	max      int
	maxBytes int
	mu       struct {
		sync.Mutex
		byID  map[uint64]*list.Element // of cursorEntry
		order *list.List               // oldest first
		bytes int                      // of the keys held
	}
}

type cursorEntry struct {
	id    uint64
	after string
}

func newCursorTable(max, maxBytes int) *cursorTable {
	t := &cursorTable{max: max, maxBytes: maxBytes}
	t.mu.byID = map[uint64]*list.Element{}
	t.mu.order = list.New()
	return t
}

// put stores after and returns a new cursor naming it (never 0).
func (t *cursorTable) put(after string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := rand.Uint64()
	for id == 0 || t.mu.byID[id] != nil {
		id = rand.Uint64()
	}
	t.mu.byID[id] = t.mu.order.PushBack(cursorEntry{id: id, after: after})
	t.mu.bytes += len(after)
	for t.mu.order.Len() > t.max || t.mu.bytes > t.maxBytes && t.mu.order.Len() > 1 {
		oldest := t.mu.order.Front()
		t.mu.order.Remove(oldest)
		e := oldest.Value.(cursorEntry)
		delete(t.mu.byID, e.id)
		t.mu.bytes -= len(e.after)
	}
	return id
}

// get returns the key cursor id names.
func (t *cursorTable) get(id uint64) (after string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.mu.byID[id]
	if e == nil {
		return "", false
	}
	return e.Value.(cursorEntry).after, true
}

// cmdScan is SCAN cursor [MATCH prefix*] [COUNT n]: up to n keys (default
// 10, at most maxScanCount) in key order after the cursor's, with a prefix pattern only (abc*,
// or *); the next cursor, 0 at the end. It reads in the connection's read
// mode, but quorum, which a scan does not have, reads as lease does.
func cmdScan(s *Server, ctx context.Context, c *conn, args [][]byte) {
	var after string
	if string(args[1]) != "0" {
		id, err := strconv.ParseUint(string(args[1]), 10, 64)
		var ok bool
		if err == nil {
			after, ok = s.cursors.get(id)
		}
		if !ok {
			c.wr.WriteError("ERR invalid cursor (not one this node handed out, or dropped for newer ones)")
			return
		}
	}
	prefix, count := "", 10
	for i := 2; i < len(args); i += 2 {
		if i+1 == len(args) {
			c.wr.WriteError(errSyntax)
			return
		}
		val := string(args[i+1])
		switch strings.ToUpper(string(args[i])) {
		case "MATCH":
			p, ok := strings.CutSuffix(val, "*")
			if !ok || strings.ContainsAny(p, `*?[]\`) {
				c.wr.WriteError("ERR MATCH supports prefix patterns only (abc*)")
				return
			}
			prefix = p
		case "COUNT":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				c.wr.WriteError(errNotInt)
				return
			}
			count = min(n, maxScanCount)
		default:
			c.wr.WriteError(errSyntax)
			return
		}
	}
	opts := append([]gridkv.ReadOption{gridkv.Limit(count + 1)}, c.mode.scan...)
	if after != "" {
		opts = append(opts, gridkv.After(after))
	}
	var keys []string
	more := false
	for e, err := range s.db.Scan(ctx, prefix, opts...) {
		if err != nil {
			writeErr(c, err)
			return
		}
		if len(keys) == count {
			more = true
			break
		}
		keys = append(keys, e.Key)
	}
	next := "0"
	if more {
		next = strconv.FormatUint(s.cursors.put(keys[len(keys)-1]), 10)
	}
	c.wr.WriteArray(2)
	c.wr.WriteBulkString(next)
	c.wr.WriteArray(len(keys))
	for _, k := range keys {
		c.wr.WriteBulkString(k)
	}
}
