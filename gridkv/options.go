package gridkv

import (
	"fmt"
	"time"
)

// WriteOption modifies a Set.
type WriteOption func(*writeOptions)

type writeOptions struct {
	ttl    time.Duration
	ttlSet bool
}

// WithTTL makes the key expire d after the write commits (measured on the
// leader's clock, the same on every replica). d must be > 0.
func WithTTL(d time.Duration) WriteOption {
	return func(o *writeOptions) { o.ttl, o.ttlSet = d, true }
}

// ReadOption selects how a read (Get, Scan) is served; Limit and After
// bound a Scan and apply to it alone.
type ReadOption func(*readOptions)

type readMode uint8

const (
	readDefault readMode = iota
	readIndex
	readQuorum
	readStale
)

type readOptions struct {
	mode   readMode
	quorum int
	// Scan only (Limit, After).
	limit    int // at most this many entries; 0: no limit
	limitSet bool
	after    string // start after this key
	afterSet bool
}

// ReadIndex reads linearizably, always confirming leadership with a quorum
// round (a heartbeat to every voter) first: no clock assumption at all,
// one round trip more than the default.
func ReadIndex() ReadOption { return func(o *readOptions) { o.mode = readIndex } }

// Quorum(r) reads from the range's replicas rather than through its
// leader: the node asks every voter of the range for its last stored log
// index, its applied index and the key's value, and once r of them (voters
// of the newest configuration among the answers) have answered, returns
// the value of one that has applied the largest stored index seen —
// asking one to wait for it if none has. The node serving it is the
// caller's own when it holds a replica of the range, else one that does.
//
// With r > ReplicaCount/2 (and the answers a majority of the newest
// configuration) the read is linearizable: every acknowledged write is
// stored on a majority, which the answers meet. It keeps working while the
// leader is cut off, once what the old leader left uncommitted commits
// under the next one.
//
// With r <= ReplicaCount/2 it is bounded-stale: it returns the value of
// the one of the r replicas that answered first that has applied the most,
// and may miss a write acknowledged by other replicas (or stored there but
// not yet known committed). A replica connected to the leader
// trails it by about a replication round plus a millisecond (the leader
// tells followers a new commit index about 1ms after it advances); one cut
// off from the leader answers with what it had until it is removed from
// the range.
//
// Fewer than r answers in time: ErrUnavailable. r must be in
// 1..ReplicaCount; while a range has fewer voters than r, all of them are
// asked for.
func Quorum(r int) ReadOption {
	return func(o *readOptions) { o.mode, o.quorum = readQuorum, r }
}

// Stale reads this node's own replica if it has one, else any replica,
// without waiting: it may miss recent writes. In steady state a follower
// applies a write about a replication round plus a millisecond after its
// leader does (the leader tells followers a new commit index about 1ms
// after it advances); a replica cut off from its leader serves what it
// had, for as long as the cut lasts or until it is removed from the range.
func Stale() ReadOption { return func(o *readOptions) { o.mode = readStale } }

// Limit makes a Scan yield at most n entries; n must be > 0. Scan only:
// Get answers ErrInvalid when given it.
func Limit(n int) ReadOption {
	return func(o *readOptions) { o.limit, o.limitSet = n, true }
}

// After makes a Scan start after key, which need not exist: the cursor for
// paging, to which a caller passes the last key of the page it has. Scan
// only: Get answers ErrInvalid when given it.
func After(key string) ReadOption {
	return func(o *readOptions) { o.after, o.afterSet = key, true }
}

// readOpts gathers a Get's options: ErrInvalid for a nil option, a Quorum
// outside 1..ReplicaCount, or Limit or After (Scan only).
func (db *DB) readOpts(opts []ReadOption) (readOptions, error) {
	o, err := db.gatherReadOpts(opts)
	if err == nil && (o.limitSet || o.afterSet) {
		err = fmt.Errorf("%w: Limit and After apply to Scan only", ErrInvalid)
	}
	return o, err
}

// scanOpts gathers a Scan's options: ErrInvalid for a nil option, Quorum
// (a Scan reads through the ranges' leaders or, Stale, any replica),
// Limit(n) with n <= 0, or an After key longer than a key may be.
func (db *DB) scanOpts(opts []ReadOption) (readOptions, error) {
	o, err := db.gatherReadOpts(opts)
	switch {
	case err != nil:
	case o.mode == readQuorum:
		err = fmt.Errorf("%w: Quorum does not apply to Scan", ErrInvalid)
	case o.limitSet && o.limit <= 0:
		err = fmt.Errorf("%w: Limit(%d) must be > 0", ErrInvalid, o.limit)
	case len(o.after) > maxKeyBytes:
		err = fmt.Errorf("%w: After key of %d bytes (at most %d)", ErrInvalid, len(o.after), maxKeyBytes)
	}
	return o, err
}

func (db *DB) gatherReadOpts(opts []ReadOption) (readOptions, error) {
	var o readOptions
	for _, f := range opts {
		if f == nil {
			return o, fmt.Errorf("%w: nil ReadOption", ErrInvalid)
		}
		f(&o)
	}
	if o.mode == readQuorum && (o.quorum < 1 || o.quorum > db.cfg.ReplicaCount) {
		return o, fmt.Errorf("%w: Quorum(%d) outside 1..%d", ErrInvalid, o.quorum, db.cfg.ReplicaCount)
	}
	return o, nil
}
