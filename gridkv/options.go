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

// ReadOption selects how a Get is served.
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
}

// ReadIndex reads linearizably, always confirming leadership with a quorum
// round first.
func ReadIndex() ReadOption { return func(o *readOptions) { o.mode = readIndex } }

// Quorum(r) asks r replicas (1..ReplicaCount) and returns the newest value;
// linearizable when r > ReplicaCount/2. This version serves it through the
// range leader with a ReadIndex round, which is linearizable for every r.
func Quorum(r int) ReadOption {
	return func(o *readOptions) { o.mode, o.quorum = readQuorum, r }
}

// Stale reads this node's own replica if it has one, else any replica,
// without waiting: it may miss recent writes.
func Stale() ReadOption { return func(o *readOptions) { o.mode = readStale } }

func (db *DB) readOpts(opts []ReadOption) (readOptions, error) {
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
