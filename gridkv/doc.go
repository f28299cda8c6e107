// Package gridkv is an embedded, strongly consistent, distributed key-value
// store. Every instance of an application calls Open; the instances find
// each other by gossip and form one cluster. Keys hash into ranges (Ranges of
// them), and each range belongs to a replica group: a Raft group of
// ReplicaCount replicas on different nodes that carries many ranges.
//
// Guarantees: writes (Set, Delete, CompareAndSwap, CompareVersionAndSwap,
// CompareAndDelete, Incr, Expire) are linearizable. Get (and GetEntry) is
// linearizable by default (served by the group leader from its own state
// under its leader lease, with no round trip; a ReadIndex round when it
// holds no valid lease), with ReadIndex (a leadership round sent after the
// call began, no clock assumption) and with Quorum(r) for r >
// ReplicaCount/2 (served by the group's replicas, not its leader). Stale
// reads this node's replica without waiting. Scan yields the live keys with
// a prefix in key order, reading each range page by page as Get reads a
// key: not one snapshot, but in the linearizable modes every key committed
// before it started and not deleted before it ended appears. Watch
// delivers the changes to keys with a prefix, per key in commit order.
// An error matching ErrTimeout leaves a write's outcome unknown; every
// other error means it was not applied.
//
// Usage:
//
//	db, err := gridkv.Open(gridkv.Config{}) // a single-node cluster
//	if err != nil { ... }
//	defer db.Close()
//	err = db.Set(ctx, "user:42", []byte("alice"), gridkv.WithTTL(time.Hour))
//	v, err := db.Get(ctx, "user:42")
//
// A second node joins with Config{Seeds: []string{db.GossipAddr()}}
// (OpenContext bounds the join with a ctx). Its Ranges, GroupsPerNode,
// ReplicaCount, MemoryLimit, Timing.HeartbeatTimeout and TLS (on or off) must equal the cluster's, and its
// NodeID must not be a live member's: otherwise Open fails with ErrInvalid saying which.
//
// Timings are in Config.Timing: the zero value is LANTiming, and nodes on one machine
// (tests, examples) go faster with Config{Timing: gridkv.LocalTiming()}.
//
// Security: Config.GossipKey encrypts and authenticates gossip;
// Config.TLS puts the Raft and RPC traffic between nodes under mutual TLS.
// With TLS, every node presents a certificate and verifies the others'
// (for the host of the address it dials, or Config.TLS.ServerName), a node
// counts as a member only once this node has completed a round trip with
// it over TLS, and a node whose certificate is refused fails to Open
// (ErrUnavailable naming TLS). TLS must be on for every node or none:
//
//	cert, _ := tls.LoadX509KeyPair("node.crt", "node.key") // SANs: the node's IP
//	pool := x509.NewCertPool()
//	pool.AppendCertsFromPEM(caPEM)
//	db, err := gridkv.Open(gridkv.Config{
//		GossipKey: key, // 32 bytes, the same on every node
//		TLS:       &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
//	})
//
// See docs/security.md for what each protects, what neither does, and how
// to make certificates.
//
// Metrics: with Config.Metrics set to a prometheus.Registerer, Open
// registers the node's Prometheus metrics there, each labelled node=NodeID:
// operations by kind, result and read path with their latencies
// (gridkv_operations_total, gridkv_operation_duration_seconds), forwarded
// operations, Raft commits, applies, leader changes and batching, frames
// and bytes per peer, membership events, the groups and ranges held and
// led, and the memory used against MemoryLimit. Most are read from the
// node's own counters when scraped; Close unregisters them. Without it
// (the default) nothing is counted for them. docs/metrics.md lists every
// metric.
//
//	reg := prometheus.NewRegistry()
//	db, err := gridkv.Open(gridkv.Config{Metrics: reg})
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
package gridkv
