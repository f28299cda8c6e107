// Command idletest measures what an idle GridKV cluster costs its host:
// it opens -nodes nodes in this process with the default Config (formed
// together with BootstrapExpect, so the cluster has GroupsPerNode x nodes
// replica groups), waits until they are ready, lets them settle, then
// reports the CPU the process used over -window (in cores), its
// goroutines and its heap.
//
//	go run ./idletest                       # 3 nodes, default config
//	go run ./idletest -groups-per-node 4    # the same with 4 groups per node
//	go run ./idletest -cpuprofile idle.out  # and where the idle CPU goes
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gridkv/gridkv/benchmarks/internal/cluster"
	"github.com/gridkv/gridkv/gridkv"
)

func main() {
	nodes := flag.Int("nodes", 3, "nodes in this process")
	perNode := flag.Int("groups-per-node", 0, "Config.GroupsPerNode (0: the default)")
	settle := flag.Duration("settle", 10*time.Second, "wait this long after WaitReady before measuring")
	window := flag.Duration("window", 20*time.Second, "measure over this long")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the window here")
	flag.Parse()
	if err := run(*nodes, *perNode, *settle, *window, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "idletest:", err)
		os.Exit(1)
	}
}

func run(nodes, perNode int, settle, window time.Duration, cpuprofile string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dbs, err := cluster.Form(ctx, nodes, gridkv.Config{GroupsPerNode: perNode})
	defer func() {
		for _, db := range dbs {
			_ = db.Close()
		}
	}()
	if err != nil {
		return err
	}
	time.Sleep(settle)
	runtime.GC()
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	cpu0, io0, t0 := cpuTime(), procCounts(), time.Now()
	time.Sleep(window)
	cores := float64(cpuTime()-cpu0) / float64(time.Since(t0))
	io1, secs := procCounts(), time.Since(t0).Seconds()
	if cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	groups := 0 // each group has one leader
	for _, m := range dbs[0].Members() {
		groups += m.Leads
	}
	fmt.Printf("nodes=%d groups-per-node=%d groups-led=%d settle=%v window=%v\n", nodes, perNode, groups, settle, window)
	fmt.Printf("cpu %.4f cores, goroutines %d, HeapInuse %.1f MiB\n",
		cores, runtime.NumGoroutine(), float64(ms.HeapInuse)/(1<<20))
	// Counts, unlike CPU time, do not swing with the machine's load.
	fmt.Printf("per second: %.0f write syscalls, %.0f read syscalls\n",
		float64(io1.syscw-io0.syscw)/secs, float64(io1.syscr-io0.syscr)/secs)
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// counts are the process's syscall counters.
type counts struct{ syscr, syscw int64 }

// procCounts reads /proc/self/io (Linux; zeros elsewhere).
func procCounts() counts {
	var c counts
	read := func(path string, fields map[string]*int64) {
		b, err := os.ReadFile(path)
		if err != nil {
			return
		}
		for _, line := range strings.Split(string(b), "\n") {
			name, val, ok := strings.Cut(line, ":")
			if p := fields[name]; ok && p != nil {
				n, _ := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
				*p += n
			}
		}
	}
	read("/proc/self/io", map[string]*int64{"syscr": &c.syscr, "syscw": &c.syscw})
	return c
}
