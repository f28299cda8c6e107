// Package placement decides where keys live: pure functions of their
// inputs, with no I/O and no goroutines.
//
// A key hashes (xxhash64) to a position on a 64-bit ring; the ring is cut
// into Groups contiguous ranges of equal span, one Raft group each. A
// range's replicas are the ReplicaCount members with the highest rendezvous
// (highest-random-weight) score for it, so a join or leave moves only the
// replicas it must, about 1/N of them. Plan also picks a preferred leader
// per range so that leaderships spread evenly.
//
// Usage:
//
//	r := placement.RangeOf("user:42", 64)
//	reps := placement.Replicas(r, []string{"a", "b", "c", "d"}, 3)
//	plan := placement.Plan(64, members, 3) // plan[r].Replicas, plan[r].Leader
package placement
