package respserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// openDB opens a ready single-node DB, closed when the test ends.
func openDB(t *testing.T, cfg gridkv.Config) *gridkv.DB {
	t.Helper()
	cfg.Timing, cfg.Logger = gridkv.LocalTiming(), quiet
	db, err := gridkv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return db
}

// serve starts a Server for db on a loopback port; it is shut down when
// the test ends (before the DB closes: cleanups run last-in first-out).
func serve(t *testing.T, db *gridkv.DB, opts Options) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = quiet
	srv := New(db, opts)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return srv, ln.Addr().String()
}

// client is a go-redis client of addr that never retries (a reply is the
// server's first answer), closed when the test ends.
func client(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, PoolSize: 4})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantErr checks that err is a Redis error starting with prefix.
func wantErr(t *testing.T, what string, err error, prefix string) {
	t.Helper()
	if err == nil || !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("%s: error %v, want one starting with %q", what, err, prefix)
	}
}

func TestCommands(t *testing.T) {
	db := openDB(t, gridkv.Config{MaxValueBytes: 1024})
	_, addr := serve(t, db, Options{})
	rdb := client(t, addr)
	ctx := ctxT(t)
	must := func(what string, got, want any, err error) {
		t.Helper()
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, %v; want %v", what, got, err, want)
		}
	}

	v, err := rdb.Ping(ctx).Result()
	must("PING", v, "PONG", err)
	v, err = rdb.Do(ctx, "PING", "hi").Text()
	must("PING hi", v, "hi", err)
	v, err = rdb.Echo(ctx, "hello").Result()
	must("ECHO", v, "hello", err)
	v, err = rdb.Do(ctx, "SELECT", "0").Text()
	must("SELECT 0", v, "OK", err)
	wantErr(t, "SELECT 1", rdb.Do(ctx, "SELECT", "1").Err(), "ERR DB index")

	// GET, SET and its options.
	_, err = rdb.Get(ctx, "k").Result()
	must("GET absent is nil", err, redis.Nil, nil)
	v, err = rdb.Set(ctx, "k", "v1", 0).Result()
	must("SET", v, "OK", err)
	v, err = rdb.Get(ctx, "k").Result()
	must("GET", v, "v1", err)
	ok, err := rdb.SetNX(ctx, "k", "v2", 0).Result()
	must("SET NX present", ok, false, err)
	ok, err = rdb.SetNX(ctx, "nx", "v", 0).Result()
	must("SET NX absent", ok, true, err)
	ok, err = rdb.SetXX(ctx, "k", "v3", 0).Result()
	must("SET XX present", ok, true, err)
	ok, err = rdb.SetXX(ctx, "xx", "v", 0).Result()
	must("SET XX absent", ok, false, err)
	n, err := rdb.Exists(ctx, "xx").Result()
	must("SET XX absent wrote nothing", n, 0, err)
	v, err = rdb.Get(ctx, "k").Result()
	must("GET after XX", v, "v3", err)
	v, err = rdb.Set(ctx, "e", "v", 90*time.Second).Result() // EX 90
	must("SET EX", v, "OK", err)
	d, err := rdb.TTL(ctx, "e").Result()
	must("TTL after SET EX", d, 90*time.Second, err)
	v, err = rdb.Set(ctx, "p", "v", 1500*time.Millisecond).Result() // PX 1500
	must("SET PX", v, "OK", err)
	if d, err := rdb.PTTL(ctx, "p").Result(); err != nil || d <= 0 || d > 1500*time.Millisecond {
		t.Errorf("PTTL after SET PX = %v, %v", d, err)
	}
	v, err = rdb.Do(ctx, "SET", "nxex", "v", "NX", "EX", "30").Text()
	must("SET NX EX", v, "OK", err)
	d, err = rdb.TTL(ctx, "nxex").Result()
	must("TTL after SET NX EX", d, 30*time.Second, err)
	v, err = rdb.Set(ctx, "e", "v2", 0).Result()
	must("SET without EX", v, "OK", err)
	d, err = rdb.TTL(ctx, "e").Result()
	must("SET without EX drops the TTL", d, time.Duration(-1), err)
	wantErr(t, "SET NX XX", rdb.Do(ctx, "SET", "k", "v", "NX", "XX").Err(), "ERR syntax error")
	wantErr(t, "SET KEEPTTL", rdb.Do(ctx, "SET", "k", "v", "KEEPTTL").Err(), "ERR syntax error")
	wantErr(t, "SET EX x", rdb.Do(ctx, "SET", "k", "v", "EX", "x").Err(), "ERR value is not an integer")
	wantErr(t, "SET EX 0", rdb.Do(ctx, "SET", "k", "v", "EX", "0").Err(), "ERR invalid expire time")
	wantErr(t, "SET EX", rdb.Do(ctx, "SET", "k", "v", "EX").Err(), "ERR syntax error")
	wantErr(t, "SET too large", rdb.Set(ctx, "big", strings.Repeat("x", 1025), 0).Err(), "ERR gridkv: invalid argument")
	wantErr(t, "GET empty key", rdb.Get(ctx, "").Err(), "ERR gridkv: invalid argument")

	// EXISTS and DEL count.
	n, err = rdb.Exists(ctx, "k", "nx", "k", "absent").Result()
	must("EXISTS", n, 3, err)
	n, err = rdb.Del(ctx, "k", "absent", "nx", "k").Result()
	must("DEL", n, 2, err)
	n, err = rdb.Del(ctx, "k").Result()
	must("DEL again", n, 0, err)
	rdb.Set(ctx, "empty", "", 0)
	n, err = rdb.Del(ctx, "empty").Result()
	must("DEL of an empty value", n, 1, err)

	// Counters.
	i, err := rdb.Incr(ctx, "c").Result()
	must("INCR", i, 1, err)
	i, err = rdb.IncrBy(ctx, "c", 41).Result()
	must("INCRBY", i, 42, err)
	i, err = rdb.Decr(ctx, "c").Result()
	must("DECR", i, 41, err)
	i, err = rdb.DecrBy(ctx, "c", 50).Result()
	must("DECRBY", i, -9, err)
	v, err = rdb.Get(ctx, "c").Result()
	must("GET counter", v, "-9", err)
	rdb.Set(ctx, "s", "abc", 0)
	wantErr(t, "INCR of text", rdb.Incr(ctx, "s").Err(), "ERR gridkv: invalid argument")
	wantErr(t, "INCRBY x", rdb.Do(ctx, "INCRBY", "c", "x").Err(), "ERR value is not an integer")
	wantErr(t, "DECRBY min", rdb.Do(ctx, "DECRBY", "c", "-9223372036854775808").Err(), "ERR decrement would overflow")

	// Expiry.
	ok, err = rdb.Expire(ctx, "c", time.Minute).Result()
	must("EXPIRE", ok, true, err)
	d, err = rdb.TTL(ctx, "c").Result()
	must("TTL", d, time.Minute, err)
	if d, err := rdb.PTTL(ctx, "c").Result(); err != nil || d <= 59*time.Second || d > time.Minute {
		t.Errorf("PTTL = %v, %v", d, err)
	}
	ok, err = rdb.Expire(ctx, "absent", time.Minute).Result()
	must("EXPIRE absent", ok, false, err)
	d, err = rdb.TTL(ctx, "absent").Result()
	must("TTL absent", d, time.Duration(-2), err)
	d, err = rdb.PTTL(ctx, "s").Result()
	must("PTTL no expiry", d, time.Duration(-1), err)
	n, err = rdb.Do(ctx, "EXPIRE", "s", "0").Int64()
	must("EXPIRE 0 deletes", n, 1, err)
	n, err = rdb.Exists(ctx, "s").Result()
	must("EXISTS after EXPIRE 0", n, 0, err)
	wantErr(t, "EXPIRE x", rdb.Do(ctx, "EXPIRE", "c", "x").Err(), "ERR value is not an integer")

	// CAS and CAD.
	rdb.Set(ctx, "lock", "a", 0)
	n, err = rdb.Do(ctx, "CAS", "lock", "b", "c").Int64()
	must("CAS wrong old", n, 0, err)
	n, err = rdb.Do(ctx, "CAS", "lock", "a", "b").Int64()
	must("CAS", n, 1, err)
	v, err = rdb.Get(ctx, "lock").Result()
	must("GET after CAS", v, "b", err)
	n, err = rdb.Do(ctx, "CAD", "lock", "a").Int64()
	must("CAD wrong value", n, 0, err)
	n, err = rdb.Do(ctx, "CAD", "lock", "b").Int64()
	must("CAD", n, 1, err)
	n, err = rdb.Exists(ctx, "lock").Result()
	must("EXISTS after CAD", n, 0, err)

	// Introspection and what clients send at start.
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil || !strings.HasPrefix(info, "# Server\r\n") || !strings.Contains(info, "gridkv_node_id:"+db.NodeID()+"\r\n") ||
		!strings.Contains(info, "members:1\r\n") || !strings.Contains(info, "role:leader\r\n") ||
		!strings.Contains(info, "groups_held:1\r\ngroups_led:1\r\nranges_held:1024\r\nranges_led:1024\r\n") {
		t.Errorf("INFO server = %q, %v", info, err)
	}
	if info, err := rdb.Info(ctx).Result(); err != nil || !strings.Contains(info, "# Clients\r\nconnected_clients:") {
		t.Errorf("INFO = %q, %v", info, err)
	}
	if r, err := rdb.Do(ctx, "COMMAND").Slice(); err != nil || len(r) != 0 {
		t.Errorf("COMMAND = %v, %v", r, err)
	}
	if r, err := rdb.Do(ctx, "COMMAND", "DOCS").Slice(); err != nil || len(r) != 0 {
		t.Errorf("COMMAND DOCS = %v, %v", r, err)
	}
	n, err = rdb.Do(ctx, "COMMAND", "COUNT").Int64()
	must("COMMAND COUNT", n, 0, err)
	cfg, err := rdb.ConfigGet(ctx, "save").Result()
	must("CONFIG GET save", cfg, map[string]string{"save": ""}, err)
	cfg, err = rdb.ConfigGet(ctx, "appendonly").Result()
	must("CONFIG GET appendonly", cfg, map[string]string{"appendonly": "no"}, err)
	cfg, err = rdb.ConfigGet(ctx, "maxmemory").Result()
	must("CONFIG GET other", cfg, map[string]string{}, err)
	wantErr(t, "CONFIG SET", rdb.ConfigSet(ctx, "save", "").Err(), "ERR CONFIG")

	// Errors of the protocol layer.
	wantErr(t, "GET arity", rdb.Do(ctx, "GET").Err(), "ERR wrong number of arguments for 'get' command")
	wantErr(t, "SET arity", rdb.Do(ctx, "set", "k").Err(), "ERR wrong number of arguments for 'set' command")
	wantErr(t, "CAS arity", rdb.Do(ctx, "CAS", "k", "a").Err(), "ERR wrong number of arguments for 'cas' command")
	wantErr(t, "unknown", rdb.Do(ctx, "HSET", "h", "f", "v").Err(), "ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v'")
	wantErr(t, "CLIENT unknown", rdb.Do(ctx, "CLIENT", "KILL", "x").Err(), "ERR unknown subcommand 'KILL'")
}

// CLIENT READMODE, SETNAME and GETNAME on one connection, and QUIT.
func TestClientCommands(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	_, addr := serve(t, db, Options{})
	rdb := client(t, addr)
	ctx := ctxT(t)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "t", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	cn := rdb.Conn()
	defer cn.Close()
	mode := func() string {
		t.Helper()
		m, err := cn.Do(ctx, "CLIENT", "READMODE").Text()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := mode(); m != "lease" {
		t.Errorf("default read mode %q", m)
	}
	for _, args := range [][]any{{"lease"}, {"readindex"}, {"stale"}, {"quorum", "1"}, {"QUORUM", "1"}} {
		if err := cn.Do(ctx, append([]any{"CLIENT", "READMODE"}, args...)...).Err(); err != nil {
			t.Fatalf("READMODE %v: %v", args, err)
		}
		if m, want := mode(), strings.ToLower(fmt.Sprint(args...)); m != strings.ReplaceAll(want, "quorum1", "quorum 1") {
			t.Errorf("READMODE %v reads back %q", args, m)
		}
		if v, err := cn.Get(ctx, "k").Result(); err != nil || v != "v" {
			t.Errorf("READMODE %v: GET = %q, %v", args, v, err)
		}
		if n, err := cn.Exists(ctx, "k", "absent").Result(); err != nil || n != 1 {
			t.Errorf("READMODE %v: EXISTS = %d, %v", args, n, err)
		}
		if d, err := cn.TTL(ctx, "t").Result(); err != nil || d <= 0 {
			t.Errorf("READMODE %v: TTL = %v, %v", args, d, err)
		}
		if keys, _, err := cn.Scan(ctx, 0, "*", 10).Result(); err != nil || len(keys) != 2 {
			t.Errorf("READMODE %v: SCAN = %v, %v", args, keys, err)
		}
	}
	// Quorum 4 is over ReplicaCount (3): the mode is taken, the reads
	// under it are the DB's ErrInvalid.
	if err := cn.Do(ctx, "CLIENT", "READMODE", "quorum", "4").Err(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "GET with quorum 4 > ReplicaCount", cn.Get(ctx, "k").Err(), "ERR gridkv: invalid argument")
	wantErr(t, "READMODE bogus", cn.Do(ctx, "CLIENT", "READMODE", "bogus").Err(), "ERR unknown read mode 'bogus'")
	wantErr(t, "READMODE quorum", cn.Do(ctx, "CLIENT", "READMODE", "quorum").Err(), "ERR syntax error")
	wantErr(t, "READMODE quorum 0", cn.Do(ctx, "CLIENT", "READMODE", "quorum", "0").Err(), "ERR quorum must be")
	wantErr(t, "READMODE stale x", cn.Do(ctx, "CLIENT", "READMODE", "stale", "x").Err(), "ERR syntax error")
	if m := mode(); m != "quorum 4" {
		t.Errorf("a refused READMODE changed the mode to %q", m)
	}
	// The mode is the connection's: another connection reads as lease.
	if m, err := rdb.Do(ctx, "CLIENT", "READMODE").Text(); err != nil || m != "lease" {
		t.Errorf("another connection's mode %q, %v", m, err)
	}

	if v, err := cn.ClientGetName(ctx).Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("GETNAME before SETNAME = %q, %v", v, err)
	}
	if err := cn.ClientSetName(ctx, "worker-1").Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := cn.ClientGetName(ctx).Result(); err != nil || v != "worker-1" {
		t.Errorf("GETNAME = %q, %v", v, err)
	}
	wantErr(t, "SETNAME with a space", cn.Do(ctx, "CLIENT", "SETNAME", "a b").Err(), "ERR Client names cannot")
	if err := cn.Do(ctx, "CLIENT", "SETINFO", "LIB-NAME", "x").Err(); err != nil {
		t.Errorf("SETINFO: %v", err)
	}

	// QUIT answers OK, then the server closes the connection.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprint(nc, "*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n")
	got, _ := io.ReadAll(nc)
	if string(got) != "+OK\r\n" {
		t.Errorf("QUIT then PING answered %q", got)
	}
}

// A pipeline's replies come back in order, and pipelines on many
// connections run at once.
func TestPipelining(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	_, addr := serve(t, db, Options{})
	rdb := client(t, addr)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pipe := rdb.Pipeline()
			var gets []*redis.StringCmd
			var incrs []*redis.IntCmd
			for i := range 50 {
				key := fmt.Sprintf("w%d:%d", w, i)
				pipe.Set(ctx, key, key, 0)
				gets = append(gets, pipe.Get(ctx, key))
				incrs = append(incrs, pipe.Incr(ctx, fmt.Sprintf("ctr%d", w)))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				errs <- err
				return
			}
			for i := range 50 {
				if v := gets[i].Val(); v != fmt.Sprintf("w%d:%d", w, i) {
					errs <- fmt.Errorf("pipelined GET %d = %q", i, v)
				}
				if n := incrs[i].Val(); n != int64(i+1) {
					errs <- fmt.Errorf("pipelined INCR %d = %d", i, n)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A raw pipeline in one write, inline commands included.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprint(nc, "*3\r\n$3\r\nSET\r\n$1\r\nr\r\n$1\r\n1\r\n*2\r\n$4\r\nINCR\r\n$1\r\nr\r\nGET r\r\n")
	rd := bufio.NewReader(nc)
	var got []string
	for range 4 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, line)
	}
	if want := []string{"+OK\r\n", ":2\r\n", "$1\r\n", "2\r\n"}; !slices.Equal(got, want) {
		t.Errorf("raw pipeline answered %q, want %q", got, want)
	}
}

func TestScan(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	_, addr := serve(t, db, Options{MaxCursors: 3})
	rdb := client(t, addr)
	ctx := ctxT(t)
	var want []string
	for i := range 25 {
		key := fmt.Sprintf("user:%02d", i)
		want = append(want, key)
		if err := rdb.Set(ctx, key, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Set(ctx, fmt.Sprintf("other:%02d", i), "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	var cursor uint64
	pages := 0
	for {
		keys, next, err := rdb.Scan(ctx, cursor, "user:*", 10).Result()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, keys...)
		pages++
		if next == 0 {
			break
		}
		if pages > 10 {
			t.Fatal("SCAN never ended")
		}
		cursor = next
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Errorf("SCAN MATCH user:* COUNT 10 gave %d pages: %v", pages, got)
	}
	// Every key, default COUNT, through go-redis's iterator.
	var all []string
	iter := rdb.Scan(ctx, 0, "", 0).Iterator()
	for iter.Next(ctx) {
		all = append(all, iter.Val())
	}
	if err := iter.Err(); err != nil || len(all) != 50 || !sort.StringsAreSorted(all) {
		t.Errorf("SCAN of every key: %d keys, sorted %v, %v", len(all), sort.StringsAreSorted(all), err)
	}
	// A cursor may be used again; newer ones push old ones out.
	_, first, err := rdb.Scan(ctx, 0, "user:*", 5).Result()
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := rdb.Scan(ctx, first, "user:*", 5).Result()
	b, _, err2 := rdb.Scan(ctx, first, "user:*", 5).Result()
	if err != nil || err2 != nil || !slices.Equal(a, want[5:10]) || !slices.Equal(a, b) {
		t.Errorf("cursor used twice: %v %v, %v %v", a, err, b, err2)
	}
	for range 3 {
		rdb.Scan(ctx, 0, "", 1)
	}
	wantErr(t, "dropped cursor", rdb.Scan(ctx, first, "", 5).Err(), "ERR invalid cursor")
	wantErr(t, "bad cursor", rdb.Do(ctx, "SCAN", "abc").Err(), "ERR invalid cursor")
	wantErr(t, "glob pattern", rdb.Scan(ctx, 0, "u?er:*", 5).Err(), "ERR MATCH supports prefix patterns only")
	wantErr(t, "exact pattern", rdb.Scan(ctx, 0, "user:01", 5).Err(), "ERR MATCH supports prefix patterns only")
	wantErr(t, "COUNT 0", rdb.Do(ctx, "SCAN", "0", "COUNT", "0").Err(), "ERR value is not an integer")
	wantErr(t, "TYPE", rdb.Do(ctx, "SCAN", "0", "TYPE", "string").Err(), "ERR syntax error")
	wantErr(t, "MATCH without pattern", rdb.Do(ctx, "SCAN", "0", "MATCH").Err(), "ERR syntax error")
}

// gridkv's errors map onto Redis-style prefixes.
func TestErrorReplies(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: key of 0 bytes", gridkv.ErrInvalid), "-ERR gridkv: invalid argument: key of 0 bytes\r\n"},
		{fmt.Errorf("%w: group 2 has no leader", gridkv.ErrUnavailable), "-TRYAGAIN gridkv: unavailable: group 2 has no leader\r\n"},
		{fmt.Errorf("%w: write outcome unknown: %w", gridkv.ErrTimeout, context.DeadlineExceeded),
			"-TIMEOUT outcome unknown: gridkv: timed out: write outcome unknown: context deadline exceeded\r\n"},
		{fmt.Errorf("%w: %w", gridkv.ErrTimeout, context.DeadlineExceeded), "-TIMEOUT gridkv: timed out: context deadline exceeded\r\n"},
		{fmt.Errorf("%w: group 1 holds 10 bytes", gridkv.ErrMemoryLimit), "-OOM gridkv: memory limit exceeded: group 1 holds 10 bytes\r\n"},
		{gridkv.ErrClosed, "-ERR gridkv: closed\r\n"},
		{errors.New("two\r\nlines"), "-ERR two  lines\r\n"},
	} {
		var buf bytes.Buffer
		c := &conn{wr: redcon.NewWriter(&buf)}
		writeErr(c, tc.err)
		c.wr.Flush()
		if buf.String() != tc.want {
			t.Errorf("%v: reply %q, want %q", tc.err, buf.String(), tc.want)
		}
	}
}

// Each command's context ends after RequestTimeout: with a timeout too
// short for anything, reads and writes answer TIMEOUT (the write not
// applied: its context had ended before it started).
func TestRequestTimeout(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	_, addr := serve(t, db, Options{RequestTimeout: time.Nanosecond})
	rdb := client(t, addr)
	ctx := ctxT(t)
	wantErr(t, "GET", rdb.Get(ctx, "k").Err(), "TIMEOUT gridkv: timed out")
	err := rdb.Set(ctx, "k", "v", 0).Err()
	wantErr(t, "SET", err, "TIMEOUT gridkv: timed out")
	if err != nil && strings.Contains(err.Error(), "outcome unknown") {
		t.Errorf("SET not started says %v", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Errorf("PING: %v", err)
	}
}

// Shutdown sends the replies of the commands read, closes idle
// connections, and returns once every goroutine has ended; Serve returns
// ErrServerClosed.
func TestShutdown(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(db, Options{Logger: quiet})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	testutil.Eventually(t, 5*time.Second, "two clients", func() bool { return srv.Clients() == 2 })
	// Many commands in one write: Shutdown comes while they run.
	var cmds strings.Builder
	for i := range 200 {
		fmt.Fprintf(&cmds, "*3\r\n$3\r\nSET\r\n$4\r\nk%03d\r\n$1\r\nv\r\n", i)
	}
	if _, err := busy.Write([]byte(cmds.String())); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(busy)
	first, err := rd.ReadString('\n') // the first pipeline read has run
	if err != nil || first != "+OK\r\n" {
		t.Fatalf("first reply %q, %v", first, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}
	// Every reply of what the server had read came; then EOF.
	rest, _ := io.ReadAll(rd)
	if s := string(rest); strings.Count(s, "+OK\r\n")*len("+OK\r\n") != len(s) {
		t.Errorf("after the first OK: %q", s)
	}
	if got, _ := io.ReadAll(idle); len(got) != 0 {
		t.Errorf("idle connection got %q", got)
	}
	if srv.Clients() != 0 {
		t.Errorf("%d clients after Shutdown", srv.Clients())
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("the listener still accepts")
	}
	if err := srv.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

// failingListener's Accept fails with err, fails times, then accepts from
// the Listener; with fails < 0 it fails for ever. It notes when each
// failure was returned, and signals failed (if set) without blocking.
type failingListener struct {
	net.Listener
	err    error
	failed chan struct{}
	mu     sync.Mutex
	fails  int
	at     []time.Time
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails != 0
	if l.fails > 0 {
		l.fails--
	}
	if fail {
		l.at = append(l.at, time.Now())
	}
	l.mu.Unlock()
	if fail {
		select {
		case l.failed <- struct{}{}:
		default:
		}
		return nil, l.err
	}
	return l.Listener.Accept()
}

// failures returns when each failing Accept returned, in order.
func (l *failingListener) failures() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.at)
}

var errEMFILE = &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.EMFILE)}

// A temporary accept error (EMFILE) is retried: the server goes on
// serving, and Shutdown still ends Serve with ErrServerClosed, also while
// it backs off. Any other accept error ends Serve with that error.
func TestAcceptErrors(t *testing.T) {
	db := openDB(t, gridkv.Config{})
	listen := func(err error, fails int) *failingListener {
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		return &failingListener{Listener: ln, err: err, fails: fails}
	}

	t.Run("temporary then fine", func(t *testing.T) {
		srv := New(db, Options{Logger: quiet})
		ln := listen(errEMFILE, 5)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		rdb := client(t, ln.Addr().String())
		if v, err := rdb.Ping(ctxT(t)).Result(); err != nil || v != "PONG" {
			t.Errorf("PING after 5 EMFILE: %q, %v", v, err)
		}
		rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})

	// Shutdown comes right after the 9th failure, whose back-off is the 1s
	// cap (5ms doubling: 5ms ... 640ms, then 1s). Serve must return before
	// that back-off ends: a back-off not cut short ends Serve 1s or more
	// after the failure it followed, however loaded the machine, and a
	// cut-short one fails the test only if Shutdown is that late.
	t.Run("temporary for ever", func(t *testing.T) {
		srv := New(db, Options{Logger: quiet})
		ln := listen(errEMFILE, -1)
		ln.failed = make(chan struct{}, 1)
		served := make(chan error, 1)
		var returned time.Time // set before served is sent on
		go func() {
			err := srv.Serve(ln)
			returned = time.Now()
			served <- err
		}()
		give := time.NewTimer(30 * time.Second)
		defer give.Stop()
		for len(ln.failures()) < 9 {
			select {
			case err := <-served:
				t.Fatalf("Serve returned %v on a temporary error", err)
			case <-ln.failed:
			case <-give.C:
				t.Fatalf("%d accept failures in 30s, want 9", len(ln.failures()))
			}
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		// The failure whose back-off ran when Shutdown began.
		var last time.Time
		for _, at := range ln.failures() {
			if at.Before(start) {
				last = at
			}
		}
		if d := returned.Sub(last); d >= time.Second {
			t.Errorf("Serve returned %v after the accept failure it was backing off from (Shutdown took %v): the 1s back-off was not cut short",
				d, returned.Sub(start))
		}
	})

	t.Run("permanent", func(t *testing.T) {
		srv := New(db, Options{Logger: quiet})
		defer srv.Shutdown(context.Background())
		bad := errors.New("listener broken")
		if err := srv.Serve(listen(bad, -1)); err != bad {
			t.Errorf("Serve returned %v, want %v", err, bad)
		}
	})
}

// The cursor table keeps the newest cursors within both bounds: count
// and bytes of keys; the newest stays whatever its size.
func TestCursorTableBounds(t *testing.T) {
	tab := newCursorTable(4, 1000)
	var ids []uint64
	for i := range 6 {
		ids = append(ids, tab.put(strings.Repeat(string(rune('a'+i)), 300)))
	}
	// 300 bytes each: three would be 900, four 1200: three remain.
	for i, id := range ids {
		after, ok := tab.get(id)
		if want := i >= 3; ok != want || ok && after != strings.Repeat(string(rune('a'+i)), 300) {
			t.Errorf("cursor %d: %v %.5q, want kept %v", i, ok, after, want)
		}
	}
	// Small keys: the count bound.
	for i := range 6 {
		ids = append(ids, tab.put(fmt.Sprint(i)))
	}
	kept := 0
	for _, id := range ids {
		if _, ok := tab.get(id); ok {
			kept++
		}
	}
	if kept != 4 {
		t.Errorf("%d cursors kept, want 4", kept)
	}
	// A key over the byte bound on its own is kept, alone.
	big := tab.put(strings.Repeat("z", 2000))
	if _, ok := tab.get(big); !ok {
		t.Error("the newest cursor was dropped")
	}
	if _, ok := tab.get(ids[len(ids)-1]); ok {
		t.Error("an older cursor was kept beside one over the byte bound")
	}
}

// COUNT over 10,000 is taken as 10,000.
func TestScanCountClamped(t *testing.T) {
	db := openDB(t, gridkv.Config{Ranges: 16})
	_, addr := serve(t, db, Options{})
	rdb := client(t, addr)
	ctx := ctxT(t)
	const n = maxScanCount + 5
	for start := 0; start < n; start += 1000 {
		pipe := rdb.Pipeline()
		for i := start; i < min(start+1000, n); i++ {
			pipe.Set(ctx, fmt.Sprintf("k%05d", i), "x", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	keys, next, err := rdb.Scan(ctx, 0, "", 1_000_000).Result()
	if err != nil || len(keys) != maxScanCount || next == 0 {
		t.Fatalf("SCAN 0 COUNT 1000000: %d keys, next %d, %v; want %d and a cursor", len(keys), next, err, maxScanCount)
	}
	keys, next, err = rdb.Scan(ctx, next, "", 1_000_000).Result()
	if err != nil || len(keys) != 5 || next != 0 {
		t.Errorf("second page: %d keys, next %d, %v", len(keys), next, err)
	}
}
