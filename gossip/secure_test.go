package gossip

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/netaddr"
	"github.com/gridkv/gridkv/internal/testutil"
)

func startCfg(t *testing.T, cfg Config) *Node {
	t.Helper()
	cfg.Meta = Meta{NodeID: cfg.Name, Incarnation: 1, RPCAddr: "127.0.0.1:1"}
	cfg.Preset = Local
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func names(n *Node) []string {
	var out []string
	for _, m := range n.Members() {
		out = append(out, m.Name)
	}
	return out
}

// Members sharing a SecretKey gossip; a node with another key, or none,
// cannot join, and the members never count it.
func TestSecretKey(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	a := startCfg(t, Config{Name: "a", SecretKey: key})
	defer a.Close(time.Second)
	b := startCfg(t, Config{Name: "b", SecretKey: key})
	defer b.Close(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, []string{a.Addr()}); err != nil {
		t.Fatalf("join with the key: %v", err)
	}
	testutil.Eventually(t, 5*time.Second, "a and b see each other", func() bool {
		return slices.Equal(names(a), []string{"a", "b"}) && slices.Equal(names(b), []string{"a", "b"})
	})
	for _, c := range []struct {
		name string
		key  []byte
	}{{"other-key", bytes.Repeat([]byte{8}, 32)}, {"no-key", nil}, {"short-key", bytes.Repeat([]byte{7}, 16)}} {
		x := startCfg(t, Config{Name: c.name, SecretKey: c.key})
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		_, err := x.Join(ctx, []string{a.Addr(), b.Addr()})
		cancel()
		if err == nil {
			t.Errorf("%s: join succeeded", c.name)
		}
		if got := names(x); !slices.Equal(got, []string{c.name}) {
			t.Errorf("%s: knows %v, want only itself", c.name, got)
		}
		_ = x.Close(100 * time.Millisecond)
	}
	if !slices.Equal(names(a), []string{"a", "b"}) || !slices.Equal(names(b), []string{"a", "b"}) {
		t.Fatalf("members: a %v, b %v; want [a b]", names(a), names(b))
	}
	if _, err := Start(Config{Name: "bad", SecretKey: []byte("12345")}); err == nil {
		t.Fatal("Start with a 5-byte key succeeded")
	}
}

// The address gossip advertises: the bound one by default, AdvertiseAddr
// when set (port 0: the bound port), and never an address that binds every
// interface.
func TestAdvertiseAddr(t *testing.T) {
	a := startCfg(t, Config{Name: "a", BindAddr: "127.0.0.1:0", AdvertiseAddr: "127.0.0.1:0"})
	defer a.Close(time.Second)
	if a.Addr() != a.BoundAddr() || !strings.HasPrefix(a.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr %s, BoundAddr %s; want the same 127.0.0.1 address", a.Addr(), a.BoundAddr())
	}

	if ip, _ := netaddr.PrivateIP(); ip != "" {
		any := startCfg(t, Config{Name: "any", BindAddr: "0.0.0.0:0"})
		host, port, _ := net.SplitHostPort(any.Addr())
		_, bport, _ := net.SplitHostPort(any.BoundAddr())
		if netaddr.Unspecified(host) || host != ip || port != bport || !strings.HasPrefix(any.BoundAddr(), "0.0.0.0:") {
			t.Errorf("bound to %s, advertises %s; want %s with the bound port", any.BoundAddr(), any.Addr(), ip)
		}
		_ = any.Close(100 * time.Millisecond)
	}

	// Bound to every interface, advertising another loopback address, which
	// reaches it: a joins through it and sees it there.
	b := startCfg(t, Config{Name: "b", BindAddr: "0.0.0.0:0", AdvertiseAddr: "127.0.0.2:0"})
	defer b.Close(time.Second)
	_, bport, _ := net.SplitHostPort(b.BoundAddr())
	if want := "127.0.0.2:" + bport; b.Addr() != want {
		t.Fatalf("advertises %s, want %s", b.Addr(), want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Join(ctx, []string{b.Addr()}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "a sees b at its advertised address", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" {
				return m.Addr == "127.0.0.2:"+bport
			}
		}
		return false
	})

	for _, bad := range []string{"nonsense", "node.example:0"} {
		if n, err := Start(Config{Name: "bad", AdvertiseAddr: bad}); err == nil {
			n.Crash()
			t.Errorf("Start advertising %q succeeded", bad)
		}
	}
}
