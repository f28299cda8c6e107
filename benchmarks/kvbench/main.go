// Command kvbench measures GridKV through its public API: an in-process
// cluster of -nodes nodes on loopback, -clients concurrent clients spread
// over the nodes, and the standard workloads (Set, default Get, Stale Get,
// a 90/10 mix), each run -runs times.
//
//	go run ./kvbench -nodes 3 -clients 64 -seconds 5s -runs 3
//
// -groups sets Config.GroupsPerNode, to show how write batching grows
// with clients per range.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/loadgen"
)

func main() {
	nodes := flag.Int("nodes", 3, "nodes in the cluster")
	clients := flag.Int("clients", 64, "concurrent clients")
	d := flag.Duration("seconds", 5*time.Second, "length of each run")
	runs := flag.Int("runs", 3, "runs of each workload")
	groups := flag.Int("groups", 0, "Config.GroupsPerNode (0: the default, 2)")
	only := flag.String("only", "", "run only the workload with this name")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the runs here")
	flag.Parse()
	onlyWorkload = *only
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		startProfile = func() func() { _ = pprof.StartCPUProfile(f); return pprof.StopCPUProfile }
	}
	if err := run(*nodes, *groups, *clients, *d, *runs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

var (
	onlyWorkload string
	startProfile = func() func() { return func() {} }
)

func run(n, groups, clients int, d time.Duration, runs int) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var dbs []*gridkv.DB
	defer func() {
		for _, db := range dbs {
			db.Close()
		}
	}()
	for i := 0; i < n; i++ {
		cfg := gridkv.Config{NodeID: fmt.Sprint("n", i), GroupsPerNode: groups, Logger: quiet}
		if i > 0 {
			cfg.Seeds = []string{dbs[0].GossipAddr()}
		}
		db, err := gridkv.Open(cfg)
		if err != nil {
			return err
		}
		dbs = append(dbs, db)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, db := range dbs {
		if err := db.WaitReady(ctx); err != nil {
			return err
		}
	}
	// Let leaderships settle on the placement plan before measuring.
	time.Sleep(2 * time.Second)
	if err := loadgen.Preload(ctx, dbs, 10000, 64); err != nil {
		return err
	}
	stop := startProfile()
	defer stop()
	for r := 0; r < runs; r++ {
		for _, w := range loadgen.Standard(clients, d) {
			if onlyWorkload != "" && w.Name != onlyWorkload {
				continue
			}
			fmt.Printf("nodes=%d run=%d %s\n", n, r+1, loadgen.Run(ctx, dbs, w))
		}
	}
	return nil
}
