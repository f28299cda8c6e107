// Package testutil holds helpers shared by the project's tests.
package testutil

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gridkv/gridkv/internal/freeport"
	"github.com/gridkv/gridkv/internal/netaddr"
)

// Eventually polls cond every 10ms until it holds, failing the test if it
// does not within the bound. It is the tests' only way to wait: no bare
// sleeps.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Within(within, cond) {
		t.Fatalf("timed out after %v waiting for %s", within, what)
	}
}

// Within polls cond every 10ms and reports whether it held within the
// bound: for a test that decides what a failure means by whether
// something happened (a leader stepping down after refusing, say).
func Within(within time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}

// VerifyNoLeaks runs the package's tests, then fails if any goroutine is
// left. The one exception is memberlist's: its Shutdown does not wait for
// a probe already in flight, which ends by itself within ProbeInterval.
func VerifyNoLeaks(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// FreeAddrs is freeport.Addrs: n distinct loopback addresses, free a
// moment ago, from outside the kernel's ephemeral range. Only a bind to
// that very port (another freeport pick, in this test binary or another)
// can take one before the test binds it; netaddr.InUse tells that failure.
func FreeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	addrs, err := freeport.Addrs(n)
	if err != nil {
		tb.Fatal(err)
	}
	return addrs
}

// addrAttempts bounds OpenTogether's tries: each picks new addresses.
const addrAttempts = 3

// OpenTogether opens n nodes at once, as a cluster formed with
// BootstrapExpect is: open(ctx, i, addrs) opens node i on addrs[i], from
// FreeAddrs, with the others as its seeds. The first failure cancels the
// others' ctx (a child of ctx). When one failed because something else
// took its address after FreeAddrs picked it (netaddr.InUse), the opened
// nodes are closed and all are opened again on new addresses, up to
// addrAttempts times; any other failure fails the test. The caller closes
// the nodes.
func OpenTogether[T interface{ Close() error }](tb testing.TB, ctx context.Context, n int, open func(ctx context.Context, i int, addrs []string) (T, error)) []T {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		addrs := FreeAddrs(tb, n)
		actx, cancel := context.WithCancel(ctx)
		nodes, errs := make([]T, n), make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if nodes[i], errs[i] = open(actx, i, addrs); errs[i] != nil {
					cancel()
				}
			})
		}
		wg.Wait()
		cancel()
		err := errors.Join(errs...)
		if err == nil {
			return nodes
		}
		inUse := false
		for i, e := range errs {
			if e == nil {
				nodes[i].Close()
			}
			inUse = inUse || netaddr.InUse(e)
		}
		if !inUse || attempt == addrAttempts {
			tb.Fatal(err)
		}
		tb.Logf("opening again on new addresses (attempt %d): %v", attempt+1, err)
	}
}

// Seeds is addrs without addrs[i]: node i's seeds in a cluster formed by
// OpenTogether.
func Seeds(addrs []string, i int) []string {
	var seeds []string
	for j, a := range addrs {
		if j != i {
			seeds = append(seeds, a)
		}
	}
	return seeds
}
