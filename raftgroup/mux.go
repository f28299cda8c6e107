package raftgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/faultnet"
)

var (
	errMuxClosed   = errors.New("raftgroup: transport closed")
	errRPCTimeout  = errors.New("raftgroup: rpc timed out")
	errUnreachable = errors.New("raftgroup: peer unreachable")
	errConnLost    = errors.New("raftgroup: connection lost")
)

// mux is a node's one listener and its connections. It carries the Raft
// RPCs of every group on the node: one outbound connection per peer for the
// requests this node sends (answers come back on it), one inbound
// connection per peer for the requests it receives, and a short-lived
// connection per snapshot install so a large stream never holds up
// heartbeats.
type mux struct {
	addr string
	// self is this node's incarnation: requests addressed to any other
	// are refused (see the wire format).
	self    uint64
	log     *slog.Logger
	ln      net.Listener
	faults  *faultnet.Net
	timeout time.Duration
	// beatTimeout bounds heartbeats and leadership-confirming rounds:
	// an answer later than that is useless (the follower's election timer
	// has nearly run out), and waiting for it would hold raft's heartbeat
	// loop, which sends the next only after the last one is answered.
	beatTimeout time.Duration
	linger      time.Duration
	rpc         atomic.Pointer[RPCHandler]
	// ctx ends when the mux closes; RPC handlers run under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu struct {
		sync.Mutex
		closed  bool
		groups  map[uint64]*groupTransport
		peers   map[string]*peerSlot
		inbound map[net.Conn]struct{}
		// refusedFrom: peers whose misaddressed requests were logged, with
		// the incarnation they asked for (one line per peer and target,
		// not one per frame).
		refusedFrom map[string]uint64
	}
	groups atomic.Pointer[map[uint64]*groupTransport] // copy-on-write for the read path
	nextID atomic.Uint64
	stats  counters
	wg     sync.WaitGroup
	closed chan struct{}
}

// muxConfig is what a mux needs from its host.
type muxConfig struct {
	bind                         string
	self                         uint64 // the host's incarnation
	log                          *slog.Logger
	faults                       *faultnet.Net
	timeout, beatTimeout, linger time.Duration
}

func newMux(c muxConfig) (*mux, error) {
	ln, err := net.Listen("tcp", c.bind)
	if err != nil {
		return nil, fmt.Errorf("raftgroup: listen %s: %w", c.bind, err)
	}
	m := &mux{addr: ln.Addr().String(), self: c.self, log: c.log, ln: ln, faults: c.faults,
		timeout: c.timeout, beatTimeout: c.beatTimeout, linger: c.linger, closed: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.mu.groups = make(map[uint64]*groupTransport)
	m.mu.peers = make(map[string]*peerSlot)
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
	slots := m.mu.peers
	m.mu.peers = map[string]*peerSlot{}
	for c := range m.mu.inbound {
		_ = c.Close()
	}
	m.mu.Unlock()
	for _, s := range slots {
		s.mu.Lock()
		if s.pc != nil {
			s.pc.fail(errMuxClosed)
		}
		s.mu.Unlock()
	}
	m.wg.Wait()
}

// ---- outbound ----

type peerSlot struct {
	mu sync.Mutex
	pc *peerConn
}

type call struct {
	// done gets the response body or an error, exactly once, on a
	// transport goroutine; the caller decodes the body itself so a late
	// answer never writes into a struct raft has already given up on.
	done  func(body []byte, err error)
	timer *time.Timer // fails the call after the rpc timeout
}

// peerConn is the outbound connection to one peer.
type peerConn struct {
	m    *mux
	addr string
	w    *frameWriter

	mu      sync.Mutex
	pending map[uint64]*call
	err     error // set once broken; no new calls
}

// peer returns a working connection to addr, dialing if needed.
func (m *mux) peer(addr string) (*peerConn, error) {
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return nil, errMuxClosed
	}
	slot := m.mu.peers[addr]
	if slot == nil {
		slot = &peerSlot{}
		m.mu.peers[addr] = slot
	}
	m.mu.Unlock()

	slot.mu.Lock()
	defer slot.mu.Unlock()
	if pc := slot.pc; pc != nil {
		pc.mu.Lock()
		broken := pc.err != nil
		pc.mu.Unlock()
		if !broken {
			return pc, nil
		}
	}
	conn, err := net.DialTimeout("tcp", addr, m.timeout)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnreachable, err)
	}
	setNoDelay(conn)
	pc := &peerConn{m: m, addr: addr, pending: make(map[uint64]*call)}
	pc.w = newFrameWriter(conn, m.faults, m.addr, addr, m.linger, pc.fail)
	pc.w.stats = &m.stats
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		_ = conn.Close()
		return nil, errMuxClosed
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() { defer m.wg.Done(); pc.fail(pc.readLoop(conn)) }()
	// The hello goes out without the fault seam: it is connection set-up.
	hello := appendHeader(nil, frameHeader{kind: kindHello})
	hello = append(hello, m.addr...)
	finishFrame(hello, 0)
	pc.w.enqueue(hello, false)
	slot.pc = pc
	return pc, nil
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

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
	pc, err := m.peer(target)
	if err != nil {
		done(nil, err)
		return
	}
	id := m.nextID.Add(1)
	c := &call{done: done}
	pc.mu.Lock()
	if pc.err != nil {
		err := pc.err
		pc.mu.Unlock()
		done(nil, err)
		return
	}
	pc.pending[id] = c
	c.timer = time.AfterFunc(timeout, func() { pc.finish(id, nil, errRPCTimeout) })
	pc.mu.Unlock()

	if lazy {
		kind |= lazyFlag
	}
	fb := getFrame()
	b := appendHeader(*fb, frameHeader{kind: kind, group: group, id: id, to: to})
	b = encode(b)
	finishFrame(b, 0)
	ok := pc.w.send(b, lazy)
	*fb = b
	putFrame(fb)
	if !ok {
		pc.finish(id, nil, errConnLost)
	}
}

// finish completes call id with a response body or an error; unknown ids
// (duplicates, answers after a time-out) are ignored.
func (pc *peerConn) finish(id uint64, body []byte, err error) {
	pc.mu.Lock()
	c := pc.pending[id]
	delete(pc.pending, id)
	pc.mu.Unlock()
	if c == nil {
		return
	}
	c.timer.Stop()
	c.done(body, err)
}

func (pc *peerConn) readLoop(conn net.Conn) error {
	stats := &pc.m.stats
	r := bufio.NewReaderSize(&countingReader{conn, &stats.reads}, 64<<10)
	for {
		h, body, err := readFrame(r)
		if err != nil {
			return err
		}
		stats.framesRead.Add(1)
		if h.kind&respFlag == 0 {
			return fmt.Errorf("raftgroup: request kind %d on an outbound connection", h.kind)
		}
		pc.finish(h.id, body, nil)
	}
}

// fail breaks the connection: pending calls get err, later calls redial.
func (pc *peerConn) fail(err error) {
	if err == nil {
		err = errConnLost
	}
	pc.mu.Lock()
	if pc.err != nil {
		pc.mu.Unlock()
		return
	}
	pc.err = fmt.Errorf("%w: %v", errConnLost, err)
	pending := pc.pending
	pc.pending = nil
	pc.mu.Unlock()
	pc.w.close()
	for _, c := range pending {
		c.timer.Stop()
		c.done(nil, pc.err)
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
			m.serve(conn)
			m.mu.Lock()
			delete(m.mu.inbound, conn)
			m.mu.Unlock()
			_ = conn.Close()
		}()
	}
}

// serve reads requests from one inbound connection until it fails.
func (m *mux) serve(conn net.Conn) {
	counted := &countingReader{r: conn}
	r := bufio.NewReaderSize(counted, 64<<10)
	h, body, err := readFrame(r)
	if err != nil || h.kind != kindHello {
		return
	}
	peer := string(body)
	h, body, err = readFrame(r)
	if err != nil {
		return
	}
	if h.kind == kindInstallSnapshot {
		m.serveSnapshot(conn, peer, r, h, body)
		return
	}
	w := newFrameWriter(conn, m.faults, m.addr, peer, m.linger, func(error) { _ = conn.Close() })
	w.stats = &m.stats
	defer w.close()
	// From here on, count the reader's reads (the hello and the first
	// request were read uncounted: set-up).
	counted.reads = &m.stats.reads
	var seen dedup
	for {
		m.stats.framesRead.Add(1)
		if seen.first(h.id) {
			m.handleRequest(w, peer, h, body)
		}
		h, body, err = readFrame(r)
		if err != nil {
			return
		}
	}
}

func (m *mux) handleRequest(w *frameWriter, peer string, h frameHeader, body []byte) {
	// A lazy request gets a lazy answer; the flag is not part of the kind.
	lazy := h.kind&lazyFlag != 0
	h.kind &^= lazyFlag
	if h.kind&respFlag != 0 || h.kind == kindHello || h.kind == kindInstallSnapshot {
		return // not a request this connection carries; ignore
	}
	if h.to != m.self {
		w.send(m.refusal(peer, h), false)
		return
	}
	if h.kind == kindRPC {
		// The reading goroutine is itself counted in m.wg, so this Add
		// cannot race with close's Wait.
		m.wg.Add(1)
		m.stats.goroutines.Add(1)
		go func() { defer m.wg.Done(); m.serveRPC(w, h, body) }()
		return
	}
	gt := m.group(h.group)
	if gt == nil {
		respond(w, h, false, nil, fmt.Errorf("no group %d on %s", h.group, m.addr))
		return
	}
	cmd, err := decodeRequest(h.kind, body)
	if err != nil {
		respond(w, h, false, nil, err)
		return
	}
	var term uint64
	if h.kind == kindTimeoutNow {
		term = timeoutNowTerm(body)
	}
	if resp, err, ok := gt.intercept(cmd, term); ok {
		respond(w, h, false, resp, err)
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
				respond(w, h, lazy, res.Response, res.Error)
			default: // raft was shut down and dropped it
			}
			return
		}
	}
	if !gt.dispatch(rpc, pendingAnswer{w: w, h: h, lazy: lazy, ch: respCh}) {
		respond(w, h, false, nil, errors.New("group shut down"))
	}
}

func isHeartbeat(r *raft.AppendEntriesRequest) bool {
	//lint:ignore SA1019 raft still fills Leader
	return r.Term != 0 && (len(r.Addr) != 0 || len(r.Leader) != 0) &&
		r.PrevLogEntry == 0 && r.PrevLogTerm == 0 && len(r.Entries) == 0 && r.LeaderCommitIndex == 0
}

// respond sends the answer to request h.
func respond(w *frameWriter, h frameHeader, lazy bool, resp interface{}, rerr error) {
	fb := getFrame()
	b := appendHeader(*fb, frameHeader{kind: h.kind | respFlag, group: h.group, id: h.id})
	if rerr == nil {
		b = append(b, statusOK)
		var err error
		if b, err = appendResponse(b, resp); err != nil {
			rerr = err
			b = b[:headerLen]
		}
	}
	if rerr != nil {
		b = append(b, statusErr)
		b = append(b, rerr.Error()...)
	}
	finishFrame(b, 0)
	w.send(b, lazy)
	*fb = b
	putFrame(fb)
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
	conn, err := net.DialTimeout("tcp", target, m.timeout)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreachable, err)
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

	bw := bufio.NewWriterSize(conn, 64<<10)
	hello := appendHeader(nil, frameHeader{kind: kindHello})
	hello = append(hello, m.addr...)
	finishFrame(hello, 0)
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
	w := newFrameWriter(conn, nil, "", "", 0, nil)
	respond(w, h, false, resp, rerr)
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
