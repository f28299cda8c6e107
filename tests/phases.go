package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/anishathalye/porcupine"
)

// The phases of a run that the in-process suite (Run) and the process
// mode (RunProcesses) share: the nemesis schedule, the writes and reads
// after the heal, and the checks of the history.

// schedule is when faults happen: a fault-free first second, then
// FaultFor on and HealFor off until Duration is up; Seed draws the
// nemesis's choices.
type schedule struct {
	Seed                        uint64
	Duration, FaultFor, HealFor time.Duration
}

// scheduled is a nemesis bound to its cluster.
type scheduled struct {
	start func(rng *rand.Rand) string // begins a fault and describes it; "" = none
	stop  func() string               // ends it; a summary to add to the description, or ""
}

// runSchedule drives f on sc's schedule from now until sc.Duration has
// passed or ctx ends, and returns the windows of the faults it made (on
// h's clock). progress gets begin once the first second is over, and a
// line per healed fault.
func runSchedule(ctx context.Context, h *History, sc schedule, f scheduled, progress func(string, ...any), begin string) []Window {
	rng := rand.New(rand.NewPCG(sc.Seed, 0xfa017))
	end := time.Now().Add(sc.Duration)
	wait := func(d time.Duration) { // or until ctx ends; the loop checks ctx
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	wait(time.Second)
	progress("%s", begin)
	var windows []Window
	for ctx.Err() == nil && time.Now().Add(sc.FaultFor).Before(end) {
		w := Window{Start: h.now()}
		w.Fault = f.start(rng)
		wait(sc.FaultFor)
		sum := f.stop()
		w.End = h.now()
		if sum != "" && w.Fault != "" {
			w.Fault += ": " + sum
		}
		if w.Fault != "" {
			windows = append(windows, w)
			progress("%s (healed)", w.Fault)
		}
		wait(sc.HealFor)
	}
	if rem := time.Until(end); rem > 0 {
		wait(rem)
	}
	return windows
}

// writeEveryKey writes every key once after the heal, through the nodes
// in turn, retrying until one write is acknowledged; each key must take
// one within RecoveryBound of the first try. The writes join the history.
// It returns the keys that took none, as problems.
func writeEveryKey(ns nodeSet, keys []string, w Workload, h *History) []string {
	healed := time.Now()
	var problems []string
	for k, key := range keys {
		for try := 0; ; try++ {
			in := Input{Kind: OpPut, Key: key, Value: fmt.Sprintf("heal-%d-%d", k, try), Node: try % ns.size()}
			s, up := ns.store(in.Node)
			if !up {
				continue // the harness never takes them all down
			}
			out, failed := execute(s, in, w, time.Second, h, w.Clients+ns.size())
			if !out.Unknown && !failed {
				break
			}
			if time.Since(healed) > RecoveryBound {
				problems = append(problems, fmt.Sprintf("%s took no write within %v of the heal: %s", in.Key, RecoveryBound, out.Err))
				break
			}
		}
	}
	return problems
}

// readEveryKey reads every key through every live node: every
// acknowledged write must be there, as the linearizability check of these
// reads proves. A read that fails is tried again until RecoveryBound has
// passed since the phase began, the bound writeEveryKey gives writes: a
// node just back from a partition may not have learned yet that a peer
// restarted as a new incarnation (about a second, measured), count its
// old one dead, and answer ErrUnavailable at once. It returns the values
// read (the last node's), the reads that kept failing, as problems, and
// what the retries were (rep.FinalRetries).
func readEveryKey(ns nodeSet, keys []string, w Workload, h *History) (map[string]string, []string, FinalRetries) {
	began := time.Now()
	final := map[string]string{}
	var problems []string
	var fr FinalRetries
	for ni := range ns.size() {
		s, up := ns.store(ni)
		if !up {
			continue
		}
		for _, key := range keys {
			in := Input{Kind: OpGet, Key: key, Mode: ReadDefault, Node: ni}
			start := time.Now()
			var out Output
			var failed bool
			tries := 0
			ctx, cancel := context.WithDeadline(context.Background(), began.Add(RecoveryBound))
			poll(ctx, 50*time.Millisecond, func() bool {
				tries++
				out, failed = execute(s, in, w, 2*time.Second, h, w.Clients+ni)
				if failed && fr.FirstErr == "" {
					fr.FirstErr = fmt.Sprintf("%s through %s: %s", key, ns.name(ni), out.Err)
				}
				return !failed
			})
			cancel()
			retried := tries > 1 || failed
			if retried {
				fr.Reads++
			}
			if failed {
				problems = append(problems, fmt.Sprintf("final read of %s through %s kept failing for %v: %s", in.Key, ns.name(ni), time.Since(start).Round(time.Millisecond), out.Err))
				continue
			}
			final[key] = out.Value
			if retried {
				fr.Longest = max(fr.Longest, time.Since(start))
			}
		}
	}
	return final, problems, fr
}

// FinalRetries says which final reads failed before one succeeded.
type FinalRetries struct {
	Reads    int           // reads whose first try failed
	Longest  time.Duration // of those that succeeded, the longest from the first try to success
	FirstErr string        // the first failure: key, node and error
}

// checkHistory fills rep from h: availability per window, the weak reads'
// check, the counts, and porcupine's verdict (with a visualization in
// o.OutDir when it is not Ok).
func checkHistory(h *History, rep *Report, name string, o Options, progress func(string, ...any)) {
	availability(h, rep.Windows)
	sortedWindows(rep.Windows)
	rep.Problems = append(rep.Problems, checkWeakReads(h)...)
	h.mu.Lock()
	rep.Ops, rep.OK, rep.Failed, rep.Unknown, rep.Checked = h.total, h.ok, h.failed, h.unknown, len(h.ops)
	rep.Errors, rep.Outcomes = h.errors, h.outcomes
	h.mu.Unlock()
	viz := ""
	if o.OutDir != "" {
		viz = filepath.Join(o.OutDir, fmt.Sprintf("%s-%d.html", name, o.Seed))
	}
	progress("checking %d operations", rep.Checked)
	timeout := o.CheckTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	res, took, err := checkLinearizable(h, rep.Windows, timeout, viz)
	rep.Result, rep.Check = res, took
	if res != porcupine.Ok && viz != "" && err == nil {
		rep.Viz = viz
	}
	if err != nil {
		rep.Problems = append(rep.Problems, "writing the visualization: "+err.Error())
	}
}
