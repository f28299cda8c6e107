package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gridkv/gridkv/internal/freeport"
	"github.com/gridkv/gridkv/internal/procctl"
	"github.com/gridkv/gridkv/internal/testhook"
)

// BuildProcNode builds the suite's node program (tests/procnode) into dir
// and returns its path.
func BuildProcNode(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "procnode")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/gridkv/gridkv/tests/procnode")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("tests: building procnode: %w\n%s", err, out)
	}
	return bin, nil
}

// ProcCluster is N GridKV nodes, each an OS process running procnode on
// loopback, driven through its control interface (internal/procctl). The
// nemesis kills them (SIGKILL), pauses them (SIGSTOP, SIGCONT) and cuts
// their links at each process's own fault seam.
//
// Threading: the clients may call Up, Status, Converged, Problems and the
// nodeSet methods concurrently with anything; Kill, Restart, Pause, Resume,
// Partition, Heal and Close are called by one goroutine at a time (the
// nemesis's, then the run's).
type ProcCluster struct {
	Nodes []*ProcNode

	bin, dir  string
	flags     []string // every node's extra flags (negative controls)
	transport *http.Transport
	wg        sync.WaitGroup // one waiter per process started

	mu struct {
		sync.Mutex
		problems []string // processes that died on their own, failed restarts
	}
}

// ProcNode is one node of a ProcCluster: the same NodeID and addresses
// over its incarnations (a restart is a new process).
type ProcNode struct {
	Name   string
	index  int
	client *procctl.Client

	mu struct {
		sync.Mutex
		addrs  procctl.Addrs
		proc   *process // nil while killed
		paused bool
		starts int
	}
}

// process is one incarnation: its waiter closes exited once the process
// is reaped.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	killed bool // by the harness, so its exit is no problem; guarded by its node's mu
}

// ProcStartTimeout bounds how long a node process may take to open and
// write its ready file; ProcReadyTimeout, how long a cluster (or a node
// restarted into it) may take to be ready. Generous: the machine may be
// loaded.
const (
	ProcStartTimeout = 30 * time.Second
	ProcReadyTimeout = 60 * time.Second
)

// StartProcCluster starts n node processes of bin, logging to files in
// dir (node name + ".log"), the first bootstrapping and the others joining
// it, with flags added to each one's command line; it waits until every
// node is ready. Close reaps them all, on errors too.
func StartProcCluster(ctx context.Context, bin, dir string, n int, seed uint64, flags []string) (*ProcCluster, error) {
	pc := &ProcCluster{bin: bin, dir: dir, flags: flags, transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for i := range n {
		node := &ProcNode{Name: fmt.Sprintf("n%d", i), index: i}
		// Ports from outside the ephemeral range: nothing else binds them
		// while the node is down before it restarts on them.
		addrs, err := freeport.Addrs(3)
		if err != nil {
			pc.Close()
			return nil, err
		}
		node.mu.addrs = procctl.Addrs{Control: addrs[0], Addr: addrs[1], GossipAddr: addrs[2]}
		pc.Nodes = append(pc.Nodes, node)
		var seeds []string
		if i > 0 {
			seeds = []string{pc.Nodes[0].addrs().GossipAddr}
		}
		if err := pc.start(ctx, node, seeds, seed+uint64(i)); err != nil {
			pc.Close()
			return nil, err
		}
	}
	if err := pc.WaitReady(ctx, ProcReadyTimeout); err != nil {
		pc.Close()
		return nil, err
	}
	return pc, nil
}

func (n *ProcNode) addrs() procctl.Addrs {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.addrs
}

// Up reports whether n runs (paused included): started and not killed.
func (n *ProcNode) Up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.proc != nil
}

// start starts an incarnation of n on its addresses, joining through
// seeds, and waits for its ready file.
func (pc *ProcCluster) start(ctx context.Context, n *ProcNode, seeds []string, faultSeed uint64) error {
	a := n.addrs()
	readyFile := filepath.Join(pc.dir, n.Name+".json")
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	args := append([]string{"-id", n.Name, "-bind", a.Addr, "-gossip", a.GossipAddr, "-control", a.Control,
		"-ready-file", readyFile, "-fault-seed", fmt.Sprint(faultSeed), "-seeds", strings.Join(seeds, ",")}, pc.flags...)
	logf, err := os.OpenFile(filepath.Join(pc.dir, n.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	n.mu.Lock()
	n.mu.starts++
	fmt.Fprintf(logf, "=== procnode %s, start %d: %s\n", n.Name, n.mu.starts, strings.Join(args, " "))
	n.mu.Unlock()
	// The node's stdin is a pipe whose other end only this process holds:
	// if the driver dies (a test binary's time-out), the node sees EOF and
	// exits (-exit-on-eof) rather than outlive it.
	stdin, parent, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(pc.bin, append([]string{"-exit-on-eof"}, args...)...)
	cmd.Stdin, cmd.Stderr = stdin, logf
	err = cmd.Start()
	stdin.Close() // the child's copy stays open
	if err != nil {
		parent.Close()
		return fmt.Errorf("tests: start %s: %w", n.Name, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	pc.wg.Add(1)
	go func() {
		defer pc.wg.Done()
		err := cmd.Wait()
		parent.Close()
		n.mu.Lock()
		killed := p.killed
		n.mu.Unlock()
		if !killed {
			pc.problem(fmt.Sprintf("%s exited on its own: %v (log: %s)", n.Name, err, filepath.Join(pc.dir, n.Name+".log")))
		}
		close(p.exited)
	}()

	// n is Up (the clients' to use) once it serves: after its ready file.
	var got procctl.Addrs
	wait, cancel := context.WithTimeout(ctx, ProcStartTimeout)
	defer cancel()
	poll(wait, 10*time.Millisecond, func() bool {
		select {
		case <-p.exited:
			return true
		default:
		}
		b, err := os.ReadFile(readyFile)
		return err == nil && json.Unmarshal(b, &got) == nil
	})
	if got.Control == "" {
		what := fmt.Sprintf("wrote no ready file within %v", ProcStartTimeout)
		select {
		case <-p.exited:
			what = "exited before it was ready"
		default:
		}
		pc.kill(n, p)
		return fmt.Errorf("tests: %s %s: %s", n.Name, what, logTail(filepath.Join(pc.dir, n.Name+".log")))
	}
	n.mu.Lock()
	n.mu.addrs, n.mu.proc = got, p
	n.mu.Unlock()
	if n.client == nil {
		n.client = procctl.NewClient(got.Control, pc.transport)
	}
	return nil
}

// logTail is the end of a node's log, for errors.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

func (pc *ProcCluster) problem(p string) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.mu.problems = append(pc.mu.problems, p)
}

// Problems lists what went wrong with the processes: one that exited on
// its own, a restart that failed.
func (pc *ProcCluster) Problems() []string {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return append([]string(nil), pc.mu.problems...)
}

// WaitReady polls every running node's status until each says it is
// ready (every range with a leader and its replicas), within timeout.
func (pc *ProcCluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	ready := false
	poll(ctx, 50*time.Millisecond, func() bool {
		last = nil
		for _, n := range pc.Nodes {
			if !n.Up() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second+procCallTimeout)
			_, err := n.client.Status(sctx, 2*time.Second)
			cancel()
			if err != nil {
				last = err
				return false
			}
		}
		ready = true
		return true
	})
	if !ready {
		return fmt.Errorf("tests: process cluster not ready within %v: %v", timeout, last)
	}
	return nil
}

// Kill kills n's process with SIGKILL and reaps it; a paused process
// too. A no-op if n is not running.
func (pc *ProcCluster) Kill(n *ProcNode) {
	n.mu.Lock()
	p := n.mu.proc
	n.mu.Unlock()
	if p != nil {
		pc.kill(n, p)
	}
}

// kill kills incarnation p of n and reaps it.
func (pc *ProcCluster) kill(n *ProcNode, p *process) {
	n.mu.Lock()
	if n.mu.proc == p {
		n.mu.proc = nil
	}
	p.killed = true
	n.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGKILL) // fails only if it is gone already
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	<-p.exited
	// A kept-alive connection to the dead control port would fail the
	// next request to the restarted node before it reached it.
	pc.transport.CloseIdleConnections()
}

// Restart starts killed node n again on its old addresses under its
// NodeID, joining through every running node: a new incarnation, empty.
// It waits for the process to open, not for the cluster to be ready.
func (pc *ProcCluster) Restart(ctx context.Context, n *ProcNode) error {
	if n.Up() {
		return fmt.Errorf("tests: %s is running", n.Name)
	}
	var seeds []string
	for _, o := range pc.Nodes {
		if o != n && o.Up() {
			seeds = append(seeds, o.addrs().GossipAddr)
		}
	}
	n.mu.Lock()
	starts := n.mu.starts
	n.mu.Unlock()
	return pc.start(ctx, n, seeds, uint64(n.index)<<32|uint64(starts))
}

// Pause stops n's process (SIGSTOP); Resume continues it (SIGCONT).
func (pc *ProcCluster) Pause(n *ProcNode) error  { return pc.signal(n, syscall.SIGSTOP) }
func (pc *ProcCluster) Resume(n *ProcNode) error { return pc.signal(n, syscall.SIGCONT) }

func (pc *ProcCluster) signal(n *ProcNode, sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.proc == nil {
		return fmt.Errorf("tests: %s is not running", n.Name)
	}
	return n.mu.proc.cmd.Process.Signal(sig)
}

// Partition cuts every link between nodes in different sides, both
// directions, at each running node's fault seam; nodes in no side, and
// links within a side, are healed. A paused node answers only once it
// resumes (ctx bounds the wait).
func (pc *ProcCluster) Partition(ctx context.Context, sides ...[]*ProcNode) error {
	cut := map[*ProcNode][]string{}
	for i, side := range sides {
		for j, other := range sides {
			if i == j {
				continue
			}
			for _, a := range side {
				for _, b := range other {
					ba := b.addrs()
					cut[a] = append(cut[a], ba.Addr, ba.GossipAddr)
				}
			}
		}
	}
	var errs []error
	for _, n := range pc.Nodes {
		if n.Up() {
			if err := n.client.Cut(ctx, cut[n]); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Heal removes every cut.
func (pc *ProcCluster) Heal(ctx context.Context) error { return pc.Partition(ctx) }

// Status asks node n for its status.
func (pc *ProcCluster) Status(ctx context.Context, n *ProcNode) (procctl.Status, error) {
	return n.client.Status(ctx, 0)
}

// Converged is Cluster.Converged over the running nodes: for every
// range, each voter in its leader's configuration holds exactly the
// leader's state.
func (pc *ProcCluster) Converged() (bool, string) {
	var reps []testhook.Replica
	for _, n := range pc.Nodes {
		if !n.Up() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), procCallTimeout)
		r, err := n.client.Replicas(ctx)
		cancel()
		if err != nil {
			return false, fmt.Sprintf("%s: %v", n.Name, err)
		}
		reps = append(reps, r...)
	}
	return converged(reps)
}

// Close kills every process (SIGCONT and SIGKILL, paused ones included),
// reaps them and closes the idle control connections.
func (pc *ProcCluster) Close() {
	for _, n := range pc.Nodes {
		pc.Kill(n)
	}
	pc.wg.Wait()
	pc.transport.CloseIdleConnections()
}

// The nodeSet the clients and the final phase use.

func (pc *ProcCluster) size() int         { return len(pc.Nodes) }
func (pc *ProcCluster) name(i int) string { return pc.Nodes[i].Name }
func (pc *ProcCluster) store(i int) (kvStore, bool) {
	n := pc.Nodes[i]
	return procStore{n.client}, n.Up()
}

// procStore is a kvStore on a node process.
type procStore struct{ c *procctl.Client }

var _ kvStore = procStore{}

func (s procStore) Get(ctx context.Context, key string, mode ReadMode, replicas int) ([]byte, error) {
	op := procctl.Op{Kind: "get", Key: key, Quorum: mode.quorum(replicas)}
	switch mode {
	case ReadIndex:
		op.Read = "readindex"
	case ReadStale:
		op.Read = "stale"
	}
	res, err := s.c.Do(ctx, op)
	return res.Value, err
}

func (s procStore) Set(ctx context.Context, key string, value []byte) error {
	_, err := s.c.Do(ctx, procctl.Op{Kind: "set", Key: key, Value: value})
	return err
}

func (s procStore) Delete(ctx context.Context, key string) error {
	_, err := s.c.Do(ctx, procctl.Op{Kind: "delete", Key: key})
	return err
}

func (s procStore) CompareAndSwap(ctx context.Context, key string, old, new []byte) (bool, error) {
	res, err := s.c.Do(ctx, procctl.Op{Kind: "cas", Key: key, Old: old, Value: new})
	return res.Swapped, err
}

func (s procStore) CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	res, err := s.c.Do(ctx, procctl.Op{Kind: "cad", Key: key, Old: old})
	return res.Swapped, err
}

func (s procStore) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	res, err := s.c.Do(ctx, procctl.Op{Kind: "incr", Key: key, Delta: delta})
	return res.Sum, err
}
