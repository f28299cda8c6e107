package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/tests"
)

// logCount is -logcount: it measures how many WARN and ERROR lines each
// node of a 3-node cluster writes while a write load runs and faults
// follow one another over d (Local timings, 16 groups per node, the
// suite's fault seam). The run is cut into six equal phases:
//
//	isolate  node 2 cut off from the others, both ways
//	healed   links restored
//	crashed  node 1 killed (crash: no hand-off, state gone)
//	restart  node 1 started again on its addresses (a new incarnation)
//	paused   node 0's traffic held both ways, delivered when it resumes
//	settle   links restored
//
// Records are counted per node by the "node" or "member" attribute the
// packages attach; the closing of the cluster after the run is counted
// apart. It prints per-node and per-phase counts and the top messages.
func logCount(d time.Duration, seed uint64) error {
	counts := &logStats{byNode: map[string]*[3]int{}, byPhase: map[string]*[3]int{}, msgs: map[string]int{}}
	base := gridkv.Config{Timing: gridkv.LocalTiming(), GroupsPerNode: 16, Logger: slog.New(&nodeCounter{s: counts, node: "?"})}
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	counts.setPhase("formation")
	c, err := tests.StartCluster(ctx, tests.ClusterOptions{Nodes: 3, Seed: seed, Base: &base})
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				live := c.Live()
				db := live[rng.IntN(len(live))].DB()
				wctx, wcancel := context.WithTimeout(ctx, time.Second)
				err := db.Set(wctx, fmt.Sprintf("w%d-k%d", w, i%500), []byte("v"))
				wcancel()
				if err != nil {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond) // a down node fails fast: no busy loop
				} else {
					ok.Add(1)
				}
			}
		}()
	}

	phase := d / 6
	n := c.Nodes
	heal := func() { c.Heal() }
	steps := []struct {
		name string
		do   func()
	}{
		{"isolate", func() { c.Isolate(n[2]) }},
		{"healed", heal},
		{"crashed", func() { c.Crash(n[1]) }},
		{"restart", func() {
			if err := c.Restart(n[1]); err != nil {
				fmt.Println("logcount: restart:", err)
			}
		}},
		{"paused", func() {
			until := time.Now().Add(phase)
			for _, o := range n {
				if o != n[0] {
					c.SetLink(n[0], o, faultnet.Rule{HoldUntil: until})
					c.SetLink(o, n[0], faultnet.Rule{HoldUntil: until})
				}
			}
		}},
		{"settle", heal},
	}
	start := time.Now()
	for i, s := range steps {
		counts.setPhase(s.name)
		s.do()
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * phase)))
	}
	close(stop)
	wg.Wait()
	counts.setPhase("close")
	c.Close()
	closed = true

	fmt.Printf("logcount: 3 nodes, Local timings, %v of faults, seed %d; writes ok %d, failed %d\n", d, seed, ok.Load(), failed.Load())
	fmt.Print(counts.report(n))
	return nil
}

// logStats counts INFO, WARN and ERROR records per node and per phase,
// and WARN and ERROR records per (level, message).
type logStats struct {
	mu      sync.Mutex
	phase   string
	byNode  map[string]*[3]int // INFO, WARN, ERROR; the run's phases only
	byPhase map[string]*[3]int
	msgs    map[string]int // the run's phases only
}

func (s *logStats) setPhase(p string) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
}

func (s *logStats) add(node string, r slog.Record) {
	i := 0
	switch {
	case r.Level >= slog.LevelError:
		i = 2
	case r.Level >= slog.LevelWarn:
		i = 1
	}
	msg := r.Message
	if len(msg) > 100 {
		msg = msg[:100]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	bump := func(m map[string]*[3]int, k string) {
		if m[k] == nil {
			m[k] = new([3]int)
		}
		m[k][i]++
	}
	bump(s.byPhase, s.phase)
	if s.phase == "formation" || s.phase == "close" {
		return
	}
	bump(s.byNode, node)
	if i == 0 {
		return
	}
	s.msgs[fmt.Sprintf("%-5s %s", r.Level, maskDigits(msg))]++
}

func maskDigits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '#'
		}
		return r
	}, s)
}

func (s *logStats) report(nodes []*tests.Node) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	get := func(m map[string]*[3]int, k string) [3]int {
		if v := m[k]; v != nil {
			return *v
		}
		return [3]int{}
	}
	fmt.Fprintf(&b, "%-12s %6s %6s %6s   (during the faults)\n", "node", "INFO", "WARN", "ERROR")
	names := []string{}
	for _, nd := range nodes {
		names = append(names, nd.Name)
	}
	var extra []string // records without a node attribute, if any
	for k := range s.byNode {
		if !slices.Contains(names, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	names = append(names, extra...)
	for _, k := range names {
		v := get(s.byNode, k)
		fmt.Fprintf(&b, "%-12s %6d %6d %6d\n", k, v[0], v[1], v[2])
	}
	fmt.Fprintf(&b, "%-12s %6s %6s %6s   (all nodes)\n", "phase", "INFO", "WARN", "ERROR")
	for _, p := range []string{"formation", "isolate", "healed", "crashed", "restart", "paused", "settle", "close"} {
		v := get(s.byPhase, p)
		fmt.Fprintf(&b, "%-12s %6d %6d %6d\n", p, v[0], v[1], v[2])
	}
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range s.msgs {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	fmt.Fprintf(&b, "top messages during the faults (all nodes, digits masked):\n")
	for i, e := range all {
		if i == 10 {
			break
		}
		fmt.Fprintf(&b, "%6d  %s\n", e.v, e.k)
	}
	return b.String()
}

// nodeCounter is a slog handler that attributes each record to the node
// named by the "node" or "member" attribute its logger carries.
type nodeCounter struct {
	s    *logStats
	node string
}

func (h *nodeCounter) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (h *nodeCounter) WithGroup(string) slog.Handler                 { return h }

func (h *nodeCounter) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	for _, a := range as {
		if a.Key == "node" || a.Key == "member" {
			c.node = a.Value.String()
		}
	}
	return &c
}

func (h *nodeCounter) Handle(_ context.Context, r slog.Record) error {
	node := h.node
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "node" || a.Key == "member" {
			node = a.Value.String()
			return false
		}
		return true
	})
	h.s.add(node, r)
	return nil
}
