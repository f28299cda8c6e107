// Command gridkv runs one GridKV node as a program: it joins (or forms) a
// cluster and serves the Redis protocol (RESP2) on -resp-addr, with an
// admin HTTP endpoint on -admin-addr (/metrics, /status, /healthz,
// /readyz, /recover, /debug/pprof/; see internal/adminhttp).
//
//	go install github.com/gridkv/gridkv/cmd/gridkv@latest
//	gridkv -node-id n1 -resp-addr 127.0.0.1:7001 -gossip-addr 127.0.0.1:7101 \
//	    -seeds 127.0.0.1:7102,127.0.0.1:7103 -bootstrap-expect 3
//	redis-cli -p 7001 SET greeting hello
//
// Every gridkv.Config field has a flag, and every flag an environment
// variable: GRIDKV_ and the flag in upper snake case (-bind-addr:
// GRIDKV_BIND_ADDR); a flag wins over its variable. gridkv -h lists the
// flags with their defaults. Any other GRIDKV_ variable is refused like a
// bad flag (exit status 2), so that a misspelt one is not silently
// ignored. The commands served, and their semantics, are
// internal/respserver's (see its package doc).
//
// A replica group that lost a majority of its replicas for good (two of
// three nodes crashed: Raft logs are in memory) is brought back from a
// survivor, group 0 first, with the admin endpoint of the node whose
// replica to keep (see README, "Recovering a group that lost its
// majority"):
//
//	gridkv recover -admin 127.0.0.1:7201 -group 0
//
// which POSTs /recover?group=0 with the header X-GridKV-Recover: 1, prints
// the node's answer, and exits 0 once the group is recovered, 1 when the
// node refuses (-force overrides the checks that the majority is really
// gone; see README for what that risks).
//
// SIGINT or SIGTERM stops the node gracefully: /readyz answers 503 from
// then on, the RESP listener closes, the commands already read finish and
// are answered, the node leaves the cluster (gridkv.DB.Close) while the
// admin endpoint still serves /metrics and /status, the admin endpoint
// closes, and the program exits 0. A second SIGINT or SIGTERM during that
// kills the program at once. A signal while the node is still joining
// ends the join: it logs "gridkv stopped before joining" and exits 0. It
// exits 1 when the node fails (it cannot join, a port is taken) and 2 for
// bad flags or an unknown GRIDKV_ variable.
package main
