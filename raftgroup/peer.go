package raftgroup

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// peer is this node's link to one other node, known by its listen address:
// the connection to it and the calls in flight to it.
//
// One connection carries both directions: this node's requests and the
// peer's answers, the peer's requests and this node's answers, so an answer
// and a request to the same node leave in one write. Either side dials when
// it has no connection. When both dial at once, each side holds two for a
// moment, and both pick the same one to write on: the one the lower address
// dialed (then the newer). A side retires every connection it stopped
// writing on with a last frame, kindRetire; once a connection is retired
// by both sides, nothing more can arrive on it, and each side closes it.
// Until then its reader keeps reading, so nothing sent on it is lost.
//
// Calls are kept per peer, not per connection: the answer to a request may
// come back on another connection than the request went out on.
//
// Threading: safe for concurrent use.
type peer struct {
	m    *mux
	addr string
	// stats counts the peer's frames and bytes (Config.DetailedStats);
	// nil without.
	stats *peerCounters

	dialMu sync.Mutex               // one dial at a time
	active atomic.Pointer[peerConn] // where frames go; nil: dial

	mu struct {
		sync.Mutex
		conns   []*peerConn      // live, oldest first
		pending map[uint64]*call // by request id
	}
}

// peerConn is one connection to a peer. Its fields after w are guarded by
// the peer's mu.
type peerConn struct {
	p      *peer
	conn   net.Conn
	dialed bool // this node dialed it
	w      *frameWriter

	retiredByUs   bool // this side sent kindRetire: it writes nothing more
	retiredByPeer bool // the peer sent kindRetire
	closing       bool // retired both ways: this side closes it
	gone          bool // removed from the peer's conns
}

type call struct {
	// done gets the response body or an error, exactly once, on a
	// transport goroutine; the caller decodes the body itself so a late
	// answer never writes into a struct raft has already given up on.
	done  func(body []byte, err error)
	timer *time.Timer // fails the call after the rpc timeout
	// via is the connection the request was queued on; if it breaks, the
	// call fails. Nil until queued.
	via *peerConn
}

// peerFor returns the link to addr, creating it.
func (m *mux) peerFor(addr string) (*peer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return nil, errMuxClosed
	}
	p := m.mu.peers[addr]
	if p == nil {
		p = &peer{m: m, addr: addr}
		if m.detail != nil {
			p.stats = &peerCounters{}
		}
		p.mu.pending = make(map[uint64]*call)
		m.mu.peers[addr] = p
	}
	return p, nil
}

// conn returns the connection to write on, dialing if there is none.
func (p *peer) conn() (*peerConn, error) {
	if pc := p.active.Load(); pc != nil {
		return pc, nil
	}
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if pc := p.active.Load(); pc != nil {
		return pc, nil // the peer dialed us, or another sender did
	}
	if err := p.dial(); err != nil {
		return nil, err
	}
	if pc := p.active.Load(); pc != nil {
		return pc, nil
	}
	return nil, errConnLost
}

// dial opens a connection to the peer and adds it.
func (p *peer) dial() error {
	conn, err := p.m.dial(p.addr)
	if err != nil {
		return err
	}
	// The hello goes out before the writer starts, and without the fault
	// seam: it is connection set-up.
	if _, err := conn.Write(helloFrame(kindPeerHello, p.m.addr)); err != nil {
		_ = conn.Close()
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	_, err = p.adopt(conn, nil)
	return err
}

// adopt adds a connection that has passed its hello and starts its writer.
// A connection this node accepted comes with the reader its hello was read
// from, and the caller, a goroutine the mux waits for, runs pc.serve on
// it; for one it dialed (r nil), adopt starts the reader.
func (p *peer) adopt(conn net.Conn, r *bufio.Reader) (*peerConn, error) {
	m := p.m
	pc := &peerConn{p: p, conn: conn, dialed: r == nil}
	pc.w = newFrameWriter(conn, m.faults, m.addr, p.addr, m.linger, pc.fail)
	pc.w.stats = &m.stats
	if p.stats != nil {
		pc.w.peer, pc.w.perWrite = p.stats, &m.detail.framesPerWrite
	}
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		_ = conn.Close()
		return nil, errMuxClosed
	}
	m.wg.Add(1)
	if pc.dialed {
		m.wg.Add(1)
	}
	m.mu.Unlock()
	go func() { defer m.wg.Done(); pc.w.run() }()
	if pc.dialed {
		r := bufio.NewReaderSize(&countingReader{r: conn, reads: &m.stats.reads, peer: p.stats}, 64<<10)
		go func() { defer m.wg.Done(); pc.serve(r) }()
	}

	p.mu.Lock()
	p.mu.conns = append(p.mu.conns, pc)
	p.chooseLocked()
	p.mu.Unlock()
	// mux.close may have swept the peers before this connection joined.
	select {
	case <-m.closed:
		pc.fail(errMuxClosed)
	default:
	}
	return pc, nil
}

// chooseLocked picks the connection to write on, and retires the others:
// first one the peer has not retired, then one the lower address dialed
// (both sides pick it), then the newest.
func (p *peer) chooseLocked() {
	lowerDials := p.m.addr < p.addr // this node dials the preferred ones
	score := func(pc *peerConn) int {
		s := 0
		if !pc.retiredByPeer {
			s += 2
		}
		if pc.dialed == lowerDials {
			s++
		}
		return s
	}
	var best *peerConn
	for _, pc := range p.mu.conns {
		if !pc.retiredByUs && (best == nil || score(pc) >= score(best)) {
			best = pc
		}
	}
	p.active.Store(best)
	if best == nil {
		return
	}
	for _, pc := range p.mu.conns {
		if pc != best && !pc.retiredByUs {
			pc.retiredByUs = true
			pc.w.retire(retireFrame)
			p.closeIfRetiredLocked(pc)
		}
	}
}

// retireFrame is the last frame a side writes on a connection it retires.
var retireFrame = helloFrame(kindRetire, "")

func helloFrame(kind byte, addr string) []byte {
	b := appendHeader(nil, frameHeader{kind: kind})
	b = append(b, addr...)
	finishFrame(b, 0)
	return b
}

// closeIfRetiredLocked closes pc, after its queued frames, once both sides
// retired it: neither writes on it any more.
func (p *peer) closeIfRetiredLocked(pc *peerConn) {
	if pc.retiredByUs && pc.retiredByPeer && !pc.closing {
		pc.closing = true
		pc.w.finish()
	}
}

// serve reads frames from pc until it fails or is closed, then removes it.
func (pc *peerConn) serve(r *bufio.Reader) {
	err := pc.readLoop(r)
	pc.p.mu.Lock()
	graceful := pc.closing
	pc.p.mu.Unlock()
	if graceful {
		pc.p.remove(pc, nil)
		return
	}
	pc.fail(err)
}

func (pc *peerConn) readLoop(r *bufio.Reader) error {
	p, m := pc.p, pc.p.m
	var seen dedup
	for {
		h, body, err := readFrame(r)
		if err != nil {
			return err
		}
		m.stats.framesRead.Add(1)
		if p.stats != nil {
			p.stats.framesRead.Add(1)
		}
		switch {
		case h.kind == kindRetire:
			p.mu.Lock()
			pc.retiredByPeer = true
			p.chooseLocked()
			p.closeIfRetiredLocked(pc)
			p.mu.Unlock()
		case h.kind&respFlag != 0:
			m.collapse.Reachable(m.log, p.addr)
			p.finish(h.id, body, nil)
		case seen.first(h.id):
			m.handleRequest(p, h, body)
		}
	}
}

// fail breaks pc: it is closed, and the calls queued on it fail with err.
func (pc *peerConn) fail(err error) {
	if err == nil {
		err = errConnLost
	}
	pc.p.remove(pc, fmt.Errorf("%w: %v", errConnLost, err))
}

// remove drops pc from the peer and closes it. With err nil (a retired
// connection), its calls move to the connection now in use, where their
// answers will come; otherwise they fail with err.
func (p *peer) remove(pc *peerConn, err error) {
	// Close the writer first: a sender that queues on pc after the sweep
	// below finds it closed, and moves on.
	pc.w.close()
	p.mu.Lock()
	if pc.gone {
		p.mu.Unlock()
		return
	}
	pc.gone = true
	for i, c := range p.mu.conns {
		if c == pc {
			p.mu.conns = append(p.mu.conns[:i], p.mu.conns[i+1:]...)
			break
		}
	}
	p.chooseLocked()
	next := p.active.Load()
	var failed []*call
	for id, c := range p.mu.pending {
		if c.via != pc {
			continue
		}
		if err == nil && next != nil {
			c.via = next
			continue
		}
		delete(p.mu.pending, id)
		failed = append(failed, c)
	}
	p.mu.Unlock()
	if err == nil {
		err = errConnLost
	}
	for _, c := range failed {
		c.timer.Stop()
		c.done(nil, err)
	}
}

// close breaks every connection to the peer (the mux is closing).
func (p *peer) close() {
	p.mu.Lock()
	conns := append([]*peerConn(nil), p.mu.conns...)
	p.mu.Unlock()
	for _, pc := range conns {
		pc.fail(errMuxClosed)
	}
}

// send queues a frame on the connection in use, moving on if that one is
// being retired or just broke. If id names a pending call, the call follows
// the frame; if it is no longer pending, nothing is sent. With dial false
// (answers) it never dials: the request's own connection is gone, and so
// is the caller's wait. It reports false if no connection took the frame.
func (p *peer) send(frame []byte, lazy, dial bool, id uint64) bool {
	for range 4 {
		pc := p.active.Load()
		if pc == nil {
			if !dial {
				return false
			}
			var err error
			if pc, err = p.conn(); err != nil {
				return false
			}
		}
		if id != 0 {
			p.mu.Lock()
			c := p.mu.pending[id]
			if c != nil {
				c.via = pc
			}
			p.mu.Unlock()
			if c == nil {
				return true // answered or failed already
			}
		}
		if pc.w.send(frame, lazy) {
			return true
		}
	}
	return false
}

// finish completes call id with a response body or an error; unknown ids
// (duplicates, answers after a time-out) are ignored.
func (p *peer) finish(id uint64, body []byte, err error) {
	p.mu.Lock()
	c := p.mu.pending[id]
	delete(p.mu.pending, id)
	p.mu.Unlock()
	if c == nil {
		return
	}
	c.timer.Stop()
	c.done(body, err)
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}
