//go:build !race

// The scenario suite runs without the race detector: its value is in the
// histories it checks, and the detector's slowdown would turn every fault
// window into a different experiment. The other tests here run under it.

package tests

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// suiteSeed is the seed CI uses; GRIDKV_JEPSEN_SEED overrides it.
func suiteSeed(t *testing.T) uint64 {
	if s := os.Getenv("GRIDKV_JEPSEN_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("GRIDKV_JEPSEN_SEED: %v", err)
		}
		return v
	}
	return 20261126
}

// TestScenarios runs every named scenario once with a fixed, logged seed.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("the scenario suite takes minutes")
	}
	seed := suiteSeed(t)
	for _, s := range Scenarios() {
		t.Run(s.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := Run(ctx, s, Options{Seed: seed, OutDir: outDir(t), Progress: testWriter{t}})
			if err != nil {
				t.Fatal(err)
			}
			t.Log("\n" + rep.String())
			if !rep.Passed() {
				t.Fatalf("scenario %s failed with seed %d (rerun: go run ./cmd/gridkv-jepsen -scenario %s -seed %d)",
					s.Name, seed, s.Name, seed)
			}
		})
	}
}

// The negative controls: each runs a scenario with one read path or
// operation broken on purpose, and the checker must find the history
// Illegal (not merely failed, nor a checker time-out), or the suite proves
// nothing about that path.

// Quorum reads that answer without waiting for the replica to apply the
// largest stored index seen.
func TestNegativeControlQuorumWithoutWaitIsCaught(t *testing.T) { runControl(t, "quorum-no-wait") }

// Leases as long as a whole HeartbeatTimeout on the leader's own clock,
// with node 0's clock at 1/1.5 of real time. Node 0's lease lasts 450ms of
// real time, while the others stop refusing votes after 300ms and elect a
// new leader from then on. The step-down does not save it: a leader that
// lost its quorum steps down after LeaderLeaseTimeout, but that timer runs
// on node 0's clock too, stretched to 450ms, so node 0 still leads, and
// serves reads, after the others have elected a leader and taken writes.
func TestNegativeControlLeaseWithoutDriftMarginIsCaught(t *testing.T) {
	runControl(t, "lease-no-margin")
}

// A leader that keeps its lease after it sends TimeoutNow: the target wins
// at once (voters grant a transfer's votes despite their guard), while the
// old leader, hearing nothing, serves reads until its lease runs out.
func TestNegativeControlLeaseKeptThroughTransferIsCaught(t *testing.T) {
	runControl(t, "lease-keep-transfer")
}

// Incr done as a Get and then a Set of the sum: two Incrs at once read the
// same counter, and one increment is lost.
func TestNegativeControlIncrAsGetSetIsCaught(t *testing.T) { runControl(t, "incr-get-set") }

// CompareAndDelete done as a Get and then a Delete: a write between the
// two is deleted with the value the caller matched.
func TestNegativeControlCompareAndDeleteAsGetDeleteIsCaught(t *testing.T) {
	runControl(t, "cad-get-delete")
}

// A watcher that loses one event: the other watchers, the acknowledged
// writes or the final values show the gap.
func TestNegativeControlWatchDropIsCaught(t *testing.T) { runControl(t, "watch-drop") }

// A watcher that gets two events of one key in the wrong order, each
// under the other's version: the versions still grow, but the other
// watchers disagree, and real time orders the writes the other way.
func TestNegativeControlWatchSwapIsCaught(t *testing.T) { runControl(t, "watch-swap") }

// A scan that loses one key every scan must return: the scan check's
// completeness rule.
func TestNegativeControlScanDropIsCaught(t *testing.T) { runControl(t, "scan-drop") }

// A scan that returns two keys out of order.
func TestNegativeControlScanSwapIsCaught(t *testing.T) { runControl(t, "scan-swap") }

func runControl(t *testing.T, name string) {
	if testing.Short() {
		t.Skip("the scenario suite takes minutes")
	}
	ctl, ok := LookupControl(name)
	if !ok {
		t.Fatalf("no control %q", name)
	}
	s, ok := Lookup(ctl.Scenario)
	if !ok {
		t.Fatalf("control %s: no scenario %q", name, ctl.Scenario)
	}
	seed := suiteSeed(t)
	out := outDir(t)
	s, tune := ctl.Apply(s, nil)
	catchControl(t, ctl, seed, func(ctx context.Context, seed uint64) (*Report, error) {
		return Run(ctx, s, Options{Seed: seed, Tune: tune, OutDir: out, Progress: testWriter{t}})
	}, fmt.Sprintf("go run ./cmd/gridkv-jepsen -%s -seed %d", name, seed))
}

// outDir is where failed runs' visualizations go: GRIDKV_JEPSEN_OUT, or
// the test's temporary directory.
func outDir(t *testing.T) string {
	if out := os.Getenv("GRIDKV_JEPSEN_OUT"); out != "" {
		return out
	}
	return t.TempDir()
}

// controlAttempts is how many runs, each with the next seed, a negative
// control has to be caught once.
const controlAttempts = 3

// catchControl runs ctl's scenario (run) with seed, then the next seeds,
// until a run catches it, and fails t if none of controlAttempts does. A
// control's bug shows only when a race goes its way (the lease controls
// most of all: an election inside a few hundred ms); each miss is logged.
func catchControl(t *testing.T, ctl Control, seed uint64, run func(ctx context.Context, seed uint64) (*Report, error), rerun string) {
	t.Helper()
	var missed []string
	for attempt := range uint64(controlAttempts) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		rep, err := run(ctx, seed+attempt)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Log("\n" + rep.String())
		if ctl.Caught(rep) {
			return
		}
		what := fmt.Sprintf("came out %s, not Illegal", rep.Result)
		switch {
		case ctl.WatchCheck:
			what = "passed the watch check"
		case ctl.ScanCheck:
			what = "passed the scan check"
		}
		missed = append(missed, fmt.Sprintf("seed %d %s", seed+attempt, what))
		t.Logf("negative control %s not caught with seed %d (%s); %d runs left", ctl.Name, seed+attempt, what, controlAttempts-1-int(attempt))
	}
	t.Fatalf("negative control %s (%s) not caught in %d runs: %s (rerun: %s)",
		ctl.Name, ctl.Doc, controlAttempts, strings.Join(missed, "; "), rerun)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
