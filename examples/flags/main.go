// Command flags shows a feature-flag client built on Watch, on a GridKV
// cluster of three nodes started in this process:
//
//	go run ./examples/flags
//
// Flags are keys under "flags/" whose value is "on" or "off". The client
// keeps every flag in a local map, so checking a flag costs a map lookup,
// no network. It starts a watch first, then loads the flags with Scan,
// then applies the watch's changes: a change and a loaded entry are told
// apart by version (each key's versions grow with every write), so a
// change that happened between the watch's start and the load is applied
// once, whichever saw it first. If the watch ends (its history is gone,
// or the client fell behind), it loads again. An admin, on another node,
// flips flags; the client sees each change a few milliseconds later.
//
// With -v, GridKV's warnings go to standard error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

const prefix = "flags/"

func main() {
	verbose := flag.Bool("v", false, "log GridKV's warnings to standard error")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := run(logger); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// flagValue is a flag as the client knows it, with the version of the
// write it came from; a deleted flag is kept as absent, with the version of
// its deletion, so an older write seen late cannot bring it back.
type flagValue struct {
	on      bool
	present bool
	version uint64
}

// flags is the client: a local copy of every flag, kept current by a watch.
type flags struct {
	db      *gridkv.DB
	mu      sync.Mutex
	vals    map[string]flagValue
	changed chan string // names of flags as they change, for the demo
	done    chan struct{}
}

// startFlags loads the flags and keeps them current until ctx ends.
func startFlags(ctx context.Context, db *gridkv.DB) (*flags, error) {
	f := &flags{db: db, vals: map[string]flagValue{}, changed: make(chan string, 64), done: make(chan struct{})}
	w, err := f.load(ctx)
	if err != nil {
		return nil, err
	}
	go f.follow(ctx, w)
	return f, nil
}

// load starts a watch, then reads every flag into a new map, which
// replaces the old one (a flag deleted while no watch ran is gone); the
// watch's changes are applied after.
func (f *flags) load(ctx context.Context) (*gridkv.Watcher, error) {
	w, err := f.db.Watch(ctx, prefix)
	if err != nil {
		return nil, err
	}
	vals := map[string]flagValue{}
	for e, err := range f.db.Scan(ctx, prefix) {
		if err != nil {
			w.Close()
			return nil, err
		}
		vals[e.Key] = flagValue{on: string(e.Value) == "on", present: true, version: e.Version}
	}
	f.mu.Lock()
	f.vals = vals
	f.mu.Unlock()
	return w, nil
}

// follow applies the watch's changes; when the watch ends it loads again.
func (f *flags) follow(ctx context.Context, w *gridkv.Watcher) {
	defer close(f.done)
	for {
		for e := range w.Events() {
			switch e.Kind {
			case gridkv.EventSet:
				f.apply(e.Key, string(e.Value) == "on", true, e.Version)
			case gridkv.EventDelete, gridkv.EventExpire:
				f.apply(e.Key, false, false, e.Version)
			}
		}
		if ctx.Err() != nil {
			return
		}
		fmt.Printf("  (watch ended: %v; loading again)\n", w.Err())
		var err error
		for w, err = f.load(ctx); err != nil; w, err = f.load(ctx) {
			if errors.Is(err, gridkv.ErrClosed) || ctx.Err() != nil {
				return
			}
		}
	}
}

// apply records a flag's value at version, unless the client already has
// a later one.
func (f *flags) apply(key string, on, present bool, version uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur, ok := f.vals[key]; ok && cur.version >= version {
		return
	}
	f.vals[key] = flagValue{on: on, present: present, version: version}
	select {
	case f.changed <- strings.TrimPrefix(key, prefix):
	default:
	}
}

// Enabled reports whether flag name is on: a map lookup.
func (f *flags) Enabled(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vals[prefix+name]
	return v.present && v.on
}

func run(logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var nodes []*gridkv.DB
	defer func() {
		for _, db := range nodes {
			db.Close()
		}
	}()
	for i := 1; i <= 3; i++ {
		cfg := gridkv.Config{NodeID: fmt.Sprint("node-", i), Timing: gridkv.LocalTiming(), Logger: logger}
		if i > 1 {
			cfg.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := gridkv.Open(cfg)
		if err != nil {
			return err
		}
		nodes = append(nodes, db)
	}
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			return err
		}
	}
	admin, app := nodes[0], nodes[2]
	fmt.Println("3 nodes ready; the admin writes through node-1, the app's flag client runs on node-3")

	for name, v := range map[string]string{"dark-mode": "on", "new-checkout": "off", "beta-search": "on"} {
		if err := admin.Set(ctx, prefix+name, []byte(v)); err != nil {
			return err
		}
	}
	clientCtx, stopClient := context.WithCancel(ctx)
	client, err := startFlags(clientCtx, app)
	if err != nil {
		stopClient()
		return err
	}
	defer func() { stopClient(); <-client.done }()
	drain(client)
	fmt.Printf("loaded: dark-mode=%v new-checkout=%v beta-search=%v\n",
		client.Enabled("dark-mode"), client.Enabled("new-checkout"), client.Enabled("beta-search"))

	// The admin changes flags; the client hears of each.
	steps := []struct {
		what string
		do   func() error
		name string
		want bool
	}{
		{"turns new-checkout on", func() error { return admin.Set(ctx, prefix+"new-checkout", []byte("on")) }, "new-checkout", true},
		{"turns dark-mode off", func() error { return admin.Set(ctx, prefix+"dark-mode", []byte("off")) }, "dark-mode", false},
		{"deletes beta-search", func() error { return admin.Delete(ctx, prefix+"beta-search") }, "beta-search", false},
		{"turns promo on for 1s", func() error {
			return admin.Set(ctx, prefix+"promo", []byte("on"), gridkv.WithTTL(time.Second))
		}, "promo", true},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.do(); err != nil {
			return err
		}
		if err := waitFor(client, s.name, s.want, 5*time.Second); err != nil {
			return fmt.Errorf("the admin %s: %w", s.what, err)
		}
		fmt.Printf("the admin %s: the client sees %s=%v after %v\n", s.what, s.name, s.want, time.Since(start).Round(100*time.Microsecond))
	}
	start := time.Now()
	if err := waitFor(client, "promo", false, 10*time.Second); err != nil {
		return fmt.Errorf("promo's TTL: %w", err)
	}
	fmt.Printf("promo's TTL runs out: the client sees promo=false %v later\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// drain empties the client's change notices.
func drain(f *flags) {
	for {
		select {
		case <-f.changed:
		default:
			return
		}
	}
}

// waitFor waits until the client's flag name is want, or within passes.
func waitFor(f *flags, name string, want bool, within time.Duration) error {
	deadline := time.After(within)
	for f.Enabled(name) != want {
		select {
		case <-f.changed:
		case <-deadline:
			return fmt.Errorf("flag %s is not %v after %v", name, want, within)
		}
	}
	return nil
}
