package placement

import (
	"math/bits"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// KeyHash is the 64-bit position of key on the ring.
func KeyHash(key string) uint64 { return xxhash.Sum64String(key) }

// RangeOf returns the range (0..groups-1) holding key. The ring is cut into
// groups contiguous, equal spans: range r holds positions
// [ceil(r·2⁶⁴/groups), ceil((r+1)·2⁶⁴/groups)).
func RangeOf(key string, groups int) int { return RangeOfHash(KeyHash(key), groups) }

// RangeOfHash is RangeOf for a position already hashed.
func RangeOfHash(h uint64, groups int) int {
	hi, _ := bits.Mul64(h, uint64(groups)) // floor(h·groups / 2⁶⁴)
	return int(hi)
}

// Bounds returns the first and last ring positions of range r.
func Bounds(r, groups int) (first, last uint64) {
	first = start(r, groups)
	if r == groups-1 {
		return first, ^uint64(0)
	}
	return first, start(r+1, groups) - 1
}

// start is ceil(r·2⁶⁴/groups), the smallest h with floor(h·groups/2⁶⁴) = r.
func start(r, groups int) uint64 {
	if r == 0 {
		return 0
	}
	// r·2⁶⁴ as the 128-bit value (r, 0); divide by groups, round up.
	q, rem := bits.Div64(uint64(r), 0, uint64(groups))
	if rem != 0 {
		q++
	}
	return q
}

// score is member m's rendezvous weight for range r.
func score(m string, r int) uint64 {
	var buf [64]byte
	b := append(buf[:0], m...)
	b = append(b, 0)
	b = strconv.AppendInt(b, int64(r), 10)
	return xxhash.Sum64(b)
}

// Replicas returns the n members (fewer if fewer exist) that should hold
// range r, most preferred first: the members with the highest rendezvous
// score for r. When a member joins or leaves, only the ranges where it is
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

// Assignment is the target of one range.
type Assignment struct {
	Replicas []string // most preferred first
	Leader   string   // one of Replicas; "" when there are no members
}

// Plan computes every range's target replicas and preferred leader.
//
// Leaders are spread as evenly as the replica sets allow: the leader of
// each range is one of its replicas, chosen so that the most leaderships any
// member holds is as small as possible (a capacitated bipartite matching,
// found by augmenting paths, smallest feasible capacity first). Ranges are
// placed in order, each trying its replicas most preferred first. The
// result depends only on the inputs.
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

// assignLeaders gives every range a leader among its replicas with no
// member leading more than limit ranges, if that is possible.
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
