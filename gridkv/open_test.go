package gridkv

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testutil"
)

// requireOneLine fails the test when err's text spans lines.
func requireOneLine(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.ContainsAny(err.Error(), "\r\n") {
		t.Fatalf("error spans lines: %q", err)
	}
}

// slowPlacement is LocalTiming with a MemberDelay of a minute: a node
// opened with it keeps its replicas where they are while others come and
// go (only membership is tested).
func slowPlacement() Timing {
	t := LocalTiming()
	t.MemberDelay = time.Minute
	return t
}

func openT(t *testing.T, cfg Config) *DB {
	t.Helper()
	cfg.Logger = quiet
	db, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// A node whose cluster-wide settings differ from the cluster's is refused
// by Open (ErrInvalid naming each setting with both values), at once, and
// the members never count it. MaxValueBytes may differ.
func TestOpenRefusesOtherSettings(t *testing.T) {
	base := Config{Timing: LocalTiming(), GroupsPerNode: 8}
	aCfg := base
	aCfg.Timing.MemberDelay = time.Minute // keeps a's replicas where they are: only membership is tested
	a := openT(t, aCfg)
	defer a.Close()
	for _, c := range []struct {
		name string
		tune func(*Config)
		want []string // in the error; nil: Open succeeds
	}{
		{"groups and replicas", func(c *Config) { c.GroupsPerNode, c.ReplicaCount = 16, 1 },
			[]string{"GroupsPerNode 8 (16 here)", "ReplicaCount 3 (1 here)"}},
		{"memory limit", func(c *Config) { c.MemoryLimit = 1 << 20 }, []string{"MemoryLimit 0 (1048576 here)"}},
		{"timing preset", func(c *Config) { c.Timing = Timing{} },
			[]string{"Timing.HeartbeatTimeout 300ms (1s here)"}},
		{"heartbeat", func(c *Config) {
			c.Timing.HeartbeatTimeout = 400 * time.Millisecond
			c.Timing.ElectionTimeout = time.Second
		},
			[]string{"Timing.HeartbeatTimeout 300ms (400ms here)"}},
		{"value limit is per node", func(c *Config) { c.MaxValueBytes = 10 }, nil},
		{"other timings are per node", func(c *Config) {
			c.Timing.ElectionTimeout, c.Timing.CommitTimeout, c.Timing.Gossip = time.Second, 50*time.Millisecond, GossipLAN
			c.Timing.MemberDelay, c.Timing.HandoffTimeout = 2*time.Second, time.Minute
		}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.Seeds = []string{a.GossipAddr()}
			cfg.Logger = quiet
			c.tune(&cfg)
			start := time.Now()
			b, err := Open(cfg)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				testutil.Eventually(t, 10*time.Second, "a to count b", func() bool { return len(a.Members()) == 2 })
				b.Close()
				testutil.Eventually(t, 10*time.Second, "a to drop b", func() bool { return len(a.Members()) == 1 })
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Open: %v, want ErrInvalid", err)
			}
			requireOneLine(t, err)
			for _, w := range append(c.want, a.NodeID(), a.GossipAddr()) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Open: %v\nwant it to say %q", err, w)
				}
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the refusal took %v", d)
			}
			if ms := a.Members(); len(ms) != 1 {
				t.Fatalf("a counts %+v", ms)
			}
		})
	}
}

// A second live node with a member's NodeID is refused; a node that
// restarts under the NodeID of one that crashed gets in once the cluster
// has declared its predecessor dead, even at another address.
func TestOpenNodeIDTakenThenRestart(t *testing.T) {
	a := openT(t, Config{NodeID: "a", Timing: slowPlacement(), GroupsPerNode: 4}) // replicas stay on a
	defer a.Close()
	b := openT(t, Config{NodeID: "b", Timing: LocalTiming(), GroupsPerNode: 4, Seeds: []string{a.GossipAddr()}})
	testutil.Eventually(t, 10*time.Second, "a to count b", func() bool { return len(a.Members()) == 2 })

	_, err := Open(Config{NodeID: "b", Timing: LocalTiming(), GroupsPerNode: 4, Seeds: []string{a.GossipAddr()}, Logger: quiet})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `NodeID "b"`) || !strings.Contains(err.Error(), b.GossipAddr()) {
		t.Fatalf("duplicate Open: %v, want ErrInvalid naming NodeID \"b\" and %s", err, b.GossipAddr())
	}
	requireOneLine(t, err)
	if ms := a.Members(); len(ms) != 2 || ms[1].GossipAddr != b.GossipAddr() {
		t.Fatalf("a counts %+v", ms)
	}

	old := b.Members()[1]
	b.crash()
	restarted := openT(t, Config{NodeID: "b", Timing: LocalTiming(), GroupsPerNode: 4, Seeds: []string{a.GossipAddr()}})
	defer restarted.Close()
	testutil.Eventually(t, 20*time.Second, "a to count the restarted b", func() bool {
		ms := a.Members()
		return len(ms) == 2 && ms[1].GossipAddr == restarted.GossipAddr() && ms[1].Incarnation != old.Incarnation
	})
}

// Addresses and seeds are checked with the rest of the config, every
// problem reported at once, on one line.
func TestOpenBadConfigAllAtOnce(t *testing.T) {
	_, err := Open(Config{
		NodeID: strings.Repeat("n", 200), BindAddr: "nonsense", GossipAddr: "127.0.0.1:http",
		Seeds: []string{"", "nohost", ":7946", "h:0", "h:99999"}, ReplicaCount: -1, JoinTimeout: time.Second, Logger: quiet,
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Open: %v, want ErrInvalid", err)
	}
	requireOneLine(t, err)
	for _, w := range []string{"NodeID of 200 bytes", `BindAddr "nonsense"`, `GossipAddr "127.0.0.1:http"`,
		`Seeds[0] ""`, `Seeds[1] "nohost"`, `Seeds[2] ":7946"`, `Seeds[3] "h:0"`, `Seeds[4] "h:99999"`, "ReplicaCount"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Open: %v\nwant it to say %q", err, w)
		}
	}
}

// An address that cannot be bound is a config error naming its field.
func TestOpenAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	for _, cfg := range []Config{{BindAddr: taken}, {GossipAddr: taken}} {
		cfg.Logger = quiet
		field := "BindAddr"
		if cfg.GossipAddr != "" {
			field = "GossipAddr"
		}
		_, err := Open(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field+` "`+taken+`" cannot be used`) {
			t.Fatalf("%s in use: %v, want ErrInvalid naming it", field, err)
		}
		requireOneLine(t, err)
	}
}

// Seeds that never answer: ErrUnavailable once JoinTimeout passes, on one
// line, saying how many seeds were tried and the first one's error.
func TestOpenUnreachableSeeds(t *testing.T) {
	seeds := testutil.FreeAddrs(t, 2) // nobody listens there now
	_, err := Open(Config{Seeds: seeds, JoinTimeout: 300 * time.Millisecond, Logger: quiet})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Open: %v, want ErrUnavailable", err)
	}
	requireOneLine(t, err)
	for _, w := range []string{"2 seeds", "first error", seeds[0]} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Open: %v\nwant it to say %q", err, w)
		}
	}
}

// OpenContext's ctx bounds joining and forming: its end gives ErrTimeout
// wrapping ctx.Err(), well before JoinTimeout, with every goroutine
// stopped (TestMain checks).
func TestOpenContext(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := OpenContext(ended, Config{Logger: quiet}); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("ended ctx: %v", err)
	}

	dead := testutil.FreeAddrs(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := OpenContext(ctx, Config{Seeds: []string{dead}, Logger: quiet}) // JoinTimeout: 30s
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Fatalf("unreachable seed: %v after %v", err, time.Since(start))
	}
	requireOneLine(t, err)

	// Ended while waiting for the BootstrapExpect nodes, after joining.
	// (a's long MemberDelay keeps its replicas off the passing node.)
	a := openT(t, Config{Timing: slowPlacement(), GroupsPerNode: 4})
	defer a.Close()
	// Long enough for the node to start and join a on a loaded machine;
	// the third node never comes, so it ends while waiting for it.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	_, err = OpenContext(ctx2, Config{Timing: LocalTiming(), GroupsPerNode: 4, Seeds: []string{a.GossipAddr()}, BootstrapExpect: 3, Logger: quiet})
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "2 of the 3") {
		t.Fatalf("waiting for BootstrapExpect: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "a to drop the node that gave up", func() bool { return len(a.Members()) == 1 })
}

// On a closed DB every call says ErrClosed, even with an ended ctx.
func TestClosedWinsOverContext(t *testing.T) {
	db := openT(t, Config{GroupsPerNode: 4})
	db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, getErr := db.Get(ctx, "k")
	_, casErr := db.CompareAndSwap(ctx, "k", nil, nil)
	_, locErr := db.Locate("k")
	for name, err := range map[string]error{
		"Set": db.Set(ctx, "k", nil), "Delete": db.Delete(ctx, "k"), "Get": getErr, "CompareAndSwap": casErr,
		"WaitReady": db.WaitReady(ctx), "Locate": locErr,
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s: %v, want ErrClosed", name, err)
		}
	}
}

// ErrTimeout's text is neutral; only a write whose outcome is unknown says
// so. Errors relayed from another node and combined errors fit one line.
func TestErrorTexts(t *testing.T) {
	if strings.Contains(ErrTimeout.Error(), "write") || strings.Contains(ErrTimeout.Error(), "outcome") {
		t.Fatalf("ErrTimeout reads %q", ErrTimeout)
	}
	db := openT(t, Config{GroupsPerNode: 4, MaxValueBytes: 1})
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := db.Get(ctx, "k"); !errors.Is(err, ErrTimeout) || strings.Contains(err.Error(), "outcome") {
		t.Fatalf("read timeout: %v", err)
	}
	unknown := statusError(stUnknown, []byte("raft: leadership lost\nwhile committing"))
	if !errors.Is(unknown, ErrTimeout) || !strings.Contains(unknown.Error(), "write outcome unknown") {
		t.Fatalf("write answered unknown: %v", unknown)
	}
	requireOneLine(t, unknown)
	for _, st := range []byte{stInvalid, stUnavailable} {
		err := statusError(st, []byte("range 3:\nsecond line"))
		if !strings.Contains(err.Error(), "range 3: second line") {
			t.Errorf("status %d: %q", st, err)
		}
		requireOneLine(t, err)
	}
	err := db.Set(context.Background(), "", []byte("too big"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "key of 0 bytes") || !strings.Contains(err.Error(), "value of 7 bytes") {
		t.Fatalf("two problems: %v", err)
	}
	requireOneLine(t, err)
}
