// Package adminhttp is a node's admin HTTP endpoint: Prometheus metrics,
// pprof, a JSON status page and health checks, on a mux of its own (never
// http.DefaultServeMux). cmd/gridkv serves it on -admin-addr.
//
//	reg := adminhttp.NewRegistry() // Go and process collectors
//	srv := &http.Server{Handler: adminhttp.Handler(db, reg, adminhttp.Options{})}
//	go srv.Serve(ln)
//
// Endpoints:
//
//	/metrics       the registry, in Prometheus' text format
//	/debug/pprof/  net/http/pprof's index and profiles
//	/status       JSON: gridkv.Status's JSON form (the node's id and
//	               addresses, the members with their state, the replica
//	               groups with leader, replicas, ranges and this node's
//	               role), the groups and ranges it holds and leads and its
//	               role (gridkv.Status.Held, Led, Role), and ready (as
//	               /readyz) with not_ready, why not
//	/healthz       200 while the DB is open, 503 once it is closed
//	/readyz        200 when DB.WaitReady returns nil within
//	               Options.ReadyTimeout (default 1s): every range has a
//	               reachable leader and its replicas; the check waits up
//	               to that long for it. Else 503 with the reason, and 503
//	               "stopping" once Options.Stopping is closed
//	/recover       POST ?group=N[&force=1] with header X-GridKV-Recover: 1
//	               (RecoverHeader; 403 without: a cross-site request
//	               cannot set it): DB.RecoverGroup(N), with
//	               gridkv.ForceRecover when force=1, on a group that lost
//	               its majority for good (group 0 first: the others'
//	               recoveries are logged in it); 200 once this node's
//	               replica leads the group's new creation alone, 400 when
//	               refused (a quorum may be alive, no replica here), 504
//	               on time-out (a minute), else 503 (group 0 has no
//	               leader). Pick the node by /status: the replica with the
//	               largest (last_term, last_index), term first
//
// A program stopping its node closes Options.Stopping first, so that load
// balancers stop sending it clients, and keeps the endpoint up while
// DB.Close hands the node's ranges away: /metrics and /status show the
// handoff. /healthz says 200 until the DB is closed.
package adminhttp
