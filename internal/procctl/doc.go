// Package procctl is the control interface of a node process of the
// Jepsen-style suite's process mode (tests/procnode, driven by
// tests.RunProcesses): HTTP on loopback, JSON bodies, four calls.
//
//	POST /op      one client operation on the node's gridkv.DB (Op → Result)
//	POST /cut     drop every message this node sends to the given peer
//	              addresses, at its fault seam (Cut); an empty list heals
//	GET  /status  the node's id, addresses and the groups it leads (Status);
//	              ?ready=<duration> first waits up to that long for
//	              DB.WaitReady, and answers 503 if the node is not ready
//	GET  /replicas the node's replicas with a digest of each one's state
//	              (testhook.Node.Ranges), for the convergence check
//
// Handler serves them over a DB and the faultnet.Net its hooks route
// traffic through; Client calls them and hands back errors under gridkv's
// contract (ErrNotFound, ErrInvalid, "outcome unknown" in the text of a
// write that may have applied), so that the suite's clients classify an
// operation of a node process as they do one of an in-process node. A
// call that gets no answer (the process killed, paused past the deadline)
// is a failed read, or a write of unknown outcome.
//
// Usage, in the node process:
//
//	http.Serve(ln, procctl.NewHandler(db, faults, hooks.Node()))
//
// and in the driver:
//
//	c := procctl.NewClient("127.0.0.1:7001", transport)
//	err := c.Set(ctx, "k", []byte("v"))
package procctl
