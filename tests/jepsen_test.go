//go:build !race

// The scenario suite runs without the race detector: its value is in the
// histories it checks, and the detector's slowdown would turn every fault
// window into a different experiment. The other tests here run under it.

package tests

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testhook"
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
			out := os.Getenv("GRIDKV_JEPSEN_OUT") // keeps visualizations; default: a temporary directory
			if out == "" {
				out = t.TempDir()
			}
			rep, err := Run(ctx, s, Options{Seed: seed, OutDir: out, Progress: testWriter{t}})
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

// The negative control: Quorum reads that answer without waiting for the
// replica to apply the largest stored index seen must be caught, or the
// suite proves nothing about them.
func TestNegativeControlQuorumWithoutWaitIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("the scenario suite takes minutes")
	}
	s, _ := Lookup("leader-isolated")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	noWait := func(_ int, h *testhook.Hooks) { h.QuorumSlack = 1 << 40 }
	rep, err := Run(ctx, s, Options{Seed: suiteSeed(t), Tune: noWait, OutDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.String())
	if rep.Passed() {
		t.Fatal("quorum reads that do not wait for apply went unnoticed")
	}
	if rep.Result == "Unknown" {
		t.Fatal("the checker timed out instead of finding the violation")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
