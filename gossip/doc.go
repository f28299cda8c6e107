// Package gossip wraps hashicorp/memberlist: nodes find each other through
// seed addresses (joins retried with backoff), carry small metadata (node
// id, incarnation, RPC address, the ranges they lead) within memberlist's
// 512-byte limit, and report join, leave, fail and update events.
//
// memberlist calls its delegates with its own locks held, so calling any
// memberlist method from inside them deadlocks (hashicorp/memberlist#23,
// #237). This package queues events from those callbacks and delivers them
// on a goroutine of its own, where the handler may call Members, SetMeta or
// anything else.
//
// memberlist's Shutdown does not wait for a probe already in flight; that
// goroutine (memberlist's own) ends within ProbeInterval after Close.
//
// Usage:
//
//	n, _ := gossip.Start(gossip.Config{Name: "n2", Meta: gossip.Meta{NodeID: "n2", RPCAddr: rpc},
//		OnEvent: func(ev gossip.Event) { log.Println(ev.Kind, ev.Member.Name) }})
//	defer n.Close(time.Second)
//	_, err := n.Join(ctx, []string{seedAddr})
package gossip
