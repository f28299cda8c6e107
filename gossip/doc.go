// Package gossip wraps hashicorp/memberlist: nodes find each other through
// seed addresses (joins retried with backoff), carry small metadata (node
// id, incarnation, RPC address, the ranges they lead) within memberlist's
// 512-byte limit, and report join, leave, fail and update events.
//
// Config.Settings are values every member must share. They travel in the
// metadata; both sides of a join check each other's (memberlist's
// MergeDelegate), and every alive message is checked too (AliveDelegate),
// so a node whose settings differ is never counted, and Join says which
// setting differs with both values. A second live node under a member's
// name is refused the same way; a crashed member's name is free again once
// the cluster has declared it dead, at any address.
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
