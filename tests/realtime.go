package tests

import (
	"cmp"
	"sort"
)

// realTimeInversions finds the items ranked below an item that returned
// before they were invoked (real time says the earlier one came first): for
// each such later item it calls report with the highest-ranked earlier
// one. call, ret and rank read an item's invocation time, return time and
// rank. items is sorted in place by return time. O(n log n).
func realTimeInversions[T any, R cmp.Ordered](items []T, call, ret func(T) int64, rank func(T) R, report func(earlier, later T)) {
	sort.Slice(items, func(i, j int) bool { return ret(items[i]) < ret(items[j]) })
	best := make([]int, len(items)) // index of the highest rank among items[:i+1]
	for i := range items {
		best[i] = i
		if i > 0 && rank(items[best[i-1]]) > rank(items[i]) {
			best[i] = best[i-1]
		}
	}
	for _, later := range items {
		j := sort.Search(len(items), func(i int) bool { return ret(items[i]) >= call(later) })
		if j == 0 {
			continue
		}
		if earlier := items[best[j-1]]; rank(earlier) > rank(later) {
			report(earlier, later)
		}
	}
}
