package fsm

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// naivePage is ScanPage's reference: every entry sorted, then cut.
func naivePage(f *FSM, r int, prefix, after string, maxEntries, maxBytes int) (page []string, more bool) {
	var all []string
	for _, k := range keys(f, r) {
		if k > after && strings.HasPrefix(k, prefix) {
			all = append(all, k)
		}
	}
	size := 0
	for _, k := range all {
		e, _, _ := f.LookupMode(r, k, ReadIndexed)
		n := len(k) + len(e.Value)
		if len(page) > 0 && (len(page) >= max(maxEntries, 1) || size+n > maxBytes) {
			break
		}
		page, size = append(page, k), size+n
	}
	return page, len(page) < len(all)
}

// ScanPage against the naive reference, over random prefixes, cursors and
// bounds; then paging a whole prefix gives each key once, in order.
func TestScanPageMatchesReference(t *testing.T) {
	f := owning(t, Options{Ranges: 4}, hr, 2)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 600 {
		k := fmt.Sprintf("%c%c%03d", 'a'+rng.IntN(3), 'a'+rng.IntN(3), rng.IntN(1000))
		mustStep(t, f, SetOp(hr, k, make([]byte, rng.IntN(40)), time.Duration(i%2)*time.Millisecond))
		mustStep(t, f, SetOp(2, k, nil, 0)) // another range's keys stay out
	}
	for i := range 2000 {
		prefix := []string{"", "a", "ab", "c", "cc0", "z"}[rng.IntN(6)]
		after := []string{"", "a", "b", fmt.Sprintf("b%c%03d", 'a'+rng.IntN(3), rng.IntN(1000)), "zz"}[rng.IntN(5)]
		maxEntries, maxBytes := rng.IntN(50)-1, rng.IntN(2000)
		page, more, err := f.ScanPage(hr, ReadOwned, prefix, after, maxEntries, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		want, wantMore := naivePage(f, hr, prefix, after, maxEntries, maxBytes)
		got := make([]string, len(page))
		for j, e := range page {
			got[j] = e.Key
			if x, _, _ := f.Lookup(hr, e.Key); x.Version != e.Version || x.ExpireAt != e.ExpireAt || string(x.Value) != string(e.Value) {
				t.Fatalf("%q paged as %+v, stored %+v", e.Key, e.Entry, x)
			}
		}
		if !slices.Equal(got, want) || more != wantMore {
			t.Fatalf("case %d: ScanPage(%q, after %q, %d entries, %d bytes) = %v, %v; want %v, %v",
				i, prefix, after, maxEntries, maxBytes, got, more, want, wantMore)
		}
	}
	for _, prefix := range []string{"", "b", "ca"} {
		var got []string
		after := ""
		for {
			page, more, err := f.ScanPage(hr, ReadOwned, prefix, after, 7, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				got = append(got, e.Key)
			}
			if !more {
				break
			}
			after = page[len(page)-1].Key
		}
		want, _ := naivePage(f, hr, prefix, "", 1<<30, 1<<30)
		if !slices.Equal(got, want) {
			t.Fatalf("prefix %q: paged %d keys, want %d", prefix, len(got), len(want))
		}
	}
}

// ScanPage serves the states LookupMode serves: a Frozen range only with
// ReadIndexed; expired entries are paged with their deadlines.
func TestScanPageStates(t *testing.T) {
	f := sourceOwning(t)
	mustStep(t, f, SetOp(hr, "c", []byte("3"), time.Millisecond))
	page, more, err := f.ScanPage(hr, ReadOwned, "", "", 10, 100)
	if err != nil || more || len(page) != 3 || page[2].Key != "c" || page[2].ExpireAt != now(time.Millisecond) {
		t.Fatalf("owned: %+v %v %v", page, more, err)
	}
	if _, _, err := f.ScanPage(3, ReadIndexed, "", "", 10, 100); err != ErrNotOwned {
		t.Fatalf("absent range: %v", err)
	}
	if _, _, err := f.ScanPage(100, ReadIndexed, "", "", 10, 100); err != ErrNotOwned {
		t.Fatalf("unknown range: %v", err)
	}
	mustStep(t, f, FreezeOp(hr, 1, dst))
	if _, _, err := f.ScanPage(hr, ReadOwned, "", "", 10, 100); err != ErrMoving {
		t.Fatalf("frozen, ReadOwned: %v", err)
	}
	if page, _, err := f.ScanPage(hr, ReadIndexed, "", "a", 10, 100); err != nil || len(page) != 2 || page[0].Key != "b" {
		t.Fatalf("frozen, ReadIndexed: %+v %v", page, err)
	}
}
