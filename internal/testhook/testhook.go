// Package testhook lets the Jepsen-style suite in tests/ open nodes with
// powers no public API should have: Open (set by package gridkv) opens a
// node with Hooks, which route every byte through the fault seam, may time
// leases on a clock the suite controls, and may switch on a negative
// control; it hands back a Node (crash, leadership transfer of one range,
// replica digests). gridkv.Open passes no hooks: nothing here is on its
// path.
package testhook

import (
	"context"
	"sync"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/raftgroup"
)

// Open opens a node like gridkv.OpenContext, with hooks; cfg is a
// gridkv.Config and the result a *gridkv.DB (this package cannot name
// gridkv's types: gridkv imports it). Set by package gridkv when it is
// linked in.
var Open func(ctx context.Context, cfg any, h *Hooks) (any, error)

// Hooks configure one node; the suite sets the inputs before Open, and
// Open sets Node.
type Hooks struct {
	// Faults decides the fate of every frame and gossip packet the node
	// sends, keyed by the addresses of both ends.
	Faults *faultnet.Net
	// Lease tunes the node's leader leases: the clock nemesis gives each
	// node a clock of its own, and negative controls shorten the margin to
	// nothing or keep leases through transfers.
	Lease raftgroup.LeaseOptions
	// ClockRate emulates a node whose clock runs at this rate against
	// real time (0 or 1: real time). Open stretches the node's raft
	// timings (HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout,
	// CommitTimeout) by 1/ClockRate, keeps its lease and vote guard in its
	// own clock's units (Lease.Heartbeat), and times them on a Clock of
	// this rate unless Lease.Clock is set. Only the suite can do this:
	// Open refuses a node whose Timing.HeartbeatTimeout differs from the
	// cluster's, and Config has no lease heartbeat apart from it.
	ClockRate float64
	// QuorumSlack lets Quorum reads answer from a replica that has not
	// applied the largest stored index seen, by up to this many entries:
	// a negative control (a quorum read that does not wait for apply).
	QuorumSlack uint64
	// HandoffTimeout, when > 0, replaces how long a range handoff may take
	// before its source takes the range back (gridkv.Config's
	// Timing.HandoffTimeout, which it overrides).
	HandoffTimeout time.Duration
	// FixedGroups keeps the cluster at the group count it was created
	// with (gridkv grows it with membership otherwise): for suite clusters
	// whose checks assume the count never changes.
	FixedGroups bool

	mu   sync.Mutex
	node Node
}

// Node is what Open hands back.
type Node interface {
	// Crash stops the node the way a crash would: no leadership hand-off,
	// no gossip leave, all in-memory state gone. Idempotent.
	Crash()
	// Leads lists the ranges this node leads now (cheap).
	Leads() []int
	// Ranges reports this node's replicas, with a digest of each one's
	// state (reads every entry: for convergence checks, not polling).
	Ranges() []Replica
	// TransferLeadership moves range r's leadership away from this node,
	// if it leads r: to the node whose NodeID is to, or to any voter that
	// answers when to is "".
	TransferLeadership(ctx context.Context, r int, to string) error
	// StartTransfer starts a leadership transfer of range r, if this node
	// leads it, straight through raft (to the voter raft picks) and does
	// not wait for it: no check that the target answers, no pause after a
	// failure (see raftgroup.Group.TransferLeadership for why those exist).
	StartTransfer(r int) error
	// LeaseStats sums the lease reads this node's replicas served (hits)
	// and could not serve (misses); see raftgroup.Group.LeaseStats.
	LeaseStats() (hits, misses uint64)
	// MoveRange moves range r to replica group to (asking the group that
	// owns it, which decides) and waits for the outcome: nil once to owns
	// r, an error when the source took it back or ctx ended first. The
	// way a change of the group count will move ranges.
	MoveRange(ctx context.Context, r, to int) error
	// Groups is the cluster's replica group count.
	Groups() int
}

// Replica is one range's replica on a node.
type Replica struct {
	Range    int
	ServerID string   // this replica's Raft server id
	Leader   bool     // it leads its group now
	Voters   []string // server ids of the voters in its configuration
	Keys     int
	Digest   uint64 // order-independent hash of every key, value and version
	// Owned lists the hash ranges the group owns, as this replica has
	// applied; Moving counts its ranges in a handoff (Frozen, Incoming,
	// Sealed).
	Owned  []int
	Moving int
}

// SetNode is called by Open.
func (h *Hooks) SetNode(n Node) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.node = n
}

// Node returns what Open set, or nil.
func (h *Hooks) Node() Node {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.node
}
