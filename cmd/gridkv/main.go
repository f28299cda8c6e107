package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/adminhttp"
	"github.com/gridkv/gridkv/internal/respserver"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// Once the first signal has ended ctx, stop catching them: a second
	// SIGINT or SIGTERM kills the program (the default), for when a
	// graceful stop takes too long.
	context.AfterFunc(ctx, stop)
	if len(os.Args) > 1 && os.Args[1] == "recover" {
		os.Exit(runRecover(ctx, os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(ctx, os.Args[1:], os.Environ(), os.Stderr))
}

// run runs a node until ctx ends (a signal), then stops it gracefully. It
// returns the exit status: 0 after a graceful stop (or when ctx ends
// before the node has joined), 1 when the node failed, 2 for bad flags.
// environ is the environment, as os.Environ gives it.
func run(ctx context.Context, args, environ []string, stderr io.Writer) int {
	o, err := parseOptions(args, environ, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "gridkv:", err)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: o.logLevel}
	var log *slog.Logger
	if o.logFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, hopts))
	}
	o.cfg.Logger = log
	if err := serve(ctx, o, log); err != nil {
		log.Error("gridkv stopped", "err", err)
		return 1
	}
	return 0
}

// serve listens, opens the node, serves until ctx ends, then stops: the
// listeners close, commands in flight finish, the node leaves the cluster
// (DB.Close) while the admin endpoint still serves (/readyz says 503), and
// the admin endpoint closes last. ctx ending while the node joins stops
// the join, which is no failure.
func serve(ctx context.Context, o options, log *slog.Logger) error {
	// Listen first: a port in use fails before joining the cluster.
	respLn, err := net.Listen("tcp", o.respAddr)
	if err != nil {
		return fmt.Errorf("resp-addr: %w", err)
	}
	var adminLn net.Listener
	if o.adminAddr != "" {
		if adminLn, err = net.Listen("tcp", o.adminAddr); err != nil {
			respLn.Close()
			return fmt.Errorf("admin-addr: %w", err)
		}
	}
	// The node's metrics go to the registry /metrics serves.
	var reg *prometheus.Registry
	if adminLn != nil {
		reg = adminhttp.NewRegistry()
		o.cfg.Metrics = reg
	}
	db, err := gridkv.OpenContext(ctx, o.cfg)
	if err != nil {
		respLn.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		// OpenContext's error wraps ctx.Err() when ctx ended it.
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			log.Info("gridkv stopped before joining", "node_id", o.cfg.NodeID)
			return nil
		}
		return err
	}

	var wg sync.WaitGroup
	failed := make(chan error, 2)
	resp := respserver.New(db, respserver.Options{RequestTimeout: o.requestTimeout, Logger: log})
	respDone := make(chan struct{})
	wg.Go(func() {
		defer close(respDone)
		if err := resp.Serve(respLn); !errors.Is(err, respserver.ErrServerClosed) {
			failed <- fmt.Errorf("resp server: %w", err)
		}
	})
	adminAddr := ""
	var admin *http.Server
	stopping := make(chan struct{}) // closed when the stop begins: /readyz says 503
	if adminLn != nil {
		admin = &http.Server{Handler: adminhttp.Handler(db, reg, adminhttp.Options{Stopping: stopping}), ReadHeaderTimeout: 10 * time.Second}
		adminAddr = adminLn.Addr().String()
		wg.Go(func() {
			if err := admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("admin server: %w", err)
			}
		})
	}
	log.Info("gridkv started", "node_id", db.NodeID(), "resp_addr", respLn.Addr().String(), "admin_addr", adminAddr,
		"bind_addr", db.Addr(), "gossip_addr", db.GossipAddr())
	readyCtx, readyDone := context.WithCancel(ctx)
	wg.Go(func() {
		if err := db.WaitReady(readyCtx); err == nil {
			log.Info("gridkv ready", "node_id", db.NodeID(), "members", len(db.Members()))
		}
	})

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-failed:
	}
	close(stopping) // /readyz answers 503 from here on
	if serveErr == nil {
		log.Info("gridkv stopping", "node_id", db.NodeID())
	}
	readyDone()
	// Commands in flight finish within the request timeout; give them
	// that and a little more.
	sctx, cancel := context.WithTimeout(context.Background(), o.requestTimeout+5*time.Second)
	defer cancel()
	if err := resp.Shutdown(sctx); err != nil {
		log.Warn("resp server: commands cut off", "err", err)
	}
	<-respDone
	// The admin endpoint stays up while the node leaves (/metrics and
	// /status show the handoff), and closes after.
	closeErr := db.Close()
	if admin != nil {
		actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := admin.Shutdown(actx); err != nil {
			admin.Close()
		}
	}
	wg.Wait()
	if serveErr == nil && closeErr == nil {
		log.Info("gridkv stopped", "node_id", db.NodeID())
	}
	return errors.Join(serveErr, closeErr)
}
