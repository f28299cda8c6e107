package gridkv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/internal/testcerts"
	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/raftgroup"
)

// Three nodes with certificates of one CA form a cluster over mutual TLS
// and serve. Nodes without the right certificate or key (one of another
// CA, one with a good certificate and another key, one without TLS) cannot
// join: Open fails, naming TLS. While they try, the members never count
// them (Members, Locate, the groups' configurations), so no request and
// no replica goes to them. Raw connections carrying frames to a member's
// listener, in plaintext or with the rogue certificate, are refused and
// change nothing. Every attempt comes from 127.0.0.1: the members log at
// most one WARN line each for all of them.
func TestTLSCluster(t *testing.T) {
	good := testcerts.NewCA(t, "gridkv test CA")
	rogueCA := testcerts.NewCA(t, "rogue CA")
	logs := &warnLines{}
	mlog := slog.New(logs)
	var nodes []*DB
	for _, id := range []string{"a", "b", "c"} {
		cfg := Config{NodeID: id, Timing: LocalTiming(), TLS: good.Config(t, id), Logger: mlog}
		if len(nodes) > 0 {
			cfg.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		nodes = append(nodes, db)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	keys := make([]string, 32)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
		if err := nodes[i%3].Set(ctx, keys[i], []byte(keys[i])); err != nil {
			t.Fatal(err)
		}
		if v, err := nodes[(i+1)%3].Get(ctx, keys[i]); err != nil || string(v) != keys[i] {
			t.Fatalf("Get %s: %q, %v", keys[i], v, err)
		}
	}
	if lines := logs.take(); len(lines) > 0 {
		t.Logf("WARN/ERROR lines while forming (not counted below): %q", lines)
	}

	// notCounted fails the test if a member counts an intruder anywhere.
	notCounted := func(intruder string) {
		for _, db := range nodes {
			if ids := memberIDs(db); ids != "a,b,c" {
				t.Errorf("%s counts members %s while %s tries to join", db.NodeID(), ids, intruder)
			}
			for _, k := range keys {
				loc, err := db.Locate(k)
				if err != nil || loc.Leader == intruder || slices.Contains(loc.Replicas, intruder) {
					t.Errorf("%s: Locate(%s) = %+v, %v", db.NodeID(), k, loc, err)
				}
			}
			for r, rep := range db.replicaList() {
				servers, _ := rep.group.Configuration()
				for _, s := range servers {
					if strings.HasPrefix(string(s.ID), intruder+"/") {
						t.Errorf("%s: group %d has a replica on %s", db.NodeID(), r, intruder)
					}
				}
			}
		}
	}

	stolen := good.Config(t, "stolen") // a good certificate, but another key
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stolen.Certificates[0].PrivateKey = otherKey
	tlsLines, gossipLines := 0, 0
	seeds := []string{nodes[0].GossipAddr(), nodes[1].GossipAddr(), nodes[2].GossipAddr()}
	for _, c := range []struct {
		name string
		tls  *tls.Config
		want error
	}{
		{"rogue-ca", rogueCA.Config(t, "rogue-ca"), ErrUnavailable},
		{"wrong-key", stolen, ErrUnavailable},
		{"plaintext", nil, ErrInvalid},
	} {
		intruderLog := &logCount{}
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := Open(Config{NodeID: c.name, Timing: LocalTiming(), TLS: c.tls, Seeds: seeds, JoinTimeout: 2 * time.Second,
				Logger: slog.New(countingHandler{intruderLog})})
			done <- err
		}()
		var err error
		tick := time.NewTicker(20 * time.Millisecond)
	watch:
		for {
			select {
			case err = <-done:
				break watch
			case <-tick.C:
				notCounted(c.name)
			}
		}
		tick.Stop()
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), "TLS") {
			t.Fatalf("%s: Open: %v, want %v naming TLS", c.name, err, c.want)
		}
		requireOneLine(t, err)
		n, first := intruderLog.take()
		t.Logf("%s: Open failed after %v: %v (its own WARN/ERROR lines: %d %q)", c.name, time.Since(start).Round(time.Millisecond), err, n, first)
		notCounted(c.name)
		lines := logs.take()
		t.Logf("%s: the members' WARN/ERROR lines over its attempts: %d %q", c.name, len(lines), lines)
		// The members log a refused handshake once a minute per remote
		// host: all intruders here are 127.0.0.1, so one line per member
		// in all. The plaintext node is refused by gossip (a line per
		// refused join, gossip's own). Other lines must not be about the
		// intruder (a loaded machine, -race, may log slow heartbeats
		// between the members).
		for _, l := range lines {
			switch {
			case strings.Contains(l, "TLS handshake"):
				tlsLines++
			case strings.Contains(l, "settings differ"):
				gossipLines++
			case strings.Contains(l, c.name):
				t.Errorf("a member logged about %s: %s", c.name, l)
			}
		}
		if tlsLines > len(nodes) || gossipLines > len(nodes) {
			t.Fatalf("%d WARN/ERROR lines on the members about TLS handshakes, %d about gossip settings: want at most one per member", tlsLines, gossipLines)
		}
	}
	// Gossip forgets the intruders (they left); the members still serve.
	// If an intruder's leave was not gossiped in time (a loaded machine),
	// failure detection drops it: memberlist's suspicion timer starts at
	// 6x its base timeout, 18s with the Local preset and 4 members, and
	// shortens as other members confirm the suspicion.
	var kept string // the last member list that still held an intruder
	if !testutil.Within(30*time.Second, func() bool {
		for _, db := range nodes {
			if ms := db.gsp.Members(); len(ms) != 3 {
				kept = fmt.Sprintf("%s lists %v", db.NodeID(), ms)
				return false
			}
		}
		return true
	}) {
		t.Fatalf("timed out after 30s waiting for gossip to drop the intruders; last seen: %s", kept)
	}

	// Raw connections to a member's listener: a peer hello and a Raft
	// frame, in plaintext and over TLS with the rogue certificate (not
	// verifying the member either). Both are cut off unanswered, and no
	// group's term moves. A loaded machine may hold an election of its own
	// during a round: the rounds go on until one leaves every term as it
	// was, up to a bound. (A frame that moved a term in one round only
	// would pass this check; that no member answers any of them is
	// checked in every round.)
	terms := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, db := range nodes {
			for r, rep := range db.replicaList() {
				out[fmt.Sprint(db.NodeID(), "/", r)] = rep.group.Raft().CurrentTerm()
			}
		}
		return out
	}
	hello := rawFrame(8, 0, 0, []byte("127.0.0.1:1"))
	vote := rawFrame(3, 0, 1, make([]byte, 64))
	blind := rogueCA.Config(t, "blind")
	blind.InsecureSkipVerify = true
	cert := blind.Certificates[0]
	blind.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	const rounds = 5
	for round := 1; ; round++ {
		before := terms()
		for _, wrap := range []func(net.Conn) net.Conn{
			func(c net.Conn) net.Conn { return c },
			func(c net.Conn) net.Conn { return tls.Client(c, blind) },
		} {
			for _, db := range nodes {
				conn, err := net.DialTimeout("tcp", db.Addr(), time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				c := wrap(conn)
				_, _ = c.Write(append(hello, vote...))
				var buf [1]byte
				if _, err := c.Read(buf[:]); err == nil {
					t.Errorf("%s answered a raw connection", db.NodeID())
				} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("%s kept a raw connection open", db.NodeID())
				}
				_ = conn.Close()
			}
		}
		after := terms()
		if fmt.Sprint(after) == fmt.Sprint(before) {
			break
		}
		if round == rounds {
			t.Fatalf("terms moved in each of %d rounds of raw connections; the last: %v, then %v", rounds, before, after)
		}
		t.Logf("round %d of raw connections: terms moved (%v, then %v); again", round, before, after)
	}
	for i, k := range keys {
		if err := nodes[(i+2)%3].Set(ctx, k, []byte("v2")); err != nil {
			t.Fatal(err)
		}
		if v, err := nodes[i%3].Get(ctx, k); err != nil || string(v) != "v2" {
			t.Fatalf("Get %s after the intruders: %q, %v", k, v, err)
		}
	}
	for _, l := range logs.take() {
		if strings.Contains(l, "TLS handshake") {
			t.Fatalf("the raw connections cost another line on the members (logged once a minute per host): %q", l)
		}
	}
}

// warnLines is a slog handler keeping the WARN and ERROR records, as
// text.
type warnLines struct {
	mu    sync.Mutex
	lines []string
}

func (w *warnLines) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnLines) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		line := r.Level.String() + " " + r.Message
		r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
		w.mu.Lock()
		w.lines = append(w.lines, line)
		w.mu.Unlock()
	}
	return nil
}
func (w *warnLines) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnLines) WithGroup(string) slog.Handler      { return w }

func (w *warnLines) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := w.lines
	w.lines = nil
	return lines
}

// rawFrame is a frame of raftgroup's wire format (u32 length, kind,
// group, id, to, body), written by hand as an intruder would.
func rawFrame(kind byte, group, id uint64, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+24+len(body)))
	b = append(b, kind)
	b = binary.BigEndian.AppendUint64(b, group)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint64(b, 0)
	return append(b, body...)
}

// TLS without a certificate is ErrInvalid, saying why.
func TestTLSConfigWithoutCertificate(t *testing.T) {
	for _, c := range []*tls.Config{
		{},
		{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }},
	} {
		_, err := Open(Config{TLS: c, Logger: quiet})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field TLS has no certificate") {
			t.Fatalf("Open: %v, want ErrInvalid naming TLS", err)
		}
	}
}

// TLS settings that would weaken verification are ErrInvalid, naming the
// field, unless a verification callback of the user's takes over.
func TestTLSConfigWeakVerification(t *testing.T) {
	ca := testcerts.NewCA(t, "ca")
	good := ca.Config(t, "n1")
	verify := func([][]byte, [][]*x509.Certificate) error { return nil }
	for _, tc := range []struct {
		name string
		edit func(*tls.Config)
		want string // "" for valid
	}{
		{"good", func(*tls.Config) {}, ""},
		{"only ClientCAs", func(c *tls.Config) { c.RootCAs, c.ClientCAs = nil, ca.Pool }, ""},
		{"no CA", func(c *tls.Config) { c.RootCAs = nil }, "field TLS has neither RootCAs nor ClientCAs"},
		{"no CA, own check", func(c *tls.Config) { c.RootCAs, c.VerifyPeerCertificate = nil, verify }, ""},
		{"no CA, own connection check", func(c *tls.Config) {
			c.RootCAs, c.VerifyConnection = nil, func(tls.ConnectionState) error { return nil }
		}, ""},
		{"skip verify", func(c *tls.Config) { c.InsecureSkipVerify = true }, "field TLS.InsecureSkipVerify"},
		{"skip verify, own check", func(c *tls.Config) { c.InsecureSkipVerify, c.VerifyPeerCertificate = true, verify }, ""},
		{"config for client", func(c *tls.Config) {
			c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }
		}, "field TLS.GetConfigForClient"},
	} {
		c := good.Clone()
		tc.edit(c)
		_, err := Config{TLS: c, Logger: quiet}.withDefaults()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want valid", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want ErrInvalid naming %q", tc.name, err, tc.want)
		}
	}
}

// A single node with TLS serves (nothing to check against), and its
// listener, given to raftgroup, refuses a plaintext Ping.
func TestTLSSingleNode(t *testing.T) {
	ca := testcerts.NewCA(t, "ca")
	db := openT(t, Config{Timing: LocalTiming(), TLS: ca.Config(t, "solo")})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	h, err := raftgroup.NewHost(raftgroup.Config{NodeID: "plain", Logger: quiet, RPCTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Ping(ctx, db.host.ID(), db.host.Addr()); err == nil {
		t.Fatal("a plaintext Ping was answered by a TLS node")
	}
}

// TestTLSJoinIgnoresGossipOnlyLayout: with TLS, a joining node takes the
// cluster's layout only from members it verified. Two gossip-only
// members announce a bogus layout of a later epoch: one under its own
// name, one under another gossip name with the metadata of the real
// member (its NodeID, incarnation and RPC address). The joiner adopts
// the real member's layout.
func TestTLSJoinIgnoresGossipOnlyLayout(t *testing.T) {
	ca := testcerts.NewCA(t, "ca")
	a := openT(t, Config{NodeID: "a", Timing: LocalTiming(), TLS: ca.Config(t, "a"), Logger: quiet})
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	real := a.lay.Load()
	_, inc, _ := raftgroup.ParseServerID(a.host.ID())
	for _, r := range []struct{ name, nodeID, rpc string }{
		{"rogue", "rogue", "127.0.0.1:1"},
		{"a-impostor", "a", a.host.Addr()},
	} {
		n, err := gossip.Start(gossip.Config{Name: r.name, Preset: a.cfg.Timing.Gossip.gossipPreset(), Logger: quiet,
			Settings: a.cfg.clusterSettings(),
			Meta: gossip.Meta{NodeID: r.nodeID, Incarnation: inc, RPCAddr: r.rpc,
				Groups: real.groups + 7, GenesisGroups: real.genesisGroups, LayoutEpoch: real.epoch + 100}})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close(0)
		if _, err := n.Join(ctx, []string{a.GossipAddr()}); err != nil {
			t.Fatal(err)
		}
	}
	b := openT(t, Config{NodeID: "b", Timing: LocalTiming(), TLS: ca.Config(t, "b"), Seeds: []string{a.GossipAddr()}, Logger: quiet})
	defer b.Close()
	if got := b.lay.Load(); got.groups != real.groups || got.epoch != real.epoch {
		t.Fatalf("joiner took %d groups at epoch %d, want the member's %d at %d", got.groups, got.epoch, real.groups, real.epoch)
	}
	if ids := memberIDs(b); ids != "a,b" {
		t.Fatalf("joiner counts members %s", ids)
	}
}
