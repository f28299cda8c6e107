// Package raftgroup runs many hashicorp/raft groups in one process (one per
// GridKV range) over a single TCP listener per node.
//
// A Host owns the listener and its connections. Every group replica on the
// node gets a raft.Transport that tags its frames with the group id, so the
// traffic of all groups between two nodes, requests and answers of both
// directions (Host.Call's too), shares one connection. Senders only queue
// frames; a writer goroutine per connection writes all that is queued in
// one syscall. If both nodes dial at once, both keep the connection the
// lower address dialed and retire the other (see docs/raftgroup.md).
// Snapshots stream on a connection of their own so they never hold up
// heartbeats. Heartbeats take raft's fast path (answered off the group's
// main loop). Raft logs, stable state and snapshots are kept in memory.
//
// Memory: the log is bounded by bytes (Config.MaxLogBytes, per group) as
// well as by raft's entry counts, and keeps entries by value, so nothing
// raft handed it (a leader's Apply futures) outlives them. Each group keeps
// its newest snapshot only, and by reference when the FSM allows: the
// snapshot sink implements SnapshotRetainer, and an FSM snapshot that is an
// immutable view of the state (an io.WriterTo) hands itself to Retain
// instead of writing bytes; the store streams it from WriteTo when raft
// sends it to a follower. Snapshots installed from a leader are bytes, kept
// until a snapshot of the replica's own, taken as soon as the installed one
// is restored, replaces them. See docs/memory.md.
//
// Reads: Group.LeaseIndex and ConfirmLease serve linearizable reads under a
// leader lease that raftgroup derives from acknowledged AppendEntries (raft
// has none; its followers are made to refuse votes for a heartbeat time-out
// after acknowledging one, and TimeoutNow carries the term). ReadIndex
// confirms leadership with a round sent after the call. A commit notifier
// tells followers a new commit index about 1ms after it advances. See
// docs/raftgroup.md, "Leader leases".
//
// Raft server ids carry the node's incarnation ("node/incarnation"): with
// in-memory logs a restarted node has lost its log and must come back as a
// new server, never under its old id (see docs/raftgroup.md).
//
// Host.Stats returns cumulative counters (frames per write and per read,
// entries per AppendEntries, Apply calls, goroutines started on request
// paths), one atomic add each on the hot path. Group.Apply waits for its
// futures through one goroutine per group, not one per call.
//
// Faults: Config.Faults (an internal/faultnet.Net) decides the fate of every
// frame a node sends — drop, delay, duplicate, cut — per direction between
// node pairs. It is nil, and costs one nil check, in production.
//
// Usage:
//
//	h, _ := raftgroup.NewHost(raftgroup.Config{NodeID: "n1"})
//	defer h.Close()
//	g, _ := h.CreateGroup(7, fsm.New(fsm.Options{}), raftgroup.GroupOptions{
//		Bootstrap: []raft.Server{{ID: h.ID(), Address: raft.ServerAddress(h.Addr())}},
//	})
//	resp, err := g.Apply(ctx, data) // on the leader
package raftgroup
