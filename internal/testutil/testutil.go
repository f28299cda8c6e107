// Package testutil holds helpers shared by the project's tests.
package testutil

import (
	"testing"
	"time"

	"go.uber.org/goleak"
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
