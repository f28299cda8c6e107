// Package fsm is the replicated state machine of one GridKV range: a sharded
// in-memory map driven by commands committed through a hashicorp/raft log.
//
// Commands are protobuf messages (package fsmpb): Set (with an optional TTL),
// Delete, CompareAndSwap (old == absent allowed) and Batch, which carries
// many client operations in one log entry so the layer above can group
// commit. Every stored value records its version, the index of the log entry
// that last wrote it.
//
// Determinism: every replica must reach the same state from the same log.
// TTL expiry is computed from the entry's AppendedAt (stamped by the leader),
// never from a replica's own clock; expired entries are swept at apply time
// against that same AppendedAt; the memory limit is checked against the
// replicated state only. Reads check expiry against a time the caller gives.
//
// Usage:
//
//	f := fsm.New(fsm.Options{MemoryLimit: 64 << 20})
//	r, _ := raft.NewRaft(conf, f, logs, stable, snaps, trans)
//	data, _ := fsm.Encode(fsm.SetOp("k", []byte("v"), time.Minute))
//	fut := r.Apply(data, 0)
//	res := fut.Response().(*fsm.Result) // res.Err, res.Version
//	v, version, ok := f.Get("k", fsm.NowNanos())
package fsm
