package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/gridkv/gridkv/internal/testutil"
)

var bin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// binary builds the gridkv program once for the package's tests.
func binary(t *testing.T) string {
	t.Helper()
	bin.once.Do(func() {
		if bin.dir, bin.err = os.MkdirTemp("", "gridkv-bin"); bin.err != nil {
			return
		}
		bin.path = filepath.Join(bin.dir, "gridkv")
		out, err := exec.Command("go", "build", "-o", bin.path, ".").CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	return bin.path
}

// node is a running gridkv process.
type node struct {
	cmd       *exec.Cmd
	respAddr  string
	adminAddr string
	lines     chan map[string]any // its JSON log lines
	logDone   chan struct{}
}

// startNode runs the binary with args (and -log-format json) and waits
// for its start log line, which says its addresses. The process is killed
// when the test ends if it still runs.
func startNode(t *testing.T, env []string, args ...string) *node {
	t.Helper()
	n := startProcess(t, env, args...)
	started := n.waitLog(t, "gridkv started", 60*time.Second)
	n.respAddr, _ = started["resp_addr"].(string)
	n.adminAddr, _ = started["admin_addr"].(string)
	return n
}

// startProcess runs the binary with args (and -log-format json), killed
// when the test ends if it still runs.
func startProcess(t *testing.T, env []string, args ...string) *node {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"-log-format", "json"}, args...)...)
	// The program refuses GRIDKV_ variables it does not know, such as the
	// test knobs (GRIDKV_REQUIRE_REDIS_TOOLS): pass none of ours on.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GRIDKV_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{cmd: cmd, lines: make(chan map[string]any, 1000), logDone: make(chan struct{})}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		defer close(n.logDone)
		defer close(n.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				line = map[string]any{"msg": sc.Text()}
			}
			select {
			case n.lines <- line:
			default: // nobody reads this far: drop
			}
		}
	}()
	return n
}

// waitLog waits for a log line with message msg.
func (n *node) waitLog(t *testing.T, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-n.lines:
			if !ok {
				t.Fatalf("the process ended before logging %q", msg)
			}
			if line["msg"] == msg {
				return line
			}
		case <-deadline.C:
			t.Fatalf("no %q log line within %v", msg, within)
		}
	}
}

// stop sends SIGTERM and returns the exit code.
func (n *node) stop(t *testing.T) int {
	t.Helper()
	n.signal(t, syscall.SIGTERM)
	return n.wait(t, 60*time.Second).ExitCode()
}

func (n *node) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the process to end, killing it and failing the test if
// it has not within the given time.
func (n *node) wait(t *testing.T, within time.Duration) *os.ProcessState {
	t.Helper()
	done := make(chan error, 1)
	go func() { <-n.logDone; done <- n.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(within):
		n.cmd.Process.Kill()
		<-done
		t.Fatalf("the process did not end within %v", within)
	}
	return n.cmd.ProcessState
}

// The built program: one node configured through flags and the
// environment serves RESP and the admin endpoint, and SIGTERM stops it
// with exit status 0.
func TestBinary(t *testing.T) {
	n := startNode(t, []string{"GRIDKV_TIMING=local", "GRIDKV_RANGES=64", "GRIDKV_NODE_ID=env-node"},
		"-resp-addr", "127.0.0.1:0", "-node-id", "b1", "-request-timeout", "3s")
	n.waitLog(t, "gridkv ready", 60*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: n.respAddr, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("GET = %q, %v", v, err)
	}
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil || !strings.Contains(info, "gridkv_node_id:b1\r\n") || !strings.Contains(info, "ranges:64\r\n") {
		t.Errorf("INFO (flag over env for the node id, env for the ranges): %q, %v", info, err)
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	for _, path := range []string{"/healthz", "/readyz", "/status", "/metrics", "/debug/pprof/"} {
		resp, err := hc.Get("http://" + n.adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}

	redisTools(t, n.respAddr)

	rdb.Close()
	if code := n.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
}

// redisTools runs redis-cli and redis-benchmark against addr when they
// are installed; when they are not, the test is skipped unless
// GRIDKV_REQUIRE_REDIS_TOOLS is set (CI sets it).
func redisTools(t *testing.T, addr string) {
	t.Helper()
	cli, err1 := exec.LookPath("redis-cli")
	bench, err2 := exec.LookPath("redis-benchmark")
	if err1 != nil || err2 != nil {
		if os.Getenv("GRIDKV_REQUIRE_REDIS_TOOLS") != "" {
			t.Fatalf("GRIDKV_REQUIRE_REDIS_TOOLS is set but redis-cli or redis-benchmark is missing: %v %v", err1, err2)
		}
		t.Log("redis-cli or redis-benchmark not installed: skipping that part (apt-get install redis-tools)")
		return
	}
	host, port, _ := strings.Cut(addr, ":")
	run := func(name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	if out := run(cli, "SET", "greeting", "hello"); out != "OK\n" {
		t.Errorf("redis-cli SET: %q", out)
	}
	if out := run(cli, "GET", "greeting"); out != "hello\n" {
		t.Errorf("redis-cli GET: %q", out)
	}
	if out := run(cli, "INCRBY", "visits", "5"); out != "5\n" {
		t.Errorf("redis-cli INCRBY: %q", out)
	}
	if out := run(cli, "CAS", "greeting", "hello", "hi"); out != "1\n" {
		t.Errorf("redis-cli CAS: %q", out)
	}
	if out := run(cli, "--scan", "--pattern", "greet*"); out != "greeting\n" {
		t.Errorf("redis-cli --scan: %q", out)
	}
	if out := run(cli, "PING"); out != "PONG\n" {
		t.Errorf("redis-cli PING: %q", out)
	}
	out := run(bench, "-t", "set,get", "-n", "2000", "-c", "5", "-q")
	for _, want := range []string{"SET: ", "GET: ", "requests per second"} {
		if !strings.Contains(out, want) {
			t.Errorf("redis-benchmark output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ERR") || strings.Contains(out, "WARNING") {
		t.Errorf("redis-benchmark complained:\n%s", out)
	}
}

// A signal while the node is still joining ends the join: exit status 0
// and an info line, not a failure.
func TestSignalWhileJoining(t *testing.T) {
	addrs := testutil.FreeAddrs(t, 2) // the RESP port, and a seed nobody listens on
	respAddr := addrs[0]
	n := startProcess(t, nil, "-resp-addr", respAddr, "-seeds", addrs[1], "-join-timeout", "2m", "-timing", "local")
	// The listeners open before the join starts (and after the signal
	// handler is set): once the RESP port takes connections, the node is
	// joining.
	testutil.Eventually(t, 30*time.Second, "the RESP port listens", func() bool {
		c, err := net.Dial("tcp", respAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	n.signal(t, syscall.SIGTERM)
	n.waitLog(t, "gridkv stopped before joining", 30*time.Second)
	if code := n.wait(t, 30*time.Second).ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM while joining, want 0", code)
	}
}

// While the node stops, /readyz says 503 and /metrics and /status still
// serve; a second SIGTERM kills a stop that takes too long. Here the stop
// waits on a client that does not read its replies (up to the request
// timeout and 5s).
func TestSecondSignal(t *testing.T) {
	n := startNode(t, []string{"GRIDKV_TIMING=local"}, "-resp-addr", "127.0.0.1:0", "-request-timeout", "60s")
	n.waitLog(t, "gridkv ready", 60*time.Second)
	c, err := net.Dial("tcp", n.respAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	value := strings.Repeat("v", 256<<10)
	fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n", len(value), value)
	rd := bufio.NewReader(c)
	if line, err := rd.ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("SET: %q, %v", line, err)
	}
	// 64 GETs of 256 KiB: 16 MiB of replies, more than the sockets
	// buffer. Read the start, so that the commands have run and the
	// server is writing; then read no more: its write blocks.
	c.Write([]byte(strings.Repeat("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n", 64)))
	if _, err := io.ReadFull(rd, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}

	n.signal(t, syscall.SIGTERM)
	n.waitLog(t, "gridkv stopping", 30*time.Second)
	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	for path, want := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/status": http.StatusOK, "/metrics": http.StatusOK} {
		resp, err := hc.Get("http://" + n.adminAddr + path)
		if err != nil {
			t.Fatalf("%s while stopping: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s while stopping: %s, want %d", path, resp.Status, want)
		}
	}

	n.signal(t, syscall.SIGTERM)
	st := n.wait(t, 15*time.Second)
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("after a second SIGTERM: %v, want killed by it", st)
	}
}
