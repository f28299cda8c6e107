// Package placement decides where keys live: pure functions of their
// inputs, with no I/O and no goroutines.
//
// A key hashes (xxhash64) to a position on a 64-bit ring; the ring is cut
// into a fixed number of contiguous ranges of equal span (RangeOf). Each
// range belongs to one replica group, a Raft group carrying many ranges:
// the group with the highest rendezvous score for the range (GroupOf), so
// adding a group moves about 1/G of the ranges. A group's replicas are the
// ReplicaCount members with the highest rendezvous (highest-random-weight)
// score for it, so a join or leave moves only the replicas it must, about
// 1/N of them. Plan also picks a preferred leader per group so that
// leaderships spread evenly.
//
// Usage:
//
//	r := placement.RangeOf("user:42", 1024)
//	g := placement.GroupOf(r, 6)
//	reps := placement.Replicas(g, []string{"a", "b", "c", "d"}, 3)
//	plan := placement.Plan(6, members, 3) // plan[g].Replicas, plan[g].Leader
package placement
