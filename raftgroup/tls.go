package raftgroup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// ErrHandshake: a TLS handshake on the node-to-node listener failed (the
// peer's certificate, or ours, was not accepted, or the peer does not
// speak TLS). Errors wrapping it also satisfy NotSent.
var ErrHandshake = errors.New("raftgroup: TLS handshake failed")

// tlsConfigs are the two sides of Config.TLS: what the listener serves
// with and what dials use. Both nil: plaintext.
type tlsConfigs struct {
	server, client *tls.Config
}

// newTLSConfigs derives the listener's and the dialer's configurations
// from the user's, which it does not modify:
//   - the listener requires and verifies a client certificate
//     (ClientAuth is raised to RequireAndVerifyClientCert);
//   - with ClientCAs nil, the listener verifies clients against RootCAs,
//     and with RootCAs nil, dials verify servers against ClientCAs, so one
//     pool (a private CA) configures both sides;
//   - dials present the same certificate and verify the server against
//     the host of the address dialed (an IP or a name), unless ServerName
//     is set: then every node's certificate must be valid for that name;
//   - the listener checks, after the handshake, that the client's
//     certificate is valid in the same way for the address its hello
//     claims (checkClaim).
func newTLSConfigs(c *tls.Config) tlsConfigs {
	if c == nil {
		return tlsConfigs{}
	}
	s := c.Clone()
	if s.ClientAuth < tls.RequireAndVerifyClientCert {
		s.ClientAuth = tls.RequireAndVerifyClientCert
	}
	if s.ClientCAs == nil {
		s.ClientCAs = c.RootCAs
	}
	cl := c.Clone()
	if cl.RootCAs == nil {
		cl.RootCAs = c.ClientCAs
	}
	return tlsConfigs{server: s, client: cl}
}

// dial connects to target and, with TLS, completes the handshake, all
// within the mux time-out. Errors wrap errUnreachable (nothing was sent),
// and ErrHandshake when the TCP connection was made but TLS failed.
func (m *mux) dial(target string) (net.Conn, error) {
	deadline := time.Now().Add(m.timeout)
	conn, err := net.DialTimeout("tcp", target, m.timeout)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnreachable, err)
	}
	setNoDelay(conn)
	if m.tls.client == nil {
		return conn, nil
	}
	cfg := m.tls.client
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(target)
		if err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("%w: %v", errUnreachable, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	if err := m.handshake(tc, deadline); err != nil {
		_ = conn.Close()
		if m.ctx.Err() == nil {
			m.handshakeFailed(msgHandshakeFailed, hostOf(target), "dial", err)
		}
		return nil, fmt.Errorf("%w: %w with %s: %v", errUnreachable, ErrHandshake, target, err)
	}
	return tc, nil
}

// accept completes the server side of the handshake of an accepted
// connection (a no-op without TLS), on the connection's own goroutine so
// a slow or silent client holds up no other. It returns nil, having
// logged the failure, when the handshake fails.
func (m *mux) accept(conn net.Conn) net.Conn {
	if m.tls.server == nil {
		return conn
	}
	tc := tls.Server(conn, m.tls.server)
	if err := m.handshake(tc, time.Now().Add(m.timeout)); err != nil {
		if m.ctx.Err() == nil {
			m.handshakeFailed(msgHandshakeFailed, hostOf(conn.RemoteAddr().String()), "accept", err)
		}
		return nil
	}
	return tc
}

// checkClaim checks, with TLS, that the certificate the client presented
// on conn is valid for the address its hello claims, addr: for addr's
// host (an IP among its IP SANs, a name among its DNS SANs), as a dial to
// addr would check the server's; or, with Config.TLS.ServerName set, for
// that name, which every node's certificate carries (so then any holder
// of such a certificate can claim to be any node). Without the check, a
// node with any certificate of the CA could claim another's address and
// have its connection taken as the path to that node.
func (m *mux) checkClaim(conn net.Conn, addr string) error {
	if m.tls.server == nil {
		return nil
	}
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return errors.New("not a TLS connection")
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return errors.New("no client certificate")
	}
	name := m.tls.client.ServerName
	if name == "" {
		name = hostOf(addr)
	}
	if err := certs[0].VerifyHostname(name); err != nil {
		return fmt.Errorf("the client certificate is not valid for the address its hello claims, %s: %w", addr, err)
	}
	return nil
}

// handshake runs tc's handshake until deadline, or until the mux closes.
func (m *mux) handshake(tc *tls.Conn, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(m.ctx, deadline)
	defer cancel()
	_ = tc.SetDeadline(deadline)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	return tc.SetDeadline(time.Time{})
}

func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// handshakeLogEvery is how often, at most, handshake failures with one
// remote host are logged.
const handshakeLogEvery = time.Minute

// Messages of the failures handshakeFailed logs.
const (
	msgHandshakeFailed = "TLS handshake of a node-to-node connection failed; the connection is refused (failures with this host are logged at most once a minute)"
	msgClaimRefused    = "node-to-node connection refused: its certificate is not valid for the address it claims (refusals of this host are logged at most once a minute)"
)

// handshakeFailed logs a refused TLS connection with host, collapsed by
// m.handshakeLog: the first failure with a remote host is logged at
// once, later ones at most once per handshakeLogEvery, with the count
// not logged (repeated, over). A node without the right certificate
// retrying every few milliseconds costs one line a minute per node it
// tries, not a flood. Connections closed before saying anything (port
// scans, TCP health checks) are logged at Debug only.
func (m *mux) handshakeFailed(msg, host, side string, err error) {
	if errors.Is(err, io.EOF) {
		m.log.Debug("TLS handshake failed: the remote closed the connection", "remote", host, "side", side)
		return
	}
	m.handshakeLog.Log(m.log, slog.LevelWarn, msg, host, "remote", host, "side", side, "err", oneLine(err.Error()))
}
