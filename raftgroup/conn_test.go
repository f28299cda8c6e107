package raftgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testutil"
)

// brokenPeer is a peer link whose one connection breaks on its first
// write, with one call pending on it.
type brokenPeer struct {
	p        *peer
	pc       *peerConn
	answered atomic.Pointer[error]
	writer   sync.WaitGroup
}

// newBrokenPeer wires a peer the way mux.peerFor and adopt do, over one end
// of a net.Pipe whose other end is already closed, so the write fails at
// once and deterministically. faults, if set, is consulted from "a" to "b".
func newBrokenPeer(t *testing.T, faults *faultnet.Net) *brokenPeer {
	t.Helper()
	local, remote := net.Pipe()
	_ = remote.Close()
	bp := &brokenPeer{p: &peer{m: &mux{addr: "a"}, addr: "b"}}
	bp.p.mu.pending = make(map[uint64]*call)
	bp.pc = &peerConn{p: bp.p, conn: local, dialed: true}
	bp.pc.w = newFrameWriter(local, faults, "a", "b", time.Millisecond, bp.pc.fail)
	bp.p.mu.conns = []*peerConn{bp.pc}
	bp.p.chooseLocked()
	bp.p.mu.pending[1] = &call{
		done:  func(_ []byte, err error) { bp.answered.Store(&err) },
		timer: time.AfterFunc(time.Hour, func() {}),
		via:   bp.pc,
	}
	bp.writer.Add(1)
	go func() { defer bp.writer.Done(); bp.pc.w.run() }()
	t.Cleanup(func() { bp.pc.fail(errMuxClosed); bp.writer.Wait() })
	return bp
}

// waitFailed waits for the broken write to have failed the connection: the
// pending call was answered with errConnLost (possibly sent, so not
// NotSent), the connection left the peer, and its writer returned.
func (bp *brokenPeer) waitFailed(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "the pending call to be answered", func() bool {
		return bp.answered.Load() != nil
	})
	if err := *bp.answered.Load(); !errors.Is(err, errConnLost) || NotSent(err) {
		t.Fatalf("pending call answered with %v, want errConnLost", err)
	}
	bp.writer.Wait()
	if bp.p.active.Load() != nil {
		t.Fatal("the broken connection is still in use")
	}
	if bp.p.send([]byte("late"), false, false, 0) {
		t.Fatal("send with no connection left reported success")
	}
}

// A lazy frame is written once the linger timer wakes the writer. When
// that write fails, the connection is dropped and its calls fail.
func TestFrameWriterLingerFlushFails(t *testing.T) {
	bp := newBrokenPeer(t, nil)
	if !bp.pc.w.send([]byte("heartbeat"), true) {
		t.Fatal("send on an open writer reported closed")
	}
	bp.waitFailed(t)
}

// The same through the fault seam: a delayed, duplicated frame is queued
// by its delay timer's callback.
func TestFrameWriterDelayedFlushFails(t *testing.T) {
	faults := faultnet.New(1)
	faults.Set("a", "b", faultnet.Rule{Delay: time.Millisecond, Duplicate: 1})
	bp := newBrokenPeer(t, faults)
	if !bp.pc.w.send([]byte("append"), false) {
		t.Fatal("send on an open writer reported closed")
	}
	bp.waitFailed(t)
}

// heldConn blocks its first Write until release is closed.
type heldConn struct {
	net.Conn
	writing chan struct{} // closed when the first Write starts
	release chan struct{}
	once    sync.Once
}

func (c *heldConn) Write(b []byte) (int, error) {
	first := false
	c.once.Do(func() { first = true; close(c.writing) })
	if first {
		<-c.release
	}
	return c.Conn.Write(b)
}

// newTestWriter runs a writer on one end of a pipe; the other end is read
// into the returned channel, a frame at a time, until it fails.
func newTestWriter(t *testing.T, wrap func(net.Conn) net.Conn) (*frameWriter, *counters, <-chan frameHeader) {
	t.Helper()
	local, remote := net.Pipe()
	stats := &counters{}
	w := newFrameWriter(wrap(local), nil, "a", "b", time.Millisecond, func(error) {})
	w.stats = stats
	frames := make(chan frameHeader, 1024)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); w.run() }()
	go func() {
		defer wg.Done()
		defer close(frames)
		r := bufio.NewReader(remote)
		for {
			h, _, err := readFrame(r)
			if err != nil {
				return
			}
			frames <- h
		}
	}()
	t.Cleanup(func() { w.close(); _ = remote.Close(); wg.Wait() })
	return w, stats, frames
}

func testFrame(id uint64) []byte {
	b := appendHeader(nil, frameHeader{kind: kindRPC, id: id})
	finishFrame(b, 0)
	return b
}

// Frames queued while the writer is in a write leave together in the
// next one: the senders never write themselves.
func TestFrameWriterDrainsQueueInOneWrite(t *testing.T) {
	held := &heldConn{writing: make(chan struct{}), release: make(chan struct{})}
	w, stats, frames := newTestWriter(t, func(c net.Conn) net.Conn { held.Conn = c; return held })
	const n = 10
	w.send(testFrame(1), false)
	<-held.writing // the writer took frame 1 and is blocked in its write
	for id := uint64(2); id <= n; id++ {
		if !w.send(testFrame(id), false) {
			t.Fatal("send reported closed")
		}
	}
	close(held.release)
	for id := uint64(1); id <= n; id++ {
		if h := <-frames; h.id != id {
			t.Fatalf("frame %d arrived as %d", id, h.id)
		}
	}
	if f, wr := stats.framesWritten.Load(), stats.writes.Load(); f != n || wr != 2 {
		t.Fatalf("%d frames in %d writes, want %d in 2", f, wr, n)
	}
}

// A retired writer writes its retire frame last, refuses later frames,
// and, told to finish, closes the connection after the frames queued.
func TestFrameWriterRetireThenFinish(t *testing.T) {
	w, _, frames := newTestWriter(t, func(c net.Conn) net.Conn { return c })
	w.send(testFrame(1), false)
	w.retire(retireFrame)
	if w.send(testFrame(2), false) || w.send(testFrame(3), true) {
		t.Fatal("a retired writer took a frame")
	}
	w.finish()
	var got []byte
	for h := range frames { // ends when the writer closes the pipe
		got = append(got, h.kind)
	}
	if want := []byte{kindRPC, kindRetire}; string(got) != string(want) {
		t.Fatalf("frames %v, want %v", got, want)
	}
}

// twoHosts starts two hosts, a and b with a's address the lower, both
// answering Calls with their request.
func twoHosts(t *testing.T) (a, b *Host) {
	t.Helper()
	c := newTestCluster(t, 2, 0)
	a, b = c.hosts[0], c.hosts[1]
	if b.Addr() < a.Addr() {
		a, b = b, a
	}
	for _, h := range c.hosts {
		h.SetRPCHandler(func(_ context.Context, req []byte) ([]byte, error) { return req, nil })
	}
	return a, b
}

// callBothWays runs n Calls each way at once and fails on any error.
func callBothWays(t *testing.T, a, b *Host, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		for _, pair := range [][2]*Host{{a, b}, {b, a}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				req := fmt.Appendf(nil, "%d", i)
				ans, err := pair[0].Call(ctx, pair[1].ID(), pair[1].Addr(), req)
				if err == nil && string(ans) != string(req) {
					err = fmt.Errorf("answer %q to %q", ans, req)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// conns returns h's connections to the node at addr.
func conns(h *Host, addr string) []*peerConn {
	p, err := h.mux.peerFor(addr)
	if err != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*peerConn(nil), p.mu.conns...)
}

// oneSharedConn reports whether a and b hold exactly one connection to
// each other, the same one (its two ends), and whether a dialed it.
func oneSharedConn(a, b *Host) (shared, aDialed bool) {
	ca, cb := conns(a, b.Addr()), conns(b, a.Addr())
	shared = len(ca) == 1 && len(cb) == 1 && ca[0].dialed != cb[0].dialed &&
		ca[0].conn.LocalAddr().String() == cb[0].conn.RemoteAddr().String()
	return shared, shared && ca[0].dialed
}

// Requests and answers of both directions share one connection, whoever
// dialed it (both may have: then they keep one).
func TestOneConnectionPerPeerPair(t *testing.T) {
	a, b := twoHosts(t)
	callBothWays(t, a, b, 50)
	testutil.Eventually(t, 5*time.Second, "one connection between a and b", func() bool {
		shared, _ := oneSharedConn(a, b)
		return shared
	})
	before := a.Stats().Writes + b.Stats().Writes
	callBothWays(t, a, b, 50)
	if shared, _ := oneSharedConn(a, b); !shared {
		t.Fatalf("connections after more calls: a holds %d, b holds %d; want the same one", len(conns(a, b.Addr())), len(conns(b, a.Addr())))
	}
	if a.Stats().Writes+b.Stats().Writes == before {
		t.Fatal("the calls wrote nothing")
	}
}

// When both nodes dial each other at once, both keep the connection the
// lower address dialed, close the other, and lose no call on the way.
func TestSimultaneousDialsKeepOne(t *testing.T) {
	a, b := twoHosts(t)
	pa, _ := a.mux.peerFor(b.Addr())
	pb, _ := b.mux.peerFor(a.Addr())
	// b dials first, and uses its connection, before a's arrives.
	if err := pb.dial(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "a to accept b's connection", func() bool { return len(conns(a, b.Addr())) == 1 })
	callBothWays(t, a, b, 20)
	if err := pa.dial(); err != nil {
		t.Fatal(err)
	}
	callBothWays(t, a, b, 50)
	testutil.Eventually(t, 5*time.Second, "one connection, a's, on both sides", func() bool {
		_, aDialed := oneSharedConn(a, b)
		return aDialed
	})
	callBothWays(t, a, b, 20)
}

// A node restarted on the same address (a new incarnation) is reached
// again, both ways, and old connections go.
func TestPeerRestartReconnects(t *testing.T) {
	c := newTestCluster(t, 2, 0)
	a, b := c.hosts[0], c.hosts[1]
	echo := func(_ context.Context, req []byte) ([]byte, error) { return req, nil }
	a.SetRPCHandler(echo)
	b.SetRPCHandler(echo)
	callBothWays(t, a, b, 5)
	addr := b.Addr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := c.config(b.NodeID())
	cfg.BindAddr = addr
	b2, err := NewHost(cfg)
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	c.hosts[1] = b2
	b2.SetRPCHandler(echo)
	testutil.Eventually(t, 5*time.Second, "a call to the new incarnation to succeed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := a.Call(ctx, b2.ID(), addr, []byte("x"))
		return err == nil
	})
	callBothWays(t, a, b2, 20)
	testutil.Eventually(t, 5*time.Second, "one connection left", func() bool {
		return len(conns(a, addr)) == 1 && len(conns(b2, a.Addr())) == 1
	})
}
