package raftgroup

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/netaddr"
	"github.com/gridkv/gridkv/internal/rlog"
)

var (
	errMuxClosed   = errors.New("raftgroup: transport closed")
	errRPCTimeout  = errors.New("raftgroup: rpc timed out")
	errUnreachable = errors.New("raftgroup: peer unreachable")
	errConnLost    = errors.New("raftgroup: connection lost")
)

// mux is a node's one listener and its connections. It carries the Raft
// RPCs of every group on the node, and Host.Call's: one connection per peer
// for everything between the two nodes, both directions (see peer), and a
// short-lived connection per snapshot install so a large stream never holds
// up heartbeats. With Config.TLS, each of these connections is mutual TLS
// (tls.go): the listener's handshake runs on the connection's goroutine,
// a dial's in the dialer, both bounded by timeout.
type mux struct {
	// addr is the advertised address, the one the others dial: this
	// node's name in hello frames and Raft headers (ln.Addr is the bound
	// one).
	addr string
	// self is this node's incarnation: requests addressed to any other
	// are refused (see the wire format).
	self uint64
	log  *slog.Logger
	// collapse hears of every answer from a peer (Reachable), so raft's
	// collapsed failures about it end with one line.
	collapse *rlog.Collapser
	ln       net.Listener
	faults   *faultnet.Net
	timeout  time.Duration
	// beatTimeout bounds heartbeats and leadership-confirming rounds:
	// an answer later than that is useless (the follower's election timer
	// has nearly run out), and waiting for it would hold raft's heartbeat
	// loop, which sends the next only after the last one is answered.
	beatTimeout time.Duration
	linger      time.Duration
	// tls is the listener's and the dialer's TLS (Config.TLS); nil
	// configs: plaintext.
	tls tlsConfigs
	// handshakeLog collapses the warnings about refused TLS connections
	// (handshakeFailed): one line per remote host, then a count at most
	// once per handshakeLogEvery.
	handshakeLog *rlog.Collapser
	rpc          atomic.Pointer[RPCHandler]
	// ctx ends when the mux closes; RPC handlers run under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu struct {
		sync.Mutex
		closed  bool
		groups  map[uint64]*groupTransport
		peers   map[string]*peer
		inbound map[net.Conn]struct{}
		// refusedFrom: peers whose misaddressed requests were logged, with
		// the incarnation they asked for (one line per peer and target,
		// not one per frame).
		refusedFrom map[string]uint64
	}
	groups atomic.Pointer[map[uint64]*groupTransport] // copy-on-write for the read path
	nextID atomic.Uint64
	stats  counters
	// detail is counted only with Config.DetailedStats; nil without.
	detail *detailCounters
	wg     sync.WaitGroup
	closed chan struct{}
}

// muxConfig is what a mux needs from its host.
type muxConfig struct {
	bind, advertise              string
	self                         uint64 // the host's incarnation
	log                          *slog.Logger
	collapse                     *rlog.Collapser
	faults                       *faultnet.Net
	timeout, beatTimeout, linger time.Duration
	tls                          *tls.Config // Config.TLS
	detailed                     bool        // Config.DetailedStats
}

func newMux(c muxConfig) (*mux, error) {
	ln, err := net.Listen("tcp", c.bind)
	if err != nil {
		return nil, fmt.Errorf("raftgroup: listen %s: %w", c.bind, err)
	}
	addr, err := netaddr.Advertised(ln.Addr().String(), c.advertise, netaddr.PrivateIP)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("raftgroup: %w", err)
	}
	m := &mux{addr: addr, self: c.self, log: c.log, collapse: c.collapse, ln: ln, faults: c.faults,
		timeout: c.timeout, beatTimeout: c.beatTimeout, linger: c.linger, tls: newTLSConfigs(c.tls), closed: make(chan struct{}),
		handshakeLog: rlog.NewCollapser(rlog.CollapseOptions{Interval: handshakeLogEvery})}
	if c.detailed {
		m.detail = &detailCounters{}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.mu.groups = make(map[uint64]*groupTransport)
	m.mu.peers = make(map[string]*peer)
	m.mu.inbound = make(map[net.Conn]struct{})
	m.mu.refusedFrom = make(map[string]uint64)
	empty := map[uint64]*groupTransport{}
	m.groups.Store(&empty)
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.acceptLoop() }()
	return m, nil
}

func (m *mux) register(gt *groupTransport) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return errMuxClosed
	}
	if _, ok := m.mu.groups[gt.group]; ok {
		return fmt.Errorf("raftgroup: group %d already exists on this node", gt.group)
	}
	m.mu.groups[gt.group] = gt
	m.publishGroupsLocked()
	return nil
}

func (m *mux) unregister(gt *groupTransport) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.groups[gt.group] == gt {
		delete(m.mu.groups, gt.group)
		m.publishGroupsLocked()
	}
}

func (m *mux) publishGroupsLocked() {
	cp := make(map[uint64]*groupTransport, len(m.mu.groups))
	for k, v := range m.mu.groups {
		cp[k] = v
	}
	m.groups.Store(&cp)
}

func (m *mux) group(id uint64) *groupTransport { return (*m.groups.Load())[id] }

func (m *mux) close() {
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return
	}
	m.mu.closed = true
	close(m.closed)
	m.cancel()
	_ = m.ln.Close()
	peers := m.mu.peers
	m.mu.peers = map[string]*peer{}
	for c := range m.mu.inbound {
		_ = c.Close()
	}
	m.mu.Unlock()
	for _, p := range peers {
		p.close()
	}
	m.wg.Wait()
	m.handshakeLog.Flush() // counts of refused handshakes not yet written
}

// ---- requests ----

// start sends one request to incarnation to, listening at target; done is
// called once with the answer's body or an error. encode appends the
// request body. A lazy request may linger briefly to share a write (see
// frameWriter).
func (m *mux) start(target string, to uint64, group uint64, kind byte, lazy bool, encode func([]byte) []byte, done func([]byte, error)) {
	m.startWithin(target, to, group, kind, lazy, m.timeout, encode, done)
}

// startWithin is start with a time-out of its own.
func (m *mux) startWithin(target string, to uint64, group uint64, kind byte, lazy bool, timeout time.Duration, encode func([]byte) []byte, done func([]byte, error)) {
	if m.faults.Cut(m.addr, target) {
		done(nil, errUnreachable)
		return
	}
	p, err := m.peerFor(target)
	if err == nil {
		_, err = p.conn() // dial before the call is pending, so a failure reads as not sent
	}
	if err != nil {
		done(nil, err)
		return
	}
	id := m.nextID.Add(1)
	c := &call{done: done}
	p.mu.Lock()
	p.mu.pending[id] = c
	c.timer = time.AfterFunc(timeout, func() { p.finish(id, nil, errRPCTimeout) })
	p.mu.Unlock()

	if lazy {
		kind |= lazyFlag
	}
	fb := getFrame()
	b := appendHeader(*fb, frameHeader{kind: kind, group: group, id: id, to: to})
	b = encode(b)
	finishFrame(b, 0)
	ok := p.send(b, lazy, true, id)
	*fb = b
	putFrame(fb)
	if !ok {
		p.finish(id, nil, errConnLost)
	}
}

// ---- inbound ----

func (m *mux) acceptLoop() {
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		m.mu.Lock()
		if m.mu.closed {
			m.mu.Unlock()
			_ = conn.Close()
			return
		}
		m.mu.inbound[conn] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		setNoDelay(conn)
		go func() {
			defer m.wg.Done()
			// The TLS handshake runs here, not on the accept loop: a slow
			// client must not hold up the others.
			if c := m.accept(conn); c != nil {
				m.serve(c)
			}
			m.mu.Lock()
			delete(m.mu.inbound, conn)
			m.mu.Unlock()
			_ = conn.Close()
		}()
	}
}

// serve reads the hello of one inbound connection, then serves it: a
// snapshot install, or this node's connection with the peer.
func (m *mux) serve(conn net.Conn) {
	counted := &countingReader{r: conn} // counting from the hello on, for peer connections
	r := bufio.NewReaderSize(counted, 64<<10)
	h, body, err := readFrame(r)
	if err != nil {
		return
	}
	from := string(body)
	if err := checkHelloAddr(from); err != nil {
		m.log.Debug("refusing a node-to-node connection: its hello names no usable address",
			"remote", hostOf(conn.RemoteAddr().String()), "err", err)
		return
	}
	if err := m.checkClaim(conn, from); err != nil {
		m.handshakeFailed(msgClaimRefused, hostOf(conn.RemoteAddr().String()), "accept", err)
		return
	}
	switch h.kind {
	case kindHello:
		h, body, err = readFrame(r)
		if err == nil && h.kind == kindInstallSnapshot {
			m.serveSnapshot(conn, from, r, h, body)
		}
	case kindPeerHello:
		counted.reads = &m.stats.reads
		p, err := m.peerFor(from)
		if err != nil {
			return
		}
		counted.peer = p.stats
		if pc, err := p.adopt(conn, r); err == nil {
			pc.serve(r)
		}
	}
}

// maxHelloAddr bounds the address a hello may carry: a host name is at
// most 253 bytes, a port 5 digits.
const maxHelloAddr = 256

// checkHelloAddr checks the address an inbound hello claims, before it
// becomes the key of a peer, a label value of the per-peer metrics
// (gridkv_transport_*{peer}) and a log attribute: it comes from whoever
// connected, so it must be valid UTF-8, at most maxHelloAddr bytes, and a
// host:port with a non-empty host and a numeric port.
func checkHelloAddr(addr string) error {
	if len(addr) > maxHelloAddr {
		return fmt.Errorf("address of %d bytes, more than %d", len(addr), maxHelloAddr)
	}
	if !utf8.ValidString(addr) {
		return errors.New("address is not valid UTF-8")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("address %q has no numeric port", addr)
	}
	return nil
}

func (m *mux) handleRequest(p *peer, h frameHeader, body []byte) {
	// A lazy request gets a lazy answer; the flag is not part of the kind.
	lazy := h.kind&lazyFlag != 0
	h.kind &^= lazyFlag
	switch h.kind {
	case kindAppendEntries, kindRequestVote, kindRequestPreVote, kindTimeoutNow, kindRPC:
	default:
		return // not a request this connection carries; ignore
	}
	if h.to != m.self {
		p.send(m.refusal(p.addr, h), false, false, 0)
		return
	}
	if h.kind == kindRPC {
		// The reading goroutine is itself counted in m.wg, so this Add
		// cannot race with close's Wait.
		m.wg.Add(1)
		m.stats.goroutines.Add(1)
		go func() { defer m.wg.Done(); m.serveRPC(p, h, body) }()
		return
	}
	gt := m.group(h.group)
	if gt == nil {
		respond(p, h, false, nil, fmt.Errorf("no group %d on %s", h.group, m.addr))
		return
	}
	cmd, err := decodeRequest(h.kind, body)
	if err != nil {
		respond(p, h, false, nil, err)
		return
	}
	var term uint64
	if h.kind == kindTimeoutNow {
		term = timeoutNowTerm(body)
	}
	if resp, err, ok := gt.intercept(cmd, term); ok {
		respond(p, h, false, resp, err)
		return
	}
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: cmd, RespChan: respCh}
	if ae, ok := cmd.(*raft.AppendEntriesRequest); ok && isHeartbeat(ae) {
		if hb := gt.heartbeatHandler(); hb != nil {
			// Fast path: raft answers heartbeats synchronously, off its main
			// loop, so a busy group never delays them.
			hb(rpc)
			select {
			case res := <-respCh:
				gt.noteAnswer(res)
				respond(p, h, lazy, res.Response, res.Error)
			default: // raft was shut down and dropped it
			}
			return
		}
	}
	if !gt.dispatch(rpc, pendingAnswer{p: p, h: h, lazy: lazy, ch: respCh}) {
		respond(p, h, false, nil, errors.New("group shut down"))
	}
}

func isHeartbeat(r *raft.AppendEntriesRequest) bool {
	//lint:ignore SA1019 raft still fills Leader
	return r.Term != 0 && (len(r.Addr) != 0 || len(r.Leader) != 0) &&
		r.PrevLogEntry == 0 && r.PrevLogTerm == 0 && len(r.Entries) == 0 && r.LeaderCommitIndex == 0
}

// respond sends the answer to request h to peer p.
func respond(p *peer, h frameHeader, lazy bool, resp interface{}, rerr error) {
	fb := getFrame()
	b := appendAnswer(*fb, h, resp, rerr)
	p.send(b, lazy, false, 0)
	*fb = b
	putFrame(fb)
}

// appendAnswer appends the answer frame to request h.
func appendAnswer(b []byte, h frameHeader, resp interface{}, rerr error) []byte {
	start := len(b)
	b = appendHeader(b, frameHeader{kind: h.kind | respFlag, group: h.group, id: h.id})
	if rerr == nil {
		b = append(b, statusOK)
		var err error
		if b, err = appendResponse(b, resp); err != nil {
			rerr = err
			b = b[:start+headerLen]
		}
	}
	if rerr != nil {
		b = append(b, statusErr)
		b = append(b, rerr.Error()...)
	}
	finishFrame(b, start)
	return b
}

// refusal is the answer to request h, which peer addressed to another
// incarnation than this one. The first such request from a peer for a
// given incarnation is logged; the sender's raft sees the server it meant
// as unreachable.
func (m *mux) refusal(peer string, h frameHeader) []byte {
	m.mu.Lock()
	first := m.mu.refusedFrom[peer] != h.to
	if first {
		if len(m.mu.refusedFrom) >= 1024 {
			clear(m.mu.refusedFrom) // bound the memory; at worst a line again
		}
		m.mu.refusedFrom[peer] = h.to
	}
	m.mu.Unlock()
	if first {
		m.log.Warn("refusing requests meant for another incarnation of this node (it restarted; the sender's view is stale)",
			"peer", peer, "addressed_to", h.to, "incarnation", m.self)
	}
	b := appendHeader(nil, frameHeader{kind: h.kind | respFlag, group: h.group, id: h.id})
	b = append(b, statusRefused)
	b = fmt.Appendf(b, "incarnation %d is not running at %s", h.to, m.addr)
	finishFrame(b, 0)
	return b
}

// ---- snapshots ----

// installSnapshot streams a snapshot on a connection of its own.
func (m *mux) installSnapshot(target string, to uint64, group uint64, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if m.faults.Cut(m.addr, target) {
		return errUnreachable
	}
	conn, err := m.dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Scale the deadline with the size, as hashicorp's NetworkTransport does.
	timeout := m.timeout
	if scaled := m.timeout * time.Duration(args.Size/(256<<10)); scaled > timeout {
		timeout = scaled
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	stop := closeOnSignal(m.closed, conn)
	defer stop()

	var w io.Writer = conn
	if p, err := m.peerFor(target); err == nil && p.stats != nil {
		// Counted with the peer's frames (its connection of its own is
		// not one of the peer's, which PeerStats lists by).
		w = &peerWriter{w: conn, peer: p.stats}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	hello := helloFrame(kindHello, m.addr)
	req := appendHeader(nil, frameHeader{kind: kindInstallSnapshot, group: group, to: to})
	req = appendInstallSnapshotRequest(req, args)
	finishFrame(req, 0)
	bw.Write(hello)
	bw.Write(req)
	if _, err := io.Copy(bw, data); err != nil {
		return fmt.Errorf("raftgroup: send snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("raftgroup: send snapshot: %w", err)
	}
	_, body, err := readFrame(bufio.NewReader(conn))
	if err != nil {
		return fmt.Errorf("raftgroup: snapshot answer: %w", err)
	}
	return decodeResponse(body, resp)
}

func (m *mux) serveSnapshot(conn net.Conn, peer string, r *bufio.Reader, h frameHeader, body []byte) {
	if h.to != m.self {
		_, _ = conn.Write(m.refusal(peer, h))
		return
	}
	gt := m.group(h.group)
	var args raft.InstallSnapshotRequest
	err := decodeInstallSnapshotRequest(body, &args)
	if err == nil && gt == nil {
		err = fmt.Errorf("no group %d on %s", h.group, m.addr)
	}
	if err != nil {
		writeNow(conn, h, nil, err)
		return
	}
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: &args, Reader: io.LimitReader(r, args.Size), RespChan: respCh}
	if !gt.dispatch(rpc, pendingAnswer{}) {
		writeNow(conn, h, nil, errors.New("group shut down"))
		return
	}
	select {
	case res := <-respCh:
		writeNow(conn, h, res.Response, res.Error)
	case <-gt.closed:
	case <-m.closed:
	}
}

// writeNow answers on a snapshot connection, which has no writer goroutine.
func writeNow(conn net.Conn, h frameHeader, resp interface{}, rerr error) {
	_, _ = conn.Write(appendAnswer(nil, h, resp, rerr))
}

// closeOnSignal closes conn if closed fires before stop is called.
func closeOnSignal(closed <-chan struct{}, conn net.Conn) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-closed:
			_ = conn.Close()
		case <-done:
		}
	}()
	return func() { close(done); <-finished }
}
