package raftgroup

import (
	"math/rand/v2"
	"testing"
)

func TestDedupServesEachIDOnce(t *testing.T) {
	var d dedup
	rng := rand.New(rand.NewPCG(1, 2))
	// Ids 1..200000, each sent once or twice, shuffled within a window of 64.
	var ids []uint64
	for id := uint64(1); id <= 200000; id++ {
		ids = append(ids, id)
		if rng.IntN(10) == 0 {
			ids = append(ids, id)
		}
	}
	for i := range ids {
		j := min(len(ids)-1, i+rng.IntN(64))
		ids[i], ids[j] = ids[j], ids[i]
	}
	served := map[uint64]int{}
	for _, id := range ids {
		if d.first(id) {
			served[id]++
		}
	}
	for id := uint64(1); id <= 200000; id++ {
		if served[id] != 1 {
			t.Fatalf("id %d served %d times", id, served[id])
		}
	}
	// A jump beyond the window forgets the past; ids that old are refused.
	if !d.first(200000 + 3*dedupWindow) {
		t.Fatal("a new id was refused")
	}
	if d.first(200001) {
		t.Fatal("an id older than the window was served")
	}
}
