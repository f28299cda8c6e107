package gridkv

import (
	"cmp"
	"slices"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/raftgroup"
)

// The reconciler's decision for one range, as a pure function: given the
// range's Raft configuration and its placement target, which configuration
// changes move it toward the target, in the order to try them. The owner
// (DB.reconcile, then DB.runGroup on a goroutine of the step runner)
// makes the first that succeeds, one per pass.

// stepKind is one kind of configuration change.
type stepKind uint8

const (
	// stepRemoveStale removes an earlier incarnation of a target node: a
	// node that restarted is a new Raft server, and its old one is gone
	// for good (it lost its in-memory log). It comes first: raft refuses
	// two servers at one address, so the new incarnation cannot be added
	// while the old one is in the configuration.
	stepRemoveStale stepKind = iota + 1
	stepPromote              // a target replica catching up as a non-voter becomes a voter
	stepAdd                  // a target replica is created on its node and added as a non-voter
	stepRemove               // a replica outside the target leaves the configuration
	stepStepDown             // this leader is outside the target: hand leadership to a target voter
	stepBalance              // hand leadership to the placement's preferred leader
)

func (k stepKind) String() string {
	switch k {
	case stepRemoveStale:
		return "remove-old-incarnation"
	case stepPromote:
		return "promote"
	case stepAdd:
		return "add"
	case stepRemove:
		return "remove"
	case stepStepDown:
		return "step-down"
	case stepBalance:
		return "balance-leader"
	}
	return "unknown"
}

// confStep is one configuration change: its kind and the server it is for.
type confStep struct {
	kind stepKind
	to   peer
}

// confInput is what nextSteps decides from.
type confInput struct {
	self    raft.ServerID // this node's server id: the range's leader
	current []raft.Server // the range's latest configuration
	target  []peer        // the replicas placement wants, at the incarnations gossip announces
	// preferred is the leader placement prefers (zero: none, or this node).
	preferred peer
}

// nextSteps lists the changes toward the target, in the order to try them:
// old incarnations out first, then the target's replicas in (promotions
// before additions), and only once every target replica votes, the others
// out, this leader stepping down if it is one of them, and last the
// leadership moving to the preferred node. No step lowers the number of
// live target voters while a target replica is missing, except the removal
// of an old incarnation, which is dead already.
func nextSteps(in confInput) []confStep {
	current := make(map[raft.ServerID]raft.Server, len(in.current))
	for _, s := range in.current {
		current[s.ID] = s
	}
	inTarget := make(map[raft.ServerID]bool, len(in.target))
	targetNode := map[string]raft.ServerID{} // node id -> target server id
	targetAddr := map[string]raft.ServerID{} // address -> target server id
	for _, t := range in.target {
		inTarget[t.id] = true
		if node, _, err := raftgroup.ParseServerID(t.id); err == nil {
			targetNode[node] = t.id
		}
		targetAddr[t.addr] = t.id
	}
	var steps []confStep
	for _, s := range sortedServers(in.current) {
		if inTarget[s.ID] || s.ID == in.self {
			continue
		}
		node, _, err := raftgroup.ParseServerID(s.ID)
		if _, ok := targetNode[node]; (ok && err == nil) || targetAddr[string(s.Address)] != "" {
			steps = append(steps, confStep{stepRemoveStale, peer{s.ID, string(s.Address)}})
		}
	}
	missing := false
	for _, t := range sortedPeers(in.target) {
		if s, ok := current[t.id]; ok && s.Suffrage != raft.Voter {
			steps = append(steps, confStep{stepPromote, t})
			missing = true
		}
	}
	for _, t := range sortedPeers(in.target) {
		if _, ok := current[t.id]; !ok {
			steps = append(steps, confStep{stepAdd, t})
			missing = true
		}
	}
	if missing {
		return steps
	}
	for _, s := range sortedServers(in.current) {
		if !inTarget[s.ID] && s.ID != in.self && !containsStep(steps, s.ID) {
			steps = append(steps, confStep{stepRemove, peer{s.ID, string(s.Address)}})
		}
	}
	if !inTarget[in.self] {
		for _, t := range sortedPeers(in.target) {
			if current[t.id].Suffrage == raft.Voter {
				steps = append(steps, confStep{stepStepDown, t})
				break
			}
		}
		return steps
	}
	if len(steps) == 0 && in.preferred.known() && in.preferred.id != in.self {
		if s, ok := current[in.preferred.id]; ok && s.Suffrage == raft.Voter {
			steps = append(steps, confStep{stepBalance, in.preferred})
		}
	}
	return steps
}

func containsStep(steps []confStep, id raft.ServerID) bool {
	return slices.ContainsFunc(steps, func(s confStep) bool { return s.to.id == id })
}

func sortedServers(s []raft.Server) []raft.Server {
	out := slices.Clone(s)
	slices.SortFunc(out, func(a, b raft.Server) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func sortedPeers(p []peer) []peer {
	out := slices.Clone(p)
	slices.SortFunc(out, func(a, b peer) int { return cmp.Compare(a.id, b.id) })
	return out
}
