package gridkv

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/testhook"
)

// crash stops a node the way a crash would: no leadership hand-off, no
// gossip leave; its Raft replicas and all their state vanish with it.
// Idempotent, and safe after Close.
func (db *DB) crash() {
	reps, ok := db.stopServing()
	if !ok {
		return
	}
	db.gsp.Crash()
	db.host.Close()
	db.fwd.close()
	for _, rep := range reps {
		rep.batch.close()
	}
}

// hookNode gives the Jepsen-style suite the powers of testhook.Node.
type hookNode struct{ db *DB }

func (h hookNode) Crash() { h.db.crash() }

func (h hookNode) Leads() []int {
	var out []int
	for r, rep := range h.db.replicaList() {
		if rep.group.IsLeader() {
			out = append(out, r)
		}
	}
	return out
}

func (h hookNode) Ranges() []testhook.Replica {
	var out []testhook.Replica
	for r, rep := range h.db.replicaList() {
		d, n := rep.fsm.Digest()
		var voters []string
		if servers, err := rep.group.Configuration(); err == nil {
			for _, s := range servers {
				if s.Suffrage == raft.Voter {
					voters = append(voters, string(s.ID))
				}
			}
		}
		out = append(out, testhook.Replica{Range: r, ServerID: string(h.db.host.ID()), Leader: rep.group.IsLeader(),
			Voters: voters, Keys: n, Digest: d})
	}
	return out
}

func (h hookNode) TransferLeadership(ctx context.Context, r int) error {
	rep := h.db.replica(r)
	if rep == nil || !rep.group.IsLeader() {
		return fmt.Errorf("gridkv: %s does not lead range %d", h.db.cfg.NodeID, r)
	}
	return rep.group.TransferLeadership(ctx, "", "")
}
