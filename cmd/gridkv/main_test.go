package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	started := n.waitLog(t, "gridkv started", 60*time.Second)
	n.respAddr, _ = started["resp_addr"].(string)
	n.adminAddr, _ = started["admin_addr"].(string)
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
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { <-n.logDone; done <- n.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		n.cmd.Process.Kill()
		<-done
		t.Fatal("the process did not stop within 60s of SIGTERM")
	}
	return n.cmd.ProcessState.ExitCode()
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
