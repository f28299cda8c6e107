package raftgroup

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/rlog"
	"github.com/gridkv/gridkv/internal/testcerts"
)

// warnCounter is a slog handler counting Warn and Error records.
type warnCounter struct {
	mu    *sync.Mutex
	n     *int
	lines *[]string
}

func newWarnCounter() warnCounter {
	return warnCounter{mu: &sync.Mutex{}, n: new(int), lines: new([]string)}
}

func (w warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (w warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.mu.Lock()
		*w.n++
		*w.lines = append(*w.lines, r.Message)
		w.mu.Unlock()
	}
	return nil
}
func (w warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w warnCounter) WithGroup(string) slog.Handler      { return w }
func (w warnCounter) count() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return *w.n, append([]string(nil), *w.lines...)
}

// A host with TLS serves Host.Call and Raft over mutual TLS, and refuses
// what comes without a certificate of its CA: a host with a certificate
// of another CA (verifying the server or not), a plaintext host, and raw
// connections carrying a Raft frame, which never reaches the group. The
// refusals are logged once per remote host, not per attempt.
func TestTLSMuxRefusesWrongCertificate(t *testing.T) {
	good := testcerts.NewCA(t, "good")
	rogue := testcerts.NewCA(t, "rogue")
	logs := newWarnCounter()
	c := newTestCluster(t, 2, 1, func(cfg *Config) {
		cfg.TLS = good.Config(t, cfg.NodeID)
		cfg.Logger = slog.New(logs)
	})
	c.waitLeaders(1, 10*time.Second)
	var served atomic.Int64
	for _, h := range c.hosts {
		h.SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
			served.Add(1)
			return append([]byte("echo:"), req...), nil
		})
	}
	target := c.hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := c.hosts[0].Call(ctx, target.ID(), target.Addr(), []byte("hi")); err != nil || string(got) != "echo:hi" {
		t.Fatalf("Call over TLS: %q, %v", got, err)
	}
	if err := c.hosts[1].Ping(ctx, c.hosts[0].ID(), c.hosts[0].Addr()); err != nil {
		t.Fatalf("Ping over TLS: %v", err)
	}
	c.setViaLeader(0, "k", "v") // replication over TLS
	served.Store(0)

	rogueVerifying := rogue.Config(t, "rogue")
	rogueBlind := rogue.Config(t, "rogue-blind")
	rogueBlind.InsecureSkipVerify = true // gets past its own check: the listener must refuse it
	// Present the rogue certificate even though the listener asks for
	// another CA's (Go's client would otherwise send none).
	rogueCert := rogueBlind.Certificates[0]
	rogueBlind.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogueCert, nil }
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{{"rogue-ca", rogueVerifying}, {"rogue-ca-skipping-verify", rogueBlind}, {"plaintext", nil}} {
		cfg := fastConfig(tc.name, nil)
		cfg.TLS = tc.tls
		h, err := NewHost(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			if _, err := h.Call(ctx, target.ID(), target.Addr(), []byte("x")); err == nil {
				t.Fatalf("%s: Call succeeded", tc.name)
			}
		}
		err = h.Ping(ctx, target.ID(), target.Addr())
		t.Logf("%s: %v", tc.name, err)
		if tc.name == "rogue-ca" && !errors.Is(err, ErrHandshake) {
			t.Errorf("%s: Ping: %v, want ErrHandshake", tc.name, err)
		}
		// The other way: a TLS host dialing it fails, and sends nothing.
		if _, err := target.Call(ctx, h.ID(), h.Addr(), []byte("x")); !NotSent(err) || !errors.Is(err, ErrHandshake) {
			t.Errorf("%s: Call from the TLS host: %v, want NotSent and ErrHandshake", tc.name, err)
		}
		_ = h.Close()
	}
	if n := served.Load(); n != 0 {
		t.Fatalf("%d requests reached the handler without a good certificate", n)
	}

	// Raw connections: a RequestVote of a far later term in the name of
	// the other member (asking as for a leadership transfer, which raft
	// grants even while it has a leader), after a hello, over plaintext
	// and over TLS with the rogue's certificate. Neither reaches the
	// group: its term stays.
	g := target.Group(0)
	term := g.Raft().CurrentTerm()
	frames := helloFrame(kindPeerHello, "127.0.0.1:1")
	vote := appendHeader(nil, frameHeader{kind: kindRequestVote, group: 0, id: 1, to: target.cfg.Incarnation})
	vote = appendRequestVoteRequest(vote, &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(c.hosts[0].ID()), Addr: []byte(c.hosts[0].Addr())},
		Term:      term + 100, LastLogIndex: 1 << 40, LastLogTerm: term + 99, LeadershipTransfer: true})
	finishFrame(vote, 0)
	frames = append(frames, vote...)
	inject := func(name string, wrap func(net.Conn) net.Conn) {
		conn, err := net.DialTimeout("tcp", target.BoundAddr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		c := wrap(conn)
		_, _ = c.Write(frames) // may fail already: the listener hangs up
		if _, _, err := readFrame(bufio.NewReader(c)); err == nil {
			t.Fatalf("%s: got an answer to an injected frame", name)
		} else {
			t.Logf("%s: connection ended: %v", name, err)
		}
	}
	inject("plaintext", func(c net.Conn) net.Conn { return c })
	inject("rogue-tls", func(c net.Conn) net.Conn { return tls.Client(c, rogueBlind) })
	if now := g.Raft().CurrentTerm(); now != term {
		t.Fatalf("term moved from %d to %d: an injected vote request got through", term, now)
	}
	if n := served.Load(); n != 0 {
		t.Fatalf("%d requests reached the handler", n)
	}
	// Every attempt came from 127.0.0.1: at most one line per host.
	n, lines := logs.count()
	t.Logf("WARN/ERROR lines on the two TLS hosts: %d %q", n, lines)
	if n > 2 {
		t.Fatalf("%d WARN/ERROR lines for refused handshakes, want at most one per host", n)
	}

	// Control: the same frames with a good certificate do reach the group.
	conn, err := tls.Dial("tcp", target.BoundAddr(), good.Config(t, "insider"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the control vote request to move the term", func() bool {
		return g.Raft().CurrentTerm() > term
	})
}

// TestTLSHelloClaimMustMatchCertificate: with TLS, a connection's hello
// may claim only an address its client certificate is valid for (the
// host's IP or name, as dials check servers), or, with ServerName set,
// the certificate must carry that name. A holder of a good certificate
// for 127.0.0.2 claiming an address on 127.0.0.1 is cut off; the same
// claim with a certificate for 127.0.0.1 is taken.
func TestTLSHelloClaimMustMatchCertificate(t *testing.T) {
	ca := testcerts.NewCA(t, "ca")
	const shared = "gridkv.internal"
	for _, tc := range []struct {
		name       string
		serverName string
		certIPs    []net.IP
		certDNS    []string
		claim      string
		kept       bool
	}{
		{"other IP", "", []net.IP{net.IPv4(127, 0, 0, 2)}, nil, "127.0.0.1:7001", false},
		{"other name", "", nil, []string{"other.example"}, "localhost:7001", false},
		{"own IP", "", nil, nil, "127.0.0.1:7001", true},
		{"own name", "", nil, []string{"localhost"}, "localhost:7001", true},
		{"server name missing", shared, nil, nil, "127.0.0.1:7001", false},
		{"server name", shared, nil, []string{shared}, "127.0.0.1:7001", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 1, 0, func(cfg *Config) {
				cfg.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Cert(t, cfg.NodeID, nil, shared)}, RootCAs: ca.Pool, ServerName: tc.serverName}
			})
			target := c.hosts[0]
			conn, err := net.DialTimeout("tcp", target.BoundAddr(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ips := tc.certIPs
			if ips == nil && tc.certDNS != nil {
				ips = []net.IP{net.IPv4(192, 0, 2, 1)} // not 127.0.0.1
			}
			serverName := tc.serverName
			if serverName == "" {
				serverName = "127.0.0.1"
			}
			tlsConn := tls.Client(conn, &tls.Config{Certificates: []tls.Certificate{ca.Cert(t, "claimer", ips, tc.certDNS...)},
				RootCAs: ca.Pool, ServerName: serverName})
			_ = tlsConn.SetDeadline(time.Now().Add(time.Second))
			if _, err := tlsConn.Write(helloFrame(kindPeerHello, tc.claim)); err != nil {
				t.Fatal(err)
			}
			_, _, err = readFrame(bufio.NewReader(tlsConn))
			kept := errors.Is(err, os.ErrDeadlineExceeded)
			if kept != tc.kept {
				t.Fatalf("connection kept: %v, want %v (read: %v)", kept, tc.kept, err)
			}
		})
	}
}

// recordLog keeps the Warn records it is given, with their attributes.
type recordLog struct {
	mu   sync.Mutex
	recs []map[string]string
}

func (l *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *recordLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	attrs := map[string]string{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
	l.mu.Lock()
	l.recs = append(l.recs, attrs)
	l.mu.Unlock()
	return nil
}
func (l *recordLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *recordLog) WithGroup(string) slog.Handler      { return l }

// Refused TLS connections log one Warn per remote host, then at most one
// line per handshakeLogEvery with the count not logged; a remote that
// closed the connection before a byte is logged at Debug only.
func TestTLSHandshakeFailuresCollapsed(t *testing.T) {
	now := time.Unix(1000, 0)
	logs := &recordLog{}
	m := &mux{log: slog.New(logs), handshakeLog: rlog.NewCollapser(rlog.CollapseOptions{
		Interval: handshakeLogEvery, Now: func() time.Time { return now }})}
	bad := errors.New("tls: bad certificate")
	for range 5 {
		m.handshakeFailed(msgHandshakeFailed, "10.0.0.1", "accept", bad)
		m.handshakeFailed(msgHandshakeFailed, "10.0.0.1", "accept", io.EOF)
		now = now.Add(time.Second)
	}
	m.handshakeFailed(msgHandshakeFailed, "10.0.0.2", "dial", bad)
	if n := len(logs.recs); n != 2 {
		t.Fatalf("%d lines for failures with two hosts, want 2: %v", n, logs.recs)
	}
	now = now.Add(handshakeLogEvery)
	m.handshakeFailed(msgHandshakeFailed, "10.0.0.1", "accept", bad)
	if n := len(logs.recs); n != 3 {
		t.Fatalf("%d lines after the interval, want 3: %v", n, logs.recs)
	}
	if last := logs.recs[2]; last["remote"] != "10.0.0.1" || last["repeated"] != "4" {
		t.Fatalf("line after the interval: %v, want remote 10.0.0.1 and repeated 4", last)
	}
}
