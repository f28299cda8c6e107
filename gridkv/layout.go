package gridkv

import (
	"fmt"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/placement"
)

// layout is where the key space lives: Ranges hash ranges, each Owned at
// Genesis by one of the groups the cluster was created with
// (placement.GroupOf over genesisGroups), and placed now over groups
// groups (placement.GroupOf over groups): the cluster's layout, replicated
// in group 0 (fsm.Layout, grow.go). A layout value never changes: a node
// that learns a newer one stores a new value, which shares the routes.
type layout struct {
	ranges        int
	genesisGroups int        // the groups the cluster was created with
	groups        int        // ranges are placed over groups 0..groups-1
	exists        int        // groups that exist (groups, and any created since)
	epoch         uint64     // the fsm.Layout epoch this is (0: formation, not yet logged)
	creation      uint64     // the creation of group 0 whose log holds it (fsm.Layout.Gen(0))
	groupOf       []uint16   // range -> its Genesis group
	targetOf      []uint16   // range -> its group by placement over groups
	rangesOf      [][]int    // Genesis group -> its ranges at Genesis, in order
	logged        fsm.Layout // the layout logged in group 0 this is (zero at epoch 0)
	// routes is where this node believes each range is now: groupOf,
	// then what handoffs taught it (routes.go).
	routes *routeTable
}

// newLayout is the layout of a cluster created with genesis groups.
func newLayout(ranges, genesis int) *layout {
	l := &layout{ranges: ranges, genesisGroups: genesis, groups: genesis, exists: genesis,
		groupOf: make([]uint16, ranges), rangesOf: placement.GroupRanges(ranges, genesis)}
	for g, rs := range l.rangesOf {
		for _, r := range rs {
			l.groupOf[r] = uint16(g)
		}
	}
	l.targetOf = l.groupOf
	l.routes = newRouteTable(l.groupOf)
	return l
}

// with is l at a later layout: groups placed over, groups that exist,
// epoch. The Genesis groups and the routes stay.
func (l *layout) with(groups, exists int, epoch uint64) *layout {
	next := *l
	next.groups, next.exists, next.epoch = groups, max(exists, groups), epoch
	if groups != l.groups {
		next.targetOf = make([]uint16, l.ranges)
		for r := range next.targetOf {
			next.targetOf[r] = uint16(placement.GroupOf(r, groups))
		}
	}
	return &next
}

// locate returns key's range and the group this node believes holds it.
func (l *layout) locate(key string) (rng, g int) {
	rng = placement.RangeOf(key, l.ranges)
	g, _ = l.routes.lookup(rng)
	return rng, g
}

// genesis is range r's Genesis group: where it was Owned at epoch 1.
func (l *layout) genesis(r int) int { return int(l.groupOf[r]) }

// target is the group range r belongs to by placement over the layout's
// groups: where the rebalancer moves it (grow.go).
func (l *layout) target(r int) int { return int(l.targetOf[r]) }

// formationGroups is the group count of a cluster created by n nodes.
func (c Config) formationGroups(n int) int {
	return min(c.GroupsPerNode*max(n, 1), maxGroups)
}

// targetGroups is the group count the cluster should have with n stable
// members: GroupsPerNode per node, within 1..maxGroups.
func (c Config) targetGroups(n int) int {
	return min(max(c.GroupsPerNode*n, 1), maxGroups)
}

// clusterLayout is the newest layout the members announce (ok false: none
// does yet), or an error when two announce different Genesis group counts
// (they are not one cluster) or more groups than allowed.
func clusterLayout(members []gossip.Member) (best gossip.Meta, ok bool, err error) {
	for _, m := range members {
		switch {
		case m.Meta.Groups == 0 || m.Meta.GenesisGroups == 0:
			continue
		case m.Meta.Groups > maxGroups || m.Meta.GenesisGroups > m.Meta.Groups:
			return best, false, fmt.Errorf("member %s announces %d replica groups (%d at genesis), more than %d or fewer than at genesis",
				m.Meta.NodeID, m.Meta.Groups, m.Meta.GenesisGroups, maxGroups)
		case ok && m.Meta.GenesisGroups != best.GenesisGroups:
			return best, false, fmt.Errorf("members %s and %s announce %d and %d replica groups at genesis",
				best.NodeID, m.Meta.NodeID, best.GenesisGroups, m.Meta.GenesisGroups)
		case !ok || layoutNewer(m.Meta.LayoutCreation, m.Meta.LayoutEpoch, best.LayoutCreation, best.LayoutEpoch):
			best, ok = m.Meta, true
		}
	}
	return best, ok, nil
}

// layoutNewer reports whether a layout logged by group 0's creation
// creation at epoch is newer than one logged by creation knownCreation at
// knownEpoch. Group 0's creation counts first: a creation of group 0
// recovered after losing its majority (RecoverGroup) supersedes the
// older one, whose replicas may still have logged layout changes at
// higher epochs (cut off, or forced); those never win.
func layoutNewer(creation, epoch, knownCreation, knownEpoch uint64) bool {
	if creation != knownCreation {
		return creation > knownCreation
	}
	return epoch > knownEpoch
}

// layoutOf is l at the logged layout fl, if fl is newer than l
// (layoutNewer).
func (l *layout) layoutOf(fl fsm.Layout) (*layout, bool) {
	if !l.supersededBy(fl.Gen(0), fl.Epoch) || fl.Epoch == 0 ||
		fl.Genesis != l.genesisGroups || fl.Groups > maxGroups || fl.Exists() > maxGroups {
		return l, false
	}
	next := l.with(fl.Groups, fl.Exists(), fl.Epoch)
	next.logged, next.creation = fl, fl.Gen(0)
	return next, true
}

// supersededBy reports whether a layout logged by group 0's creation
// creation at epoch is newer than l (layoutNewer).
func (l *layout) supersededBy(creation, epoch uint64) bool {
	return layoutNewer(creation, epoch, l.creation, l.epoch)
}

// gen is group g's creation (fsm.Created.Gen) as far as this layout
// knows: 0 for a genesis group or one it does not know of.
func (l *layout) gen(g int) uint64 { return l.logged.Gen(g) }
