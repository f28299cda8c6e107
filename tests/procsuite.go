package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/gridkv/gridkv/internal/testhook"
)

// The process mode: the suite's workload, schedule and checks, with every
// node an OS process (ProcCluster) and faults made to processes.

// ProcNemesis injects one kind of fault into a ProcCluster, as Nemesis
// does into a Cluster: Start begins a fault and describes it ("" = none
// made), Stop ends it and may return a summary. The runner alternates
// them from one goroutine.
type ProcNemesis interface {
	Name() string
	Start(pc *ProcCluster, rng *rand.Rand) string
	Stop(pc *ProcCluster) string
}

// procCallTimeout bounds a nemesis's calls to the control interface.
const procCallTimeout = 10 * time.Second

func upNodes(pc *ProcCluster) []*ProcNode {
	var out []*ProcNode
	for _, n := range pc.Nodes {
		if n.Up() {
			out = append(out, n)
		}
	}
	return out
}

// KillRestart kills one node with SIGKILL (its in-memory state is gone)
// and, at Stop, starts it again on the same addresses under the same
// NodeID: a new incarnation, which rejoins empty. It kills only once the
// cluster is ready (every range with its replicas, within
// ProcReadyTimeout): with in-memory logs, a second node lost before the
// first one's replicas are replaced loses the ranges both held, which is
// documented data loss, not a bug to find.
type KillRestart struct{ killed *ProcNode }

func (*KillRestart) Name() string { return "kill-restart" }

func (m *KillRestart) Start(pc *ProcCluster, rng *rand.Rand) string {
	if err := pc.WaitReady(context.Background(), ProcReadyTimeout); err != nil {
		pc.problem("before a kill: " + err.Error())
		return ""
	}
	up := upNodes(pc)
	m.killed = up[rng.IntN(len(up))]
	pc.Kill(m.killed)
	return "kill -9 " + m.killed.Name
}

func (m *KillRestart) Stop(pc *ProcCluster) string {
	n := m.killed
	if n == nil {
		return ""
	}
	m.killed = nil
	began := time.Now()
	if err := pc.Restart(context.Background(), n); err != nil {
		pc.problem(err.Error())
		return "restart failed"
	}
	return fmt.Sprintf("restarted in %v", time.Since(began).Round(time.Millisecond))
}

// PauseProcess stops one node's process with SIGSTOP, and continues it
// with SIGCONT at Stop: its timers are late, and whatever it had in
// flight arrives late.
type PauseProcess struct{ paused *ProcNode }

func (*PauseProcess) Name() string { return "sigstop" }

func (m *PauseProcess) Start(pc *ProcCluster, rng *rand.Rand) string {
	up := upNodes(pc)
	n := up[rng.IntN(len(up))]
	if err := pc.Pause(n); err != nil {
		pc.problem(err.Error())
		return ""
	}
	m.paused = n
	return "sigstop " + n.Name
}

func (m *PauseProcess) Stop(pc *ProcCluster) string {
	if m.paused != nil {
		if err := pc.Resume(m.paused); err != nil {
			pc.problem(err.Error())
		}
		m.paused = nil
	}
	return ""
}

// ProcPartition cuts the running nodes into a minority and a majority at
// random or, with Leader, cuts off the node that leads the most groups.
type ProcPartition struct{ Leader bool }

func (m ProcPartition) Name() string {
	if m.Leader {
		return "isolate-leader"
	}
	return "random-halves"
}

func (m ProcPartition) Start(pc *ProcCluster, rng *rand.Rand) string {
	ctx, cancel := context.WithTimeout(context.Background(), procCallTimeout)
	defer cancel()
	up := upNodes(pc)
	rng.Shuffle(len(up), func(i, j int) { up[i], up[j] = up[j], up[i] })
	minority := up[:1+rng.IntN(max(1, (len(up)-1)/2))]
	desc := ""
	if m.Leader {
		busiest, most := (*ProcNode)(nil), -1
		for _, n := range up {
			if st, err := pc.Status(ctx, n); err == nil && len(st.Led) > most {
				busiest, most = n, len(st.Led)
			}
		}
		if busiest == nil {
			return ""
		}
		minority = []*ProcNode{busiest}
		desc = fmt.Sprintf(" (leads %d groups)", most)
	}
	var majority []*ProcNode
	for _, n := range up {
		if !slices.Contains(minority, n) {
			majority = append(majority, n)
		}
	}
	if err := pc.Partition(ctx, minority, majority); err != nil {
		pc.problem("partition: " + err.Error())
	}
	return fmt.Sprintf("partition %s | %s%s", procNames(minority), procNames(majority), desc)
}

func (ProcPartition) Stop(pc *ProcCluster) string {
	ctx, cancel := context.WithTimeout(context.Background(), procCallTimeout)
	defer cancel()
	if err := pc.Heal(ctx); err != nil {
		pc.problem("heal: " + err.Error())
	}
	return ""
}

func procNames(nodes []*ProcNode) string {
	s := "["
	for i, n := range nodes {
		if i > 0 {
			s += " "
		}
		s += n.Name
	}
	return s + "]"
}

// ProcMixed makes its nemeses' faults in turn, one per window, starting
// with a random one.
type ProcMixed struct {
	Of   []ProcNemesis
	next int
	cur  ProcNemesis
}

func (*ProcMixed) Name() string { return "mixed" }

func (m *ProcMixed) Start(pc *ProcCluster, rng *rand.Rand) string {
	if m.cur == nil && m.next == 0 {
		m.next = rng.IntN(len(m.Of))
	}
	m.cur = m.Of[m.next%len(m.Of)]
	m.next++
	return m.cur.Start(pc, rng)
}

func (m *ProcMixed) Stop(pc *ProcCluster) string { return m.cur.Stop(pc) }

// ProcScenario is a scenario of the process mode.
type ProcScenario struct {
	Name     string
	Nodes    int
	Workload Workload
	// Nemesis returns a fresh nemesis for one run.
	Nemesis func() ProcNemesis
	// Duration of the workload; faults alternate FaultFor on, HealFor off,
	// after a fault-free first second.
	Duration, FaultFor, HealFor time.Duration
}

// ProcScenarios are the process mode's scenarios: "proc-mixed" is what
// TestProcessSuite runs; the others serve its negative controls
// (ProcControls).
func ProcScenarios() []ProcScenario {
	// The in-process suite's workload, at a rate the processes' HTTP
	// round trips keep up with on 2 cores.
	w := Workload{Clients: 6, Keys: 5, Replicas: 3, Timeout: time.Second, Rate: 100}
	s := func(name string, w Workload, n func() ProcNemesis) ProcScenario {
		return ProcScenario{Name: name, Nodes: 3, Workload: w, Nemesis: n,
			Duration: 20 * time.Second, FaultFor: 2 * time.Second, HealFor: 2 * time.Second}
	}
	mixed := s("proc-mixed", w, func() ProcNemesis {
		return &ProcMixed{Of: []ProcNemesis{&KillRestart{}, &PauseProcess{}, ProcPartition{}, ProcPartition{Leader: true}}}
	})
	leader := s("proc-leader-isolated", w, func() ProcNemesis { return ProcPartition{Leader: true} })
	leader.Duration = 10 * time.Second
	kill := s("proc-kill", w, func() ProcNemesis { return &KillRestart{} })
	kill.Duration = 10 * time.Second
	return []ProcScenario{mixed, leader, kill}
}

// opsPerKey is what Stretched keeps a run's operations per key under,
// with margin: DESIGN.md bounds porcupine's histories at 20k per key.
const opsPerKey = 12000

// Stretched returns s with its workload running for d, on more keys if a
// run that long would put more than opsPerKey operations on each.
func (s ProcScenario) Stretched(d time.Duration) ProcScenario {
	s.Duration = d
	w := &s.Workload
	if w.Rate > 0 {
		total := int(d.Seconds() * float64(w.Clients*w.Rate))
		w.Keys = max(w.Keys, (total+opsPerKey-1)/opsPerKey)
	}
	return s
}

// LookupProc returns the process mode's scenario with this name.
func LookupProc(name string) (ProcScenario, bool) {
	for _, s := range ProcScenarios() {
		if s.Name == name {
			return s, true
		}
	}
	return ProcScenario{}, false
}

// ProcControls are the negative controls the process mode runs, by name
// (see Controls), each with the process scenario it runs in. The lease
// controls need nemeses the process mode lacks (leadership pulls and
// transfers, clocks of the suite's); the watch and scan controls, the
// watchers and scanners it does not run.
func ProcControls() map[string]string {
	return map[string]string{
		"quorum-no-wait": "proc-leader-isolated",
		"incr-get-set":   "proc-kill",
		"cad-get-delete": "proc-kill",
	}
}

// procFlags turns what tune sets in a node's hooks into procnode's
// flags: only the fields procnode has flags for (a negative control's),
// the same for every node; anything else is an error.
func procFlags(nodes int, tune func(node int, h *testhook.Hooks)) ([]string, error) {
	if tune == nil {
		return nil, nil
	}
	var flags []string
	for i := range nodes {
		h := &testhook.Hooks{}
		tune(i, h)
		var f []string
		if h.QuorumSlack > 0 {
			f = append(f, fmt.Sprint("-quorum-slack=", h.QuorumSlack))
		}
		if h.Lease.Duration > 0 {
			f = append(f, fmt.Sprint("-lease-duration=", h.Lease.Duration))
		}
		if h.Lease.UnsafeKeepThroughTransfer {
			f = append(f, "-lease-keep-transfer")
		}
		h.QuorumSlack, h.Lease.Duration, h.Lease.UnsafeKeepThroughTransfer = 0, 0, false
		if h.Lease != (testhook.Hooks{}).Lease || h.ClockRate != 0 || h.HandoffTimeout != 0 || h.Faults != nil {
			return nil, fmt.Errorf("tests: node %d's hooks set fields the process mode cannot carry", i)
		}
		if i > 0 && !slices.Equal(f, flags) {
			return nil, fmt.Errorf("tests: the process mode gives every node the same hooks; node %d's differ", i)
		}
		flags = f
	}
	return flags, nil
}

// RunProcesses runs one process-mode scenario with node processes of bin
// (BuildProcNode), their logs and ready files in dir, and checks its
// history with the in-process suite's checker. Of o it uses Seed, Scale,
// Tune (the hooks procnode has flags for: negative controls), OutDir,
// CheckTimeout and Progress.
func RunProcesses(ctx context.Context, s ProcScenario, bin, dir string, o Options) (*Report, error) {
	began := time.Now()
	progress := o.begin(s.Name, began)
	flags, err := procFlags(s.Nodes, o.Tune)
	if err != nil {
		return nil, err
	}
	rep := &Report{Scenario: s.Name, Seed: o.Seed, Nodes: s.Nodes}
	progress("starting %d node processes %v", s.Nodes, flags)
	pc, err := StartProcCluster(ctx, bin, dir, s.Nodes, o.Seed, flags)
	if err != nil {
		return nil, err
	}
	defer pc.Close()

	h := newHistory()
	keys := s.Workload.keys(nil)
	stop := make(chan struct{})
	clientsDone := make(chan struct{})
	go func() { defer close(clientsDone); runClients(pc, keys, s.Workload, o.Seed, h, stop) }()

	nem := s.Nemesis()
	fault := scheduled{
		start: func(rng *rand.Rand) string { return nem.Start(pc, rng) },
		stop:  func() string { return nem.Stop(pc) },
	}
	rep.Windows = runSchedule(ctx, h, schedule{Seed: o.Seed, Duration: time.Duration(float64(s.Duration) * o.Scale), FaultFor: s.FaultFor, HealFor: s.HealFor},
		fault, progress, fmt.Sprintf("workload of %d clients on %d keys, nemesis %s", s.Workload.Clients, s.Workload.Keys, nem.Name()))
	close(stop)
	<-clientsDone
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Every node running and ready, no cut left: then every key must take
	// a write, and every node must read what the history allows.
	healed := time.Now()
	for _, n := range pc.Nodes {
		if !n.Up() {
			if err := pc.Restart(ctx, n); err != nil {
				rep.Problems = append(rep.Problems, err.Error())
			}
		}
	}
	hctx, cancel := context.WithTimeout(ctx, procCallTimeout)
	err = pc.Heal(hctx)
	cancel()
	if err != nil {
		rep.Problems = append(rep.Problems, "heal: "+err.Error())
	}
	if err := pc.WaitReady(ctx, ProcReadyTimeout); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	progress("healed; writing every key")
	rep.Problems = append(rep.Problems, writeEveryKey(pc, keys, s.Workload, h)...)
	rep.Recovery = time.Since(healed)
	_, problems, retries := readEveryKey(pc, keys, s.Workload, h)
	rep.Problems, rep.FinalRetries = append(rep.Problems, problems...), retries
	progress("waiting for replicas to converge")
	convergeStart := time.Now()
	if err := waitConverged(ConvergeBound, pc.Converged); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	rep.Converge = time.Since(convergeStart)
	rep.Problems = append(rep.Problems, pc.Problems()...)

	checkHistory(h, rep, s.Name, o, progress)
	rep.Elapsed = time.Since(began)
	return rep, nil
}
