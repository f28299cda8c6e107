package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/procctl"
	"github.com/gridkv/gridkv/internal/testhook"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "procnode:", err)
		os.Exit(1)
	}
}

func run() error {
	id := flag.String("id", "", "NodeID (required)")
	bind := flag.String("bind", "127.0.0.1:0", "Raft/RPC address (BindAddr)")
	gossipAddr := flag.String("gossip", "127.0.0.1:0", "gossip address (GossipAddr)")
	control := flag.String("control", "127.0.0.1:0", "control interface address (HTTP)")
	seeds := flag.String("seeds", "", "comma-separated gossip addresses to join; none: bootstrap a cluster")
	groups := flag.Int("groups", 16, "GroupsPerNode")
	readyFile := flag.String("ready-file", "", "where to write the node's addresses once it is open (required)")
	faultSeed := flag.Uint64("fault-seed", 1, "seed of the fault seam's random draws")
	quorumSlack := flag.Uint64("quorum-slack", 0, "negative control: Quorum reads may answer this many entries behind")
	leaseDuration := flag.Duration("lease-duration", 0, "negative control: leader leases last this long (testhook Lease.Duration)")
	leaseKeep := flag.Bool("lease-keep-transfer", false, "negative control: a leader keeps its lease through a leadership transfer")
	verbose := flag.Bool("v", false, "log at debug level")
	exitOnEOF := flag.Bool("exit-on-eof", false, "close the node and exit when stdin reaches EOF (the suite holds the other end: a driver that dies takes its nodes with it)")
	flag.Parse()
	if *id == "" || *readyFile == "" {
		return errors.New("-id and -ready-file are required")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg := gridkv.Config{NodeID: *id, BindAddr: *bind, GossipAddr: *gossipAddr, Timing: gridkv.LocalTiming(), GroupsPerNode: *groups,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))}
	if *seeds != "" {
		cfg.Seeds = strings.Split(*seeds, ",")
	}
	faults := faultnet.New(*faultSeed)
	// FixedGroups as the in-process suite's nodes (tests.Cluster.open).
	h := &testhook.Hooks{Faults: faults, FixedGroups: true, QuorumSlack: *quorumSlack}
	h.Lease.Duration, h.Lease.UnsafeKeepThroughTransfer = *leaseDuration, *leaseKeep

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *exitOnEOF {
		// Blocked in a read of stdin until EOF; the process's exit ends it
		// otherwise (a read of a blocking descriptor cannot be cancelled).
		// The driver is gone then: exit at once, as if killed, rather than
		// wait out a graceful close among peers that may be gone too.
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			fmt.Fprintln(os.Stderr, "procnode: stdin closed: the driver is gone; exiting")
			os.Exit(2)
		}()
	}
	ln, err := net.Listen("tcp", *control)
	if err != nil {
		return err
	}
	opened, err := testhook.Open(ctx, cfg, h)
	if err != nil {
		ln.Close()
		return err
	}
	db := opened.(*gridkv.DB)
	srv := &http.Server{Handler: procctl.NewHandler(db, faults, h.Node()), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := writeReady(*readyFile, procctl.Addrs{Control: ln.Addr().String(), Addr: db.Addr(), GossipAddr: db.GossipAddr()}); err != nil {
		srv.Close()
		db.Close()
		return err
	}
	select {
	case <-ctx.Done():
		srv.Close()
		<-served // http.ErrServerClosed
		return db.Close()
	case err = <-served:
		db.Close()
		return err
	}
}

// writeReady writes a to path atomically: the suite polls for the file
// and must never read half of it.
func writeReady(path string, a procctl.Addrs) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
