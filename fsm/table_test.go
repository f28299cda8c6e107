package fsm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The table against a Go map: inserts, replacements and deletes (which
// shift probe runs back and shrink the table) keep every key findable.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	tab, ref := newTable(), map[string]uint64{}
	for i := 0; i < 20000; i++ {
		key := fmt.Sprint("k", rng.IntN(400))
		if rng.IntN(3) == 0 {
			tab.delete(key)
			delete(ref, key)
		} else {
			tab.set(newEntry([]byte(key), []byte(key), uint64(i), 0))
			ref[key] = uint64(i)
		}
		if i%97 != 0 {
			continue
		}
		if tab.n != len(ref) || tab.n*4 > len(tab.tags)*3 {
			t.Fatalf("step %d: %d entries in %d slots, want %d", i, tab.n, len(tab.tags), len(ref))
		}
		for k := 0; k < 400; k++ {
			key := fmt.Sprint("k", k)
			e, found := tab.get(key)
			version, want := ref[key]
			if found != want || found && (e.header().version != version || string(e.value(e.header())) != key) {
				t.Fatalf("step %d: %s found %v, want %v", i, key, found, want)
			}
		}
	}
	for k := range ref {
		tab.delete(k)
	}
	if tab.n != 0 || len(tab.tags) != minTableSize {
		t.Fatalf("emptied table: %d entries in %d slots", tab.n, len(tab.tags))
	}
}
