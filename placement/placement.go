package placement

import (
	"encoding/binary"
	"math/bits"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// KeyHash is the 64-bit position of key on the ring.
func KeyHash(key string) uint64 { return xxhash.Sum64String(key) }

// RangeOf returns the range (0..ranges-1) holding key. The ring is cut into
// ranges contiguous, equal spans: range r holds positions
// [ceil(r·2⁶⁴/ranges), ceil((r+1)·2⁶⁴/ranges)).
func RangeOf(key string, ranges int) int { return RangeOfHash(KeyHash(key), ranges) }

// RangeOfHash is RangeOf for a position already hashed.
func RangeOfHash(h uint64, ranges int) int {
	hi, _ := bits.Mul64(h, uint64(ranges)) // floor(h·ranges / 2⁶⁴)
	return int(hi)
}

// Bounds returns the first and last ring positions of range r.
func Bounds(r, ranges int) (first, last uint64) {
	first = start(r, ranges)
	if r == ranges-1 {
		return first, ^uint64(0)
	}
	return first, start(r+1, ranges) - 1
}

// start is ceil(r·2⁶⁴/ranges), the smallest h with floor(h·ranges/2⁶⁴) = r.
func start(r, ranges int) uint64 {
	if r == 0 {
		return 0
	}
	// r·2⁶⁴ as the 128-bit value (r, 0); divide by ranges, round up.
	q, rem := bits.Div64(uint64(r), 0, uint64(ranges))
	if rem != 0 {
		q++
	}
	return q
}

// GroupOf returns the replica group (0..groups-1) that range r belongs to:
// the group with the highest rendezvous score for r. Going from groups to
// groups+1 moves only the ranges the new group wins, about 1/(groups+1) of
// them, and each from wherever it was.
func GroupOf(r, groups int) int {
	best, bestScore := 0, uint64(0)
	for g := range groups {
		if s := rangeScore(r, g); g == 0 || s > bestScore {
			best, bestScore = g, s
		}
	}
	return best
}

// GroupRanges returns, for each of groups replica groups, the ranges (of
// ranges) that belong to it by GroupOf, in increasing order.
func GroupRanges(ranges, groups int) [][]int {
	out := make([][]int, groups)
	for r := range ranges {
		g := GroupOf(r, groups)
		out[g] = append(out[g], r)
	}
	return out
}

// rangeScore is group g's rendezvous weight for range r: both numbers
// in one 64-bit word, hashed.
func rangeScore(r, g int) uint64 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(r)<<32|uint64(uint32(g)))
	return xxhash.Sum64(b[:])
}

// score is member m's rendezvous weight for group r.
func score(m string, r int) uint64 {
	var buf [64]byte
	b := append(buf[:0], m...)
	b = append(b, 0)
	b = strconv.AppendInt(b, int64(r), 10)
	return xxhash.Sum64(b)
}

// Replicas returns the n members (fewer if fewer exist) that should hold
// replica group r, most preferred first: the members with the highest
// rendezvous score for r. When a member joins or leaves, only the groups where it is
// (or becomes) among the top n change, about n/N of each member's share.
// members need not be sorted; duplicates are ignored.
func Replicas(r int, members []string, n int) []string {
	type scored struct {
		id string
		s  uint64
	}
	all := make([]scored, 0, len(members))
	seen := make(map[string]bool, len(members))
	for _, m := range members {
		if !seen[m] {
			seen[m] = true
			all = append(all, scored{m, score(m, r)})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].s != all[j].s {
			return all[i].s > all[j].s
		}
		return all[i].id < all[j].id
	})
	if n > len(all) {
		n = len(all)
	}
	out := make([]string, n)
	for i := range out {
		out[i] = all[i].id
	}
	return out
}

// Assignment is the target of one replica group.
type Assignment struct {
	Replicas []string // most preferred first
	Leader   string   // one of Replicas; "" when there are no members
}

// Plan computes every replica group's target replicas and preferred
// leader.
//
// Leaders are spread as evenly as the replica sets allow: the leader of
// each group is one of its replicas, chosen so that the most leaderships
// any member holds is as small as possible (a capacitated bipartite
// matching, found by augmenting paths, smallest feasible capacity first).
// Groups are placed in order, each trying its replicas most preferred
// first. The result depends only on the inputs.
func Plan(groups int, members []string, n int) []Assignment {
	plan := make([]Assignment, groups)
	for r := range plan {
		plan[r].Replicas = Replicas(r, members, n)
	}
	distinct := map[string]bool{}
	for _, m := range members {
		distinct[m] = true
	}
	if len(distinct) == 0 || groups == 0 {
		return plan
	}
	for limit := (groups + len(distinct) - 1) / len(distinct); ; limit++ {
		if leaders, ok := assignLeaders(plan, limit); ok {
			for r := range plan {
				plan[r].Leader = leaders[r]
			}
			return plan
		}
	}
}

// assignLeaders gives every group a leader among its replicas with no
// member leading more than limit groups, if that is possible.
func assignLeaders(plan []Assignment, limit int) ([]string, bool) {
	leader := make([]string, len(plan))
	owned := map[string][]int{} // member -> ranges it leads
	var visited map[string]bool
	// place tries to give range r a leader, moving other ranges' leaders
	// along an augmenting path if a candidate is full.
	var place func(r int) bool
	place = func(r int) bool {
		for _, m := range plan[r].Replicas {
			if visited[m] {
				continue
			}
			visited[m] = true
			if len(owned[m]) < limit {
				leader[r] = m
				owned[m] = append(owned[m], r)
				return true
			}
			for i, other := range owned[m] {
				if place(other) {
					owned[m][i] = r
					leader[r] = m
					return true
				}
			}
		}
		return false
	}
	for r := range plan {
		visited = map[string]bool{}
		if !place(r) {
			return nil, false
		}
	}
	return leader, true
}
