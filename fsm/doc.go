// Package fsm is the replicated state machine of one GridKV replica group:
// a group carries many ranges of the key space, and the state machine keeps,
// per range it knows, a record (RangeRecord: state and epoch) and the
// range's own data, driven by commands committed through a hashicorp/raft
// log.
//
// Commands are protobuf messages (package fsmpb): Set (with an optional TTL),
// Delete and CompareAndSwap (old == absent allowed), each naming its range;
// Batch, which carries many client operations in one log entry so the layer
// above can group commit; and Genesis, a group's first entry at bootstrap,
// which makes its initial ranges Owned at epoch 1 (idempotent; not allowed
// inside a Batch). Every stored value records its version, the index of the
// log entry that last wrote it.
//
// Ownership fence: an operation on a range that is not Owned here changes
// nothing and reports ErrNotOwned (ErrMoving when the range is Frozen);
// reads of such a range report the same. A range number at or over
// Options.Ranges is ErrBadCommand.
//
// Handoff: a range moves from a source group S to a target group T through
// seven commands, each a log entry of its own carrying the range and the
// handoff's epoch h (Freeze: the Owned epoch e = h-1). On S, Freeze makes
// Owned(e) Frozen(e+1,T): the data stays, writes answer ErrMoving, reads
// serve only through LookupMode(ReadIndexed), and nothing is swept. T
// pulls pages of the frozen range from any S replica (Export, in key
// order, with RangeTally as the trailer) through its own log: Incoming
// (Absent or Gone below h becomes Incoming(h,S)), then Chunk commands that
// stage the entries, the last one sealing the range (Sealed) if the copy
// matches the trailer and the announced size, else dropping it (Absent(h),
// ErrCopyMismatch). S decides: Release (Frozen(h) becomes Gone(h+1,T), the
// data dropped) or Unfreeze (Owned(h+1) again). T then Activates
// (Sealed(h) becomes Owned(h+1)) or Aborts (Absent(h)). A command whose
// precondition fails changes nothing and answers ErrPrecondition with the
// current record in Result.Record, so duplicated and reordered commands
// never change the outcome. The drivers that propose these commands (RPCs
// between the groups' leaders, timeouts, routing) are not built yet.
//
// Determinism: every replica must reach the same state from the same log.
// TTL expiry is computed from the entry's AppendedAt (stamped by the leader),
// never from a replica's own clock; expired entries of Owned ranges are swept
// at apply time against that same AppendedAt; the memory limit (the group's
// share of the cluster's: MemoryLimit * owned / Ranges) is checked against
// the replicated state only. Reads check expiry against a time the caller
// gives.
//
// Snapshots reference the stored entries (never mutated) instead of copying
// them; a snapshot is an io.WriterTo, and a sink that implements
// Retain(io.WriterTo) bool may keep it by reference instead of taking bytes.
//
// Usage:
//
//	f := fsm.New(fsm.Options{MemoryLimit: 1 << 30, Ranges: 1024})
//	r, _ := raft.NewRaft(conf, f, logs, stable, snaps, trans)
//	r.Apply(fsm.AppendGenesis(nil, myRanges), 0) // once, at bootstrap
//	fut := r.Apply(fsm.AppendSet(nil, rng, "k", []byte("v"), time.Minute), 0)
//	res := fut.Response().(*fsm.Result) // res.Err, res.Version
//	v, version, ok, err := f.Get(rng, "k", fsm.NowNanos())
package fsm
