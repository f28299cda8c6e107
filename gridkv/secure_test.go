package gridkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/netaddr"
)

// countingHandler counts the WARN and ERROR records of every logger made
// from it, and keeps the first few.
type countingHandler struct{ c *logCount }

type logCount struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.n++
	if len(h.c.first) < 5 {
		h.c.first = append(h.c.first, r.Level.String()+" "+r.Message)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

func (c *logCount) take() (int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, first := c.n, c.first
	c.n, c.first = 0, nil
	return n, first
}

func memberIDs(db *DB) string {
	var ids []string
	for _, m := range db.Members() {
		ids = append(ids, m.ID)
	}
	return strings.Join(ids, ",")
}

// Nodes sharing a GossipKey form a cluster and serve; a node with another
// key, or none, cannot join: its Open ends with ErrUnavailable after
// JoinTimeout, it never appears among the members, and the cluster keeps
// serving. The WARN/ERROR lines its attempts cost are counted and logged.
func TestOpenGossipKey(t *testing.T) {
	key := bytes.Repeat([]byte{0x5a}, 32)
	members := &logCount{}
	mlog := slog.New(countingHandler{members})
	a, err := Open(Config{NodeID: "a", Timing: LocalTiming(), GossipKey: key, Logger: mlog})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(Config{NodeID: "b", Timing: LocalTiming(), GossipKey: key, Seeds: []string{a.GossipAddr()}, Logger: mlog})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range []*DB{a, b} {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || string(v) != "v1" {
		t.Fatalf("Get: %q, %v", v, err)
	}
	members.take()

	for _, c := range []struct {
		name string
		key  []byte
	}{{"other-key", bytes.Repeat([]byte{0xa5}, 32)}, {"no-key", nil}} {
		rejected := &logCount{}
		start := time.Now()
		_, err := Open(Config{NodeID: c.name, Timing: LocalTiming(), GossipKey: c.key, Seeds: []string{a.GossipAddr(), b.GossipAddr()},
			JoinTimeout: 2 * time.Second, Logger: slog.New(countingHandler{rejected})})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s: Open: %v, want ErrUnavailable", c.name, err)
		}
		requireOneLine(t, err)
		nm, fm := members.take()
		nr, fr := rejected.take()
		t.Logf("%s: Open failed after %v: %v", c.name, time.Since(start).Round(time.Millisecond), err)
		t.Logf("%s: WARN/ERROR lines over its 2s of attempts: %d on the two members %q, %d on the rejected node %q", c.name, nm, fm, nr, fr)
	}
	for _, db := range []*DB{a, b} {
		if got := memberIDs(db); got != "a,b" {
			t.Fatalf("%s counts members %s, want a,b", db.NodeID(), got)
		}
	}
	if err := a.Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("Get after the rejected joins: %q, %v", v, err)
	}
}

// The advertised addresses are what gossip metadata carries and what the
// other nodes dial: a node bound to every interface advertising other
// loopback addresses (which reach it), and one advertising a host name,
// form a cluster whose Raft traffic and forwarded writes use them. Addr and
// GossipAddr stay the bound addresses.
func TestOpenAdvertiseAddr(t *testing.T) {
	a := openT(t, Config{NodeID: "a", Timing: LocalTiming(), ReplicaCount: 2,
		BindAddr: "0.0.0.0:0", AdvertiseAddr: "127.0.0.2:0",
		GossipAddr: "0.0.0.0:0", GossipAdvertiseAddr: "127.0.0.3:0"})
	defer a.Close()
	host, port, _ := net.SplitHostPort(a.Addr())
	ghost, gport, _ := net.SplitHostPort(a.GossipAddr())
	if !netaddr.Unspecified(host) || !netaddr.Unspecified(ghost) { // Go's listener says [::] for 0.0.0.0
		t.Fatalf("Addr %s, GossipAddr %s: want the bound addresses, of every interface", a.Addr(), a.GossipAddr())
	}
	aRPC, aGossip := "127.0.0.2:"+port, "127.0.0.3:"+gport

	b := openT(t, Config{NodeID: "b", Timing: LocalTiming(), ReplicaCount: 2, AdvertiseAddr: "localhost:0", Seeds: []string{aGossip}})
	defer b.Close()
	_, bport, _ := net.SplitHostPort(b.Addr())
	bRPC := "localhost:" + bport

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range []*DB{a, b} {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprintf("a %s %s; b %s %s", aRPC, aGossip, bRPC, b.GossipAddr())
	for _, db := range []*DB{a, b} {
		var got []string
		for _, m := range db.Members() {
			got = append(got, fmt.Sprintf("%s %s %s", m.ID, m.Addr, m.GossipAddr))
		}
		if strings.Join(got, "; ") != want {
			t.Fatalf("%s sees members %q, want %q", db.NodeID(), strings.Join(got, "; "), want)
		}
	}
	// Both replicas of every group, at the advertised addresses: each node
	// dialed the other there.
	for _, db := range []*DB{a, b} {
		for r, rep := range db.replicaList() {
			servers, err := rep.group.Configuration()
			if err != nil {
				t.Fatal(err)
			}
			var addrs []string
			for _, s := range servers {
				addrs = append(addrs, string(s.Address))
			}
			if len(addrs) != 2 || !strings.Contains(strings.Join(addrs, " "), aRPC) || !strings.Contains(strings.Join(addrs, " "), bRPC) {
				t.Fatalf("%s: group %d has servers %v, want %s and %s", db.NodeID(), r, addrs, aRPC, bRPC)
			}
		}
	}
	for i := range 16 {
		w, r := a, b
		if i%2 == 1 {
			w, r = b, a
		}
		k := fmt.Sprint("k", i)
		if err := w.Set(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		if v, err := r.Get(ctx, k); err != nil || string(v) != k {
			t.Fatalf("%s: %q, %v", k, v, err)
		}
	}
}

// Bound to every interface with no advertise address, a node advertises
// the host's private IP with the bound ports, never 0.0.0.0 or [::].
func TestOpenAdvertiseDefaultUnspecified(t *testing.T) {
	ip, _ := netaddr.PrivateIP()
	db, err := Open(Config{Timing: LocalTiming(), BindAddr: "0.0.0.0:0", GossipAddr: "[::]:0", Logger: quiet})
	if ip == "" {
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "set AdvertiseAddr") {
			t.Fatalf("Open with no private IP: %v, want ErrInvalid saying to set AdvertiseAddr", err)
		}
		t.Skip("this host has no private IP")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ms := db.Members()
	if len(ms) != 1 {
		t.Fatalf("members %v", ms)
	}
	_, port, _ := net.SplitHostPort(db.Addr())
	_, gport, _ := net.SplitHostPort(db.GossipAddr())
	if want := net.JoinHostPort(ip, port); ms[0].Addr != want {
		t.Errorf("advertises RPC address %s, want %s", ms[0].Addr, want)
	}
	if want := net.JoinHostPort(ip, gport); ms[0].GossipAddr != want {
		t.Errorf("advertises gossip address %s, want %s", ms[0].GossipAddr, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// Malformed advertise addresses and keys of a wrong length are ErrInvalid
// at Open, every one named.
func TestOpenBadAdvertiseAndKey(t *testing.T) {
	_, err := Open(Config{AdvertiseAddr: "0.0.0.0:7000", GossipAdvertiseAddr: "gossip.example:7946",
		GossipKey: []byte("short"), Logger: quiet})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Open: %v, want ErrInvalid", err)
	}
	requireOneLine(t, err)
	for _, w := range []string{`AdvertiseAddr "0.0.0.0:7000"`, `GossipAdvertiseAddr "gossip.example:7946"`, "GossipKey of 5 bytes"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Open: %v\nwant it to say %q", err, w)
		}
	}
	for _, bad := range []Config{{AdvertiseAddr: "nohost"}, {AdvertiseAddr: "h:99999"}, {GossipAdvertiseAddr: "[::]:1"},
		{GossipAdvertiseAddr: "127.0.0.1"}, {GossipKey: make([]byte, 33)}} {
		bad.Logger = quiet
		if _, err := Open(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Open(%+v): %v, want ErrInvalid", bad, err)
		}
	}
}
