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
package tests
