// Command procnode is one node of the Jepsen-style suite's process mode
// (tests.RunProcesses, TestProcessSuite): a gridkv.DB on loopback with
// gridkv.LocalTiming, its traffic through a fault seam of its own
// (internal/faultnet, as in-process nodes have), served over the control
// interface of internal/procctl. The suite builds it, starts one per node,
// kills it with SIGKILL, pauses it with SIGSTOP and starts it again under
// the same NodeID: a new incarnation, empty, that rejoins.
//
//	procnode -id n0 -ready-file /tmp/n0.json
//	procnode -id n1 -seeds 127.0.0.1:40001 -ready-file /tmp/n1.json
//
// Once the node is open and its control interface listens, it writes
// {"control": ..., "addr": ..., "gossip_addr": ...} to -ready-file
// (atomically: written aside, then renamed); a restart passes the same
// three addresses back in -control, -bind and -gossip. The flags
// -quorum-slack, -lease-duration and -lease-keep-transfer switch on the
// suite's negative controls (the testhook.Hooks fields of those names).
// SIGTERM or SIGINT close the node gracefully; with -exit-on-eof, EOF on
// stdin makes it exit at once (the suite passes it, and a pipe only it
// holds, so that its nodes do not outlive it); logs go to stderr.
package main
