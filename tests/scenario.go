package tests

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testhook"
)

// Scenario is one named test: a cluster, a workload and a nemesis.
type Scenario struct {
	Name     string
	Nodes    int
	Workload Workload
	// Nemesis returns a fresh nemesis for one run.
	Nemesis func() Nemesis
	// Duration of the workload; faults alternate FaultFor on, HealFor off,
	// after a fault-free first second.
	Duration, FaultFor, HealFor time.Duration
	// Tune, if set, adjusts node i's hooks before it opens, from the run's
	// seed: clocks of their own. Options.Tune applies after it.
	Tune func(seed uint64, node int, h *testhook.Hooks)
	// HandoffTimeout, if set, is the nodes' range handoff timeout
	// (testhook.Hooks.HandoffTimeout); the ownership check (I6) waits up
	// to twice it after the heal. Zero: the nodes' Timing.HandoffTimeout.
	HandoffTimeout time.Duration
}

// Scenarios are the named scenarios CI runs. Later capabilities add
// theirs here.
func Scenarios() []Scenario {
	w := Workload{Clients: 8, Keys: 5, Replicas: 3, Timeout: time.Second, Rate: 200}
	hot := Workload{Clients: 10, Keys: 1, Replicas: 3, Timeout: time.Second, Rate: 100}
	majority := w
	majority.Modes = []ReadMode{ReadMajority}
	defaultOnly := w
	defaultOnly.Modes = []ReadMode{ReadDefault}
	// Incr and CompareAndDelete beside the other writes, under a partition
	// and a crash, with a watcher on every node; the move scenarios watch
	// too.
	dataModel := w
	dataModel.DataModel, dataModel.Watch = true, true
	watched := w
	watched.Watch = true
	// Scanners under a partition and under range moves, where a scan is
	// most at risk (a range read at a group it has left).
	scanned := dataModel
	scanned.Scan = true
	watchedScanned := watched
	watchedScanned.Scan = true
	s := func(name string, nodes int, w Workload, n func() Nemesis) Scenario {
		return Scenario{Name: name, Nodes: nodes, Workload: w, Nemesis: n,
			Duration: 8 * time.Second, FaultFor: 2 * time.Second, HealFor: time.Second}
	}
	lease := leaseWorkload()
	pull := 500 * time.Millisecond
	drift := s("clock-drift", 3, lease, func() Nemesis { return &ClockJumps{Pull: pull} })
	drift.FaultFor, drift.HealFor = 1500*time.Millisecond, time.Second
	drift.Tune = driftingClocks
	pause := s("lease-pause", 3, lease, func() Nemesis { return &StallLeader{For: 700 * time.Millisecond, Pull: pull} })
	pause.FaultFor, pause.HealFor = 1500*time.Millisecond, time.Second
	pause.Tune = func(_ uint64, _ int, h *testhook.Hooks) { h.Lease.Clock = testhook.NewClock(1) }
	quorum := s("quorum-partitions", 3, majority, func() Nemesis {
		return &Mixed{Of: []Nemesis{RandomHalves{}, IsolateLeader{}, Pause{For: 1500 * time.Millisecond}}, InTurn: true}
	})
	quorum.FaultFor, quorum.HealFor = 1500*time.Millisecond, time.Second
	storm := func() *RangeMoveStorm {
		return &RangeMoveStorm{Every: 100 * time.Millisecond, Keys: w.Keys, MoveTimeout: 3 * time.Second}
	}
	// With the scanners on, half the keyed moves move a steady key's range.
	scanStorm := func() *RangeMoveStorm {
		st := storm()
		st.Also = steadyKeys(w.keys(nil))
		return st
	}
	moves := func(name string, w Workload, n func() Nemesis) Scenario {
		sc := s(name, 3, w, n)
		sc.HandoffTimeout = 2 * time.Second
		return sc
	}
	return []Scenario{
		s("baseline", 3, w, func() Nemesis { return NoFaults{} }),
		s("leader-isolated", 3, w, func() Nemesis { return IsolateLeader{} }),
		s("random-halves", 5, scanned, func() Nemesis { return RandomHalves{} }),
		s("majorities-ring", 5, w, func() Nemesis { return MajoritiesRing{} }),
		s("bridge", 5, w, func() Nemesis { return Bridge{} }),
		s("lossy-reorder", 3, w, func() Nemesis {
			return BadLinks{Rule: faultnet.Rule{Drop: 0.1, Duplicate: 0.05, Delay: time.Millisecond, Jitter: 10 * time.Millisecond}}
		}),
		s("crash-minority", 3, dataModel, func() Nemesis { return &CrashMinority{Max: 1} }),
		s("pause", 3, w, func() Nemesis { return Pause{For: 1500 * time.Millisecond} }),
		s("restart-same-address", 5, w, func() Nemesis { return RestartSameAddress{ReadyWait: 10 * time.Second} }),
		s("transfer-storm", 3, w, func() Nemesis { return &TransferStorm{Every: 50 * time.Millisecond, Groups: 16} }),
		s("hot-key", 3, hot, func() Nemesis { return IsolateLeader{} }),
		// Every read path, each under the faults that threaten it.
		drift,
		pause,
		s("lease-leader-isolated", 3, lease, func() Nemesis { return IsolateLeader{Pull: pull} }),
		s("lease-transfer-storm", 3, lease, func() Nemesis { return &TransferStorm{Every: 50 * time.Millisecond, Groups: 16} }),
		s("timeoutnow-late", 3, defaultOnly, func() Nemesis {
			return &Both{&TransferStorm{Every: 50 * time.Millisecond, Groups: 16},
				BadLinks{Rule: faultnet.Rule{Duplicate: 0.2, Delay: 5 * time.Millisecond, Jitter: 60 * time.Millisecond}}}
		}),
		s("transfer-isolate", 3, lease, func() Nemesis { return TransferIsolate{Within: time.Second} }),
		quorum,
		// Ranges moving between replica groups under the workload, alone
		// and with partitions, pauses and a crash.
		moves("range-move-storm", watchedScanned, func() Nemesis { return scanStorm() }),
		moves("range-moves-partitions", watchedScanned, func() Nemesis {
			return &Both{scanStorm(), &Mixed{Of: []Nemesis{RandomHalves{}, IsolateLeader{}, Pause{For: 1500 * time.Millisecond}}, InTurn: true}}
		}),
		moves("range-moves-crash", watched, func() Nemesis { return &Both{storm(), &CrashMinority{Max: 1}} }),
	}
}

// leaseWorkload puts leases to the test: every read in the default mode
// (under the lease, or its ReadIndex fallback), mostly reads, and short
// time-outs. A lease that outlives its leadership shows only as stale
// reads through the node cut off, whose clients are stuck on each write
// until it times out: they soon read again.
func leaseWorkload() Workload {
	return Workload{Clients: 8, Keys: 8, Replicas: 3, Timeout: 100 * time.Millisecond, Rate: 200, Reads: 80,
		Modes: []ReadMode{ReadDefault}, TrustErrors: true}
}

// driftingClocks gives each node a clock whose rate is within the lease's
// drift bound (raftgroup's default DriftBound, 5%: rates in [0.975,
// 1.025], so no two differ by more than 5%), drawn from the seed: one node
// at the slow end, one at the fast end, the others anywhere between.
func driftingClocks(seed uint64, node int, h *testhook.Hooks) {
	ends := rand.New(rand.NewPCG(seed, 0xc10c)).Perm(3) // of the scenario's 3 nodes
	slow, fast := ends[0], ends[1]
	rate := 0.975 + 0.05*rand.New(rand.NewPCG(seed, uint64(node))).Float64()
	switch node {
	case slow:
		rate = 0.975
	case fast:
		rate = 1.025
	}
	h.ClockRate = rate
	h.Lease.Clock = testhook.NewClock(rate)
}

// localHeartbeat is the HeartbeatTimeout of gridkv's LocalTiming.
var localHeartbeat = gridkv.LocalTiming().HeartbeatTimeout

// controlScenarios are scenarios only negative controls run: beyond what
// the system promises, so not in Scenarios().
func controlScenarios() []Scenario {
	// leaseWorkload on keys whose ranges node 0 leads, node 0's clients
	// only reading, and shorter time-outs still: while node 0 is cut off,
	// its clients read under its lease, and the others' soon give up on
	// every range that has no new leader yet. (Writes of node 0's clients
	// would wait out their time-out there, and leave a write of unknown
	// outcome each: many of those make the check of an Illegal history
	// slow.)
	w := leaseWorkload()
	w.KeyNames, w.Timeout, w.ReadsByNode = KeysPlannedFor(0), 50*time.Millisecond, []int{100, 20, 20}
	return []Scenario{{
		// Node 0's clock runs at 1/1.5 (its timers 1.5x longer), ten times
		// the drift bound. Over and over, it is cut off in two steps (see
		// IsolateNode); the reconciler hands its ranges back after each.
		Name: "slow-leader-isolated", Nodes: 3, Workload: w,
		Nemesis: func() Nemesis {
			return &IsolateNode{Index: 0, Lead: 800 * time.Millisecond, For: 500 * time.Millisecond, Rest: 700 * time.Millisecond}
		},
		Duration: 8 * time.Second, FaultFor: 6500 * time.Millisecond, HealFor: 500 * time.Millisecond,
		Tune: func(_ uint64, node int, h *testhook.Hooks) {
			if node == 0 {
				h.ClockRate = 1 / 1.5
			}
		},
	}}
}

// Control is a negative control: a scenario run with one read path or
// operation broken on purpose. The checker must find its history Illegal,
// or the suite proves nothing about that path.
type Control struct {
	Name     string
	Scenario string // in Scenarios() or the control-only ones; see Lookup
	Doc      string
	// Break, if set, switches the fault on in node i's hooks.
	Break func(node int, h *testhook.Hooks)
	// BreakWorkload, if set, switches it on in the scenario's clients
	// instead, for faults gridkv has no seam for (see Controls).
	BreakWorkload func(w *Workload)
	// WatchCheck: the watch check must find problems (Report.Watch), where
	// the others need the history Illegal; ScanCheck: the scan check must
	// (Report.Scan).
	WatchCheck, ScanCheck bool
}

// Caught reports whether the run found what c broke: the history Illegal,
// or, for a WatchCheck or ScanCheck control, problems in what the watchers
// or the scanners saw.
func (c Control) Caught(r *Report) bool {
	switch {
	case c.WatchCheck:
		return r.Watch != nil && len(r.Watch.Problems) > 0
	case c.ScanCheck:
		return r.Scan != nil && len(r.Scan.Problems) > 0
	}
	return r.Result == porcupine.Illegal
}

// Apply returns s with c's fault switched on in its workload, and
// Options.Tune switching it on in the nodes' hooks (after tune, if set).
func (c Control) Apply(s Scenario, tune func(node int, h *testhook.Hooks)) (Scenario, func(node int, h *testhook.Hooks)) {
	if c.BreakWorkload != nil {
		c.BreakWorkload(&s.Workload)
	}
	if c.Break == nil {
		return s, tune
	}
	return s, func(node int, h *testhook.Hooks) {
		if tune != nil {
			tune(node, h)
		}
		c.Break(node, h)
	}
}

// Controls are the negative controls CI runs (jepsen_test.go).
func Controls() []Control {
	return []Control{
		{Name: "quorum-no-wait", Scenario: "leader-isolated",
			Doc:   "Quorum reads answer without waiting for the replica to apply the largest stored index seen",
			Break: func(_ int, h *testhook.Hooks) { h.QuorumSlack = 1 << 40 }},
		{Name: "lease-no-margin", Scenario: "slow-leader-isolated",
			Doc:   "leases last a whole HeartbeatTimeout on the leader's own clock (no drift, no margin), and node 0's clock runs at 1/1.5",
			Break: func(_ int, h *testhook.Hooks) { h.Lease.Duration = localHeartbeat }},
		{Name: "lease-keep-transfer", Scenario: "transfer-isolate",
			Doc:   "a leader keeps its lease after it starts a leadership transfer",
			Break: func(_ int, h *testhook.Hooks) { h.Lease.UnsafeKeepThroughTransfer = true }},
		// The data model's atomic writes done as a read and then a write,
		// by the suite's clients through the public API: gridkv has no
		// seam that breaks its Incr or CompareAndDelete, and adding one
		// would put another test-only branch on the write path. What these
		// show is that the workload's concurrency and the model catch the
		// bug an Incr or CompareAndDelete applied as a read of the state
		// and a later write would have.
		{Name: "incr-get-set", Scenario: "crash-minority",
			Doc:           "Incr done as a Get, then a Set of the sum (concurrent Incrs lose updates)",
			BreakWorkload: func(w *Workload) { w.DataModel, w.incrGetSet = true, true }},
		{Name: "cad-get-delete", Scenario: "crash-minority",
			Doc:           "CompareAndDelete done as a Get, then a Delete if the value matched (a write between the two is deleted)",
			BreakWorkload: func(w *Workload) { w.DataModel, w.cadGetDelete = true, true }},
		// The watchers' records broken in the suite (watchFault), not in
		// gridkv, for the same reason: what they show is that the watch
		// check catches a watch that loses an event, or hands two on in
		// the wrong order under the right versions.
		{Name: "watch-drop", Scenario: "crash-minority", WatchCheck: true,
			Doc:           "a watcher loses one event",
			BreakWorkload: func(w *Workload) { w.Watch, w.watchFault = true, watchDropOne }},
		{Name: "watch-swap", Scenario: "random-halves", WatchCheck: true,
			Doc:           "a watcher gets two events of one key in the wrong order, each under the other's version",
			BreakWorkload: func(w *Workload) { w.Watch, w.watchFault = true, watchSwapOne }},
		// The scanners' records broken in the suite (scanFault), likewise.
		{Name: "scan-drop", Scenario: "range-move-storm", ScanCheck: true,
			Doc:           "a scan loses one key (a steady key, which every scan must return)",
			BreakWorkload: func(w *Workload) { w.Scan, w.scanFault = true, scanDropOne }},
		{Name: "scan-swap", Scenario: "random-halves", ScanCheck: true,
			Doc:           "a scan returns two keys out of order",
			BreakWorkload: func(w *Workload) { w.Scan, w.scanFault = true, scanSwapOne }},
	}
}

// LookupControl returns the negative control with this name.
func LookupControl(name string) (Control, bool) {
	for _, c := range Controls() {
		if c.Name == name {
			return c, true
		}
	}
	return Control{}, false
}

// MixedScenario is the long mode's extra: 5 nodes, every kind of fault,
// one at a time in random order.
func MixedScenario() Scenario {
	return Scenario{Name: "mixed", Nodes: 5, Duration: 8 * time.Second, FaultFor: 2 * time.Second, HealFor: time.Second,
		Workload: Workload{Clients: 8, Keys: 5, Replicas: 3, Timeout: time.Second, Rate: 200},
		Nemesis: func() Nemesis {
			return &Mixed{Of: []Nemesis{IsolateLeader{}, RandomHalves{}, MajoritiesRing{}, Bridge{},
				BadLinks{Rule: faultnet.Rule{Drop: 0.1, Duplicate: 0.05, Delay: time.Millisecond, Jitter: 10 * time.Millisecond}},
				&CrashMinority{Max: 1}, Pause{For: 1500 * time.Millisecond}, RestartSameAddress{ReadyWait: 10 * time.Second}, &TransferStorm{Every: 50 * time.Millisecond, Groups: 16}}}
		}}
}

// Lookup returns the scenario with this name, among Scenarios() and those
// only negative controls run.
func Lookup(name string) (Scenario, bool) {
	for _, s := range append(Scenarios(), controlScenarios()...) {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// Options of one run.
type Options struct {
	Seed uint64
	// Scale multiplies the workload's duration (long mode); 0 = 1.
	Scale float64
	// Base configures the nodes (see ClusterOptions.Base).
	Base *gridkv.Config
	// Tune adjusts each node's hooks (see ClusterOptions.Tune): negative
	// controls, clocks.
	Tune func(node int, h *testhook.Hooks)
	// OutDir receives history.html when the check fails; "" = nowhere.
	OutDir string
	// CheckTimeout bounds porcupine; a time-out is a failure. Default 60s.
	CheckTimeout time.Duration
	// Progress, if set, receives a line per phase.
	Progress io.Writer
}

// Report is one run's outcome.
type Report struct {
	Scenario string
	Seed     uint64
	Nodes    int
	Ops      int // operations the clients invoked
	OK       int
	Failed   int // definite failures: reads that erred, writes refused
	Unknown  int // writes whose outcome is unknown
	Checked  int // operations in the linearizability check, final reads included
	Result   porcupine.CheckResult
	Check    time.Duration
	Recovery time.Duration // from the final heal until every key took a write
	Converge time.Duration // then until every range's voters held the same state
	Windows  []Window
	// Lease reads over the workload, summed over the nodes: served under
	// the lease (hits), and not (misses: no lease, or it lapsed before the
	// confirmation; those went the ReadIndex way).
	LeaseHits, LeaseMisses uint64
	FinalRetries           FinalRetries   // final reads that had to be tried again
	Problems               []string       // anything wrong besides the linearizability result
	Errors                 map[string]int // errors the clients saw, by kind
	Outcomes               map[string]int // Incrs and CompareAndDeletes by what they did (see outcome)
	Viz                    string         // path of the visualization, when written
	// Watch is the watch check's outcome; nil when the workload runs no
	// watchers (Workload.Watch). Scan, the scan check's; nil without
	// scanners (Workload.Scan).
	Watch   *WatchSummary
	Scan    *ScanSummary
	Elapsed time.Duration
}

// Passed reports whether the run found nothing wrong.
func (r *Report) Passed() bool {
	return r.Result == porcupine.Ok && len(r.Problems) == 0 && (r.Watch == nil || len(r.Watch.Problems) == 0) &&
		(r.Scan == nil || len(r.Scan.Problems) == 0)
}

// String is a summary fit for a log, with the availability per window.
func (r *Report) String() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.Passed() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "%s %s seed=%d nodes=%d ops=%d ok=%d failed=%d unknown=%d checked=%d check=%v result=%s recovery=%v converge=%v elapsed=%v\n",
		verdict, r.Scenario, r.Seed, r.Nodes, r.Ops, r.OK, r.Failed, r.Unknown, r.Checked,
		r.Check.Round(time.Millisecond), r.Result, r.Recovery.Round(time.Millisecond), r.Converge.Round(time.Millisecond),
		r.Elapsed.Round(100*time.Millisecond))
	if n := r.LeaseHits + r.LeaseMisses; n > 0 {
		fmt.Fprintf(&b, "  lease reads: %d hits, %d misses (hit rate %.1f%%)\n", r.LeaseHits, r.LeaseMisses, 100*float64(r.LeaseHits)/float64(n))
	}
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	all := map[string]Avail{}
	for _, w := range r.Windows {
		fmt.Fprintf(tw, "  %.1fs-%.1fs\t%s\tavailability %d/%d\t%s\n", float64(w.Start)/1e9, float64(w.End)/1e9, w.Fault, w.OK, w.Total, byOp(w.ByOp))
		for k, a := range w.ByOp {
			all[k] = Avail{all[k].OK + a.OK, all[k].Total + a.Total}
		}
	}
	tw.Flush()
	if len(r.Windows) > 0 {
		fmt.Fprintf(&b, "  during faults: %s\n", byOp(all))
	}
	if len(r.Outcomes) > 0 {
		var parts []string
		for _, k := range []string{"incr counted", "incr refused", "incr unknown", "compare-and-delete deleted", "compare-and-delete kept", "compare-and-delete unknown"} {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Outcomes[k]))
		}
		fmt.Fprintf(&b, "  %s\n", strings.Join(parts, ", "))
	}
	kinds := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return r.Errors[kinds[i]] > r.Errors[kinds[j]] })
	for i, k := range kinds {
		if i == 5 {
			fmt.Fprintf(&b, "  ... %d more kinds of error\n", len(kinds)-5)
			break
		}
		fmt.Fprintf(&b, "  %6d x %s\n", r.Errors[k], k)
	}
	if fr := r.FinalRetries; fr.Reads > 0 {
		fmt.Fprintf(&b, "  final reads tried again: %d, the longest succeeded after %v; first failure: %s\n",
			fr.Reads, fr.Longest.Round(time.Millisecond), fr.FirstErr)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "  problem: %s\n", p)
	}
	if r.Watch != nil {
		fmt.Fprintf(&b, "  %s\n", r.Watch)
		for _, p := range r.Watch.Problems {
			fmt.Fprintf(&b, "  problem: %s\n", p)
		}
	}
	if r.Scan != nil {
		fmt.Fprintf(&b, "  %s\n", r.Scan)
		for _, p := range r.Scan.Problems {
			fmt.Fprintf(&b, "  problem: %s\n", p)
		}
	}
	if r.Viz != "" {
		fmt.Fprintf(&b, "  visualization: %s\n", r.Viz)
	}
	return b.String()
}

// byOp formats availability per read mode and for writes.
func byOp(m map[string]Avail) string {
	var parts []string
	for _, k := range opClasses {
		if a, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %d/%d", k, a.OK, a.Total))
		}
	}
	return strings.Join(parts, ", ")
}

// RecoveryBound is how soon after the final heal every key must take a
// write, and ConvergeBound how soon after that every range's voters must
// hold the same state (the reconciler may be re-adding replicas that a
// partition had it remove).
const (
	RecoveryBound = 30 * time.Second
	ConvergeBound = 60 * time.Second
)

// WatchDrainBound is how soon after the final reads every watcher must
// have seen each key's final value.
const WatchDrainBound = 10 * time.Second

// begin sets o's defaults for a run of scenario name that began at began,
// and returns the run's progress printer (to o.Progress, if set).
func (o *Options) begin(name string, began time.Time) func(format string, args ...any) {
	if o.Scale <= 0 {
		o.Scale = 1
	}
	return func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "%s seed=%d +%.1fs: %s\n", name, o.Seed, time.Since(began).Seconds(), fmt.Sprintf(format, args...))
		}
	}
}

// Run runs one scenario and checks its history.
func Run(ctx context.Context, s Scenario, o Options) (*Report, error) {
	began := time.Now()
	progress := o.begin(s.Name, began)
	rep := &Report{Scenario: s.Name, Seed: o.Seed, Nodes: s.Nodes}
	progress("starting %d nodes", s.Nodes)
	tune := o.Tune
	if s.Tune != nil || s.HandoffTimeout > 0 {
		tune = func(node int, h *testhook.Hooks) {
			h.HandoffTimeout = s.HandoffTimeout
			if s.Tune != nil {
				s.Tune(o.Seed, node, h)
			}
			if o.Tune != nil {
				o.Tune(node, h)
			}
		}
	}
	c, err := StartCluster(ctx, ClusterOptions{Nodes: s.Nodes, Seed: o.Seed, Base: o.Base, Tune: tune})
	if err != nil {
		return nil, err
	}
	defer c.Close()

	h := newHistory()
	workloadKeys := s.Workload.keys(c)
	keys := workloadKeys // the workload's, and the steady keys: healed, read at the end, watched
	var steady []string
	if s.Workload.Scan {
		steady = steadyKeys(workloadKeys)
		keys = append(slices.Clone(workloadKeys), steady...)
	}
	var ws *watchers
	if s.Workload.Watch {
		// Before the clients: the watchers see every key's whole history.
		if ws, err = startWatchers(ctx, c, h, keys, s.Workload.watchFault); err != nil {
			return nil, err
		}
		defer ws.stop() // on the early returns; a second stop is harmless
		progress("%d watchers on prefix %q", len(ws.watching()), ws.prefix)
	}
	stop := make(chan struct{})
	var sc *scanners
	if s.Workload.Scan {
		// The steady keys written, before the clients.
		if sc, err = startScanners(ctx, c, h, s.Workload, workloadKeys, steady, o.Seed, stop); err != nil {
			return nil, err
		}
		progress("%d scanners on prefix %q, %d steady keys", scannerCount, sc.prefix, len(steady))
	}
	clientsDone := make(chan struct{})
	go func() { defer close(clientsDone); runClients(c, workloadKeys, s.Workload, o.Seed, h, stop) }()

	// The nemesis: a quiet first second, then faults on and off.
	nem := s.Nemesis()
	fault := scheduled{
		start: func(rng *rand.Rand) string { return nem.Start(c, rng) },
		stop: func() string {
			nem.Stop(c)
			if sm, ok := nem.(interface{ Summary() string }); ok {
				return sm.Summary()
			}
			return ""
		},
	}
	rep.Windows = runSchedule(ctx, h, schedule{Seed: o.Seed, Duration: time.Duration(float64(s.Duration) * o.Scale), FaultFor: s.FaultFor, HealFor: s.HealFor},
		fault, progress, fmt.Sprintf("workload of %d clients on %d keys, nemesis %s", s.Workload.Clients, s.Workload.Keys, nem.Name()))
	close(stop)
	<-clientsDone
	var scans []*scanRecord
	scanFault := ""
	if sc != nil {
		scans, scanFault = sc.wait()
	}
	rep.LeaseHits, rep.LeaseMisses = c.LeaseStats()
	c.Heal()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	healed := time.Now()
	progress("healed; writing every key")
	rep.Problems = append(rep.Problems, writeEveryKey(c, keys, s.Workload, h)...)
	rep.Recovery = time.Since(healed)
	final, problems, retries := readEveryKey(c, keys, s.Workload, h)
	rep.Problems, rep.FinalRetries = append(rep.Problems, problems...), retries

	if ws != nil {
		progress("waiting for the watchers to see the final values")
		drained := ws.drain(final, WatchDrainBound)
		streams, fault := ws.stop()
		h.mu.Lock()
		in := watchInput{Streams: streams, Ops: h.ops, Refused: h.failedOps, Keys: keys, Final: final}
		h.mu.Unlock()
		began := time.Now()
		sum := checkWatches(in)
		sum.Drain, sum.Check, sum.Fault = drained, time.Since(began), fault
		rep.Watch = &sum
	}
	if sc != nil {
		h.mu.Lock()
		in := scanInput{Scans: scans, Ops: h.ops, Refused: h.failedOps, Prefix: sc.prefix, Steady: steady}
		h.mu.Unlock()
		sum := checkScans(in)
		sum.Fault = scanFault
		rep.Scan = &sum
	}

	progress("waiting for replicas to converge")
	convergeStart := time.Now()
	if err := c.WaitConverged(ConvergeBound); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	rep.Converge = time.Since(convergeStart)
	// I6: after the heal plus twice the handoff timeout, no range is in a
	// handoff and each is owned by exactly one group.
	handoff := s.HandoffTimeout
	if handoff <= 0 {
		handoff = gridkv.LocalTiming().HandoffTimeout // the harness's default Base
		if o.Base != nil {
			// A zero field takes LANTiming's value.
			if handoff = o.Base.Timing.HandoffTimeout; handoff == 0 {
				handoff = gridkv.LANTiming().HandoffTimeout
			}
		}
	}
	if err := c.WaitOwnershipSettled(2*handoff - time.Since(healed) + 5*time.Second); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}

	checkHistory(h, rep, s.Name, o, progress)
	rep.Elapsed = time.Since(began)
	return rep, nil
}
