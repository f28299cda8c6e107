// Package cluster opens in-process GridKV clusters for the benchmark
// programs: n nodes on loopback that form one cluster together.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/gridkv/gridkv/gridkv"
)

// Form opens n nodes from base (NodeID, GossipAddr, Seeds, BootstrapExpect
// and, when nil, Logger set here) that form one cluster together: with
// n > 1 each names the others as seeds and BootstrapExpect is n, so the
// cluster has GroupsPerNode x n replica groups. It waits until every node
// is ready, and returns the nodes opened even on error, for the caller to
// close.
func Form(ctx context.Context, n int, base gridkv.Config) ([]*gridkv.DB, error) {
	if base.Logger == nil {
		base.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Reserve a gossip port per node so that each can name the others.
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addrs[i] = l.Addr().String()
		l.Close()
	}
	dbs, errs := make([]*gridkv.DB, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range dbs {
		cfg := base
		cfg.NodeID, cfg.GossipAddr, cfg.Seeds = fmt.Sprint("n", i), addrs[i], nil
		if n > 1 {
			cfg.BootstrapExpect = n
			for j, a := range addrs {
				if j != i {
					cfg.Seeds = append(cfg.Seeds, a)
				}
			}
		}
		wg.Add(1)
		go func() { defer wg.Done(); dbs[i], errs[i] = gridkv.OpenContext(ctx, cfg) }()
	}
	wg.Wait()
	dbs = slices.DeleteFunc(dbs, func(db *gridkv.DB) bool { return db == nil })
	if err := errors.Join(errs...); err != nil {
		return dbs, err
	}
	for _, db := range dbs {
		if err := db.WaitReady(ctx); err != nil {
			return dbs, err
		}
	}
	return dbs, nil
}
