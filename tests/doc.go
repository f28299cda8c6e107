// Package tests holds black-box tests of GridKV clusters running in one
// process (every node is a gridkv.DB opened on loopback), and the
// Jepsen-style suite, which other programs can import to run against
// their own configuration:
//
//	rep, err := tests.Run(ctx, scenario, tests.Options{Seed: 7, Base: &myConfig})
//
// StartCluster puts every byte between nodes (Raft, RPC, gossip) through
// one fault seam; the nemeses (IsolateLeader, RandomHalves, MajoritiesRing,
// Bridge, BadLinks, CrashMinority, Pause, TransferStorm, Mixed) inject
// faults; the workload records a history on one monotonic clock; porcupine
// checks it per key, with Workload.Watch the watchers' streams and with
// Workload.Scan the scanners' scans are checked against it; Scenarios
// lists the named scenarios. docs/jepsen.md
// describes it all, and cmd/gridkv-jepsen runs it.
//
// The process mode runs every node as an OS process instead (tests/procnode,
// driven over internal/procctl's control interface): ProcCluster starts,
// kills (SIGKILL), restarts, pauses (SIGSTOP, SIGCONT) and partitions them,
// and RunProcesses runs a ProcScenario with the same clients, schedule and
// checker. TestProcessSuite is its short pass (20s of workload); the long
// pass is one command:
//
//	GRIDKV_JEPSEN_PROC_DURATION=5m go test ./tests -run TestProcessSuite -v
//
// (GRIDKV_JEPSEN_PROC_NODES=5 for 5 nodes instead of 3).
// TestProcessNegativeControls runs the negative controls it can carry
// (ProcControls) in process mode, and
// GRIDKV_JEPSEN_PROC_RELEAD=20 go test ./tests -run TestProcessKillReLead -v
// measures the time from a kill -9 to every group the node led being led
// again.
package tests
