package gridkv

import (
	"fmt"

	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/placement"
)

// layout is where the key space lives: Ranges hash ranges, each belonging
// at Genesis to one of the cluster's replica groups (placement.GroupOf).
// The group count is fixed when the cluster is created, so a layout never
// changes once a node knows it, but for its routes, which handoffs move.
type layout struct {
	ranges, groups int
	groupOf        []uint16 // range -> group
	rangesOf       [][]int  // group -> its ranges at Genesis, in order
	// routes is where this node believes each range is now: groupOf,
	// then what handoffs taught it (routes.go).
	routes *routeTable
}

func newLayout(ranges, groups int) *layout {
	l := &layout{ranges: ranges, groups: groups, groupOf: make([]uint16, ranges),
		rangesOf: placement.GroupRanges(ranges, groups)}
	for g, rs := range l.rangesOf {
		for _, r := range rs {
			l.groupOf[r] = uint16(g)
		}
	}
	l.routes = newRouteTable(l.groupOf)
	return l
}

// locate returns key's range and the group this node believes holds it.
func (l *layout) locate(key string) (rng, g int) {
	rng = placement.RangeOf(key, l.ranges)
	g, _ = l.routes.lookup(rng)
	return rng, g
}

// genesis is range r's Genesis group: where it was Owned at epoch 1.
func (l *layout) genesis(r int) int { return int(l.groupOf[r]) }

// formationGroups is the group count of a cluster created by n nodes.
func (c Config) formationGroups(n int) int {
	return min(c.GroupsPerNode*max(n, 1), maxGroups)
}

// clusterGroups is the group count the members announce (0: none does
// yet), or an error when two announce different counts.
func clusterGroups(members []gossip.Member) (int, error) {
	groups, from := 0, ""
	for _, m := range members {
		switch g := m.Meta.Groups; {
		case g == 0:
		case groups == 0:
			groups, from = g, m.Meta.NodeID
		case g != groups:
			return 0, fmt.Errorf("members %s and %s announce %d and %d replica groups", from, m.Meta.NodeID, groups, g)
		}
	}
	if groups > maxGroups {
		return 0, fmt.Errorf("member %s announces %d replica groups, more than %d", from, groups, maxGroups)
	}
	return groups, nil
}
