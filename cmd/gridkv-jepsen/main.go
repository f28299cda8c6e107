// Command gridkv-jepsen runs scenarios of GridKV's Jepsen-style suite and
// writes a report: one scenario with one seed, every scenario, or (-long)
// many seeds of each, longer and with mixed faults.
//
//	go run ./cmd/gridkv-jepsen -scenario leader-isolated -seed 7 -out report
//	go run ./cmd/gridkv-jepsen -scenario all
//	go run ./cmd/gridkv-jepsen -long -seeds 20
//
// The report (report.txt, and a history visualization per failed run, with
// the fault windows marked) goes to -out. The exit status is 1 if any run
// failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/tests"
)

func main() {
	scenario := flag.String("scenario", "all", "scenario name, or all")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()%1_000_000), "seed of the first run")
	seeds := flag.Int("seeds", 1, "runs per scenario, with seeds seed, seed+1, ...")
	long := flag.Bool("long", false, "long mode: each run 6x longer, mixed faults added, 10 seeds unless -seeds says")
	out := flag.String("out", "jepsen-report", "directory for the report")
	noWait := flag.Bool("quorum-no-wait", false, "negative control: Quorum reads answer without waiting for apply (must fail)")
	list := flag.Bool("list", false, "list the scenarios and exit")
	flag.Parse()

	all := tests.Scenarios()
	if *long {
		all = append(all, tests.MixedScenario())
		if *seeds == 1 {
			*seeds = 10
		}
	}
	if *list {
		for _, s := range all {
			fmt.Printf("%-16s %d nodes\n", s.Name, s.Nodes)
		}
		return
	}
	var chosen []tests.Scenario
	for _, s := range all {
		if *scenario == "all" || s.Name == *scenario {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		fmt.Fprintf(os.Stderr, "gridkv-jepsen: no scenario %q (-list shows them)\n", *scenario)
		os.Exit(2)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	scale := 1.0
	if *long {
		scale = 6
	}
	var report strings.Builder
	failed := 0
	for _, s := range chosen {
		for i := 0; i < *seeds; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			rep, err := tests.Run(ctx, s, tests.Options{Seed: *seed + uint64(i), Scale: scale, Tune: tune(*noWait),
				OutDir: *out, Progress: os.Stderr})
			cancel()
			if err != nil {
				fmt.Fprintf(&report, "ERROR %s seed=%d: %v\n", s.Name, *seed+uint64(i), err)
				failed++
				continue
			}
			fmt.Print(rep)
			report.WriteString(rep.String())
			if !rep.Passed() {
				failed++
			}
		}
	}
	path := filepath.Join(*out, "report.txt")
	if err := os.WriteFile(path, []byte(report.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	fmt.Printf("%d run(s) failed; report in %s\n", failed, path)
	if failed > 0 {
		os.Exit(1)
	}
}

// tune switches on the negative controls asked for.
func tune(quorumNoWait bool) func(int, *testhook.Hooks) {
	if !quorumNoWait {
		return nil
	}
	return func(_ int, h *testhook.Hooks) { h.QuorumSlack = 1 << 40 }
}
