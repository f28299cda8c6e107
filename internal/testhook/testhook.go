// Package testhook lets the Jepsen-style suite in tests/ reach inside the
// nodes it starts: it registers Hooks under a node id before gridkv.Open,
// and Open, finding them, routes every byte through the fault seam and
// hands back a Node with the powers no public API should have (crash,
// leadership transfer of one range, replica digests, an unsafe read path
// for the negative control).
//
// Outside tests nothing is registered, and Open pays one map lookup.
package testhook

import (
	"context"
	"sync"

	"github.com/gridkv/gridkv/internal/faultnet"
)

// Hooks configure one node; the suite sets the inputs before Open, and
// Open sets Node.
type Hooks struct {
	// Faults decides the fate of every frame and gossip packet the node
	// sends, keyed by the addresses of both ends.
	Faults *faultnet.Net
	// UnsafeReads serves default (linearizable) reads from the local
	// replica without any round or wait: deliberately wrong, for the
	// negative control the suite must catch.
	UnsafeReads bool

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
	// if it leads r.
	TransferLeadership(ctx context.Context, r int) error
}

// Replica is one range's replica on a node.
type Replica struct {
	Range    int
	ServerID string   // this replica's Raft server id
	Leader   bool     // it leads its group now
	Voters   []string // server ids of the voters in its configuration
	Keys     int
	Digest   uint64 // order-independent hash of every key, value and version
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

var registry sync.Map // node id -> *Hooks

// Register makes Open of nodeID use h, until Unregister.
func Register(nodeID string, h *Hooks) { registry.Store(nodeID, h) }

// Unregister forgets nodeID's hooks.
func Unregister(nodeID string) { registry.Delete(nodeID) }

// Lookup returns nodeID's hooks, or nil.
func Lookup(nodeID string) *Hooks {
	h, ok := registry.Load(nodeID)
	if !ok {
		return nil
	}
	return h.(*Hooks)
}
