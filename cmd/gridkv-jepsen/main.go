// Command gridkv-jepsen runs scenarios of GridKV's Jepsen-style suite and
// writes a report: one scenario with one seed, every scenario, or (-long)
// many seeds of each, longer and with mixed faults.
//
//	go run ./cmd/gridkv-jepsen -scenario leader-isolated -seed 7 -out report
//	go run ./cmd/gridkv-jepsen -scenario all
//	go run ./cmd/gridkv-jepsen -long -seeds 20
//	go run ./cmd/gridkv-jepsen -lease-keep-transfer -seeds 5
//	go run ./cmd/gridkv-jepsen -scenario transfer-storm -watch
//	go run ./cmd/gridkv-jepsen -scenario range-moves-crash -scan
//	go run ./cmd/gridkv-jepsen -logcount 60s
//
// -logcount runs no scenario: it counts the log lines of 3 nodes through a
// sequence of faults (see logCount) and prints them per node.
//
// A negative control flag (-quorum-no-wait, -lease-no-margin,
// -lease-keep-transfer, -incr-get-set, -cad-get-delete, -watch-drop,
// -watch-swap, -scan-drop, -scan-swap) breaks one read path, operation,
// watcher or scanner on purpose; without -scenario it runs the control's
// own scenario. Such runs must be caught: the history Illegal, or, for the
// watch and scan controls, the watch or scan check failed.
//
// The report (report.txt, and a history visualization per failed run, with
// the fault windows marked) goes to -out. The exit status is 1 if any run
// failed or, with a negative control on, if any run did not catch it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	on := map[string]*bool{}
	for _, c := range tests.Controls() {
		must := "must come out Illegal"
		switch {
		case c.WatchCheck:
			must = "the watch check must fail"
		case c.ScanCheck:
			must = "the scan check must fail"
		}
		on[c.Name] = flag.Bool(c.Name, false, fmt.Sprintf("negative control: %s (%s); without -scenario, runs %s", c.Doc, must, c.Scenario))
	}
	watch := flag.Bool("watch", false, "run the watchers and the watch check in every scenario (some run them anyway)")
	scan := flag.Bool("scan", false, "run the scanners and the scan check in every scenario (some run them anyway)")
	list := flag.Bool("list", false, "list the scenarios and controls and exit")
	logcount := flag.Duration("logcount", 0, "if set, count 3 nodes' log lines over this long a run of faults (isolate, crash and restart, pause) and exit")
	flag.Parse()

	if *logcount > 0 {
		if err := logCount(*logcount, *seed); err != nil {
			fmt.Fprintln(os.Stderr, "gridkv-jepsen:", err)
			os.Exit(1)
		}
		return
	}

	var controls []tests.Control
	for _, c := range tests.Controls() {
		if *on[c.Name] {
			controls = append(controls, c)
		}
	}
	all := tests.Scenarios()
	if *long {
		all = append(all, tests.MixedScenario())
		if *seeds == 1 {
			*seeds = 10
		}
	}
	if *list {
		for _, s := range all {
			fmt.Printf("%-22s %d nodes\n", s.Name, s.Nodes)
		}
		for _, c := range tests.Controls() {
			fmt.Printf("-%-21s control on %s: %s\n", c.Name, c.Scenario, c.Doc)
		}
		return
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "scenario" })
	var chosen []tests.Scenario
	switch {
	case !explicit && len(controls) > 0:
		for _, c := range controls {
			if s, ok := tests.Lookup(c.Scenario); ok && !slices.ContainsFunc(chosen, func(o tests.Scenario) bool { return o.Name == s.Name }) {
				chosen = append(chosen, s)
			}
		}
	case *scenario == "all":
		chosen = all
	default:
		if s, ok := tests.Lookup(*scenario); ok {
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
			run := s
			run.Workload.Watch = run.Workload.Watch || *watch
			run.Workload.Scan = run.Workload.Scan || *scan
			var tune func(node int, h *testhook.Hooks)
			for _, c := range controls {
				run, tune = c.Apply(run, tune)
			}
			rep, err := tests.Run(ctx, run, tests.Options{Seed: *seed + uint64(i), Scale: scale, Tune: tune,
				OutDir: *out, Progress: os.Stderr})
			cancel()
			if err != nil {
				fmt.Fprintf(&report, "ERROR %s seed=%d: %v\n", s.Name, *seed+uint64(i), err)
				failed++
				continue
			}
			fmt.Print(rep)
			report.WriteString(rep.String())
			caught := false
			for _, c := range controls {
				caught = caught || c.Caught(rep)
			}
			if len(controls) > 0 && !caught || len(controls) == 0 && !rep.Passed() {
				failed++
			}
		}
	}
	path := filepath.Join(*out, "report.txt")
	if err := os.WriteFile(path, []byte(report.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if len(controls) > 0 {
		fmt.Printf("%d run(s) did not catch the negative control; report in %s\n", failed, path)
	} else {
		fmt.Printf("%d run(s) failed; report in %s\n", failed, path)
	}
	if failed > 0 {
		os.Exit(1)
	}
}
