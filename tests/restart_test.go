package tests

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// restartReadyBound is how soon after a node of five is killed and
// restarted on its old address every node's WaitReady must return: the
// old incarnation is replaced in each of its ranges. Measured at about
// 1-3 s on the 2-core machine (see the closing note of the restarts
// issue); the bound leaves room for a loaded CI machine.
const restartReadyBound = 30 * time.Second

// Kill -9 and restart on the same BindAddr, GossipAddr and NodeID, in a
// cluster of five under write load: every node is ready again within
// restartReadyBound, and no acknowledged write is lost.
// GRIDKV_RESTARTS sets how many restarts (default 3); -v logs each time.
func TestRestartSameAddressBecomesReady(t *testing.T) {
	restarts := 3
	if s := os.Getenv("GRIDKV_RESTARTS"); s != "" {
		restarts, _ = strconv.Atoi(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 5, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var mu sync.Mutex
	acked := map[string]string{}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				n := c.Nodes[(w+i)%len(c.Nodes)]
				if n.Crashed() {
					continue
				}
				key, val := fmt.Sprintf("w%d-%d", w, i%50), fmt.Sprint(i)
				wctx, wcancel := context.WithTimeout(ctx, time.Second)
				err := n.DB().Set(wctx, key, []byte(val))
				wcancel()
				mu.Lock()
				if err == nil {
					acked[key] = val
				} else {
					delete(acked, key) // outcome unknown or refused: no claim
				}
				mu.Unlock()
			}
		}()
	}

	var took []time.Duration
	for i := 0; i < restarts; i++ {
		n := c.Nodes[(i*2+1)%len(c.Nodes)]
		began := time.Now()
		c.Crash(n)
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, restartReadyBound)
		for _, o := range c.Nodes {
			if err := o.DB().WaitReady(rctx); err != nil {
				rcancel()
				t.Log(c.Describe())
				t.Fatalf("restart %d of %s: %s not ready within %v: %v", i, n.Name, o.Name, restartReadyBound, err)
			}
		}
		rcancel()
		took = append(took, time.Since(began))
		t.Logf("restart %d of %s: every node ready after %v", i, n.Name, took[i].Round(time.Millisecond))
	}
	stop.Store(true)
	wg.Wait()
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("ready after restart: median %v, max %v over %d restarts",
			took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(took))
	}

	mu.Lock()
	defer mu.Unlock()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for key, val := range acked {
		db := c.Nodes[len(key)%len(c.Nodes)].DB()
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := db.Get(rctx, key)
		rcancel()
		if err != nil || string(v) != val {
			t.Fatalf("acknowledged %s=%s reads %q, %v", key, val, v, err)
		}
	}
}
