package raftgroup

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/testutil"
)

// brokenPeer is an outbound peerConn whose connection breaks on its first
// write, with one call pending on it.
type brokenPeer struct {
	pc       *peerConn
	failed   atomic.Bool // onError (pc.fail) has returned
	answered atomic.Pointer[error]
}

// newBrokenPeer wires a peerConn the way mux.peer does, over one end of a
// net.Pipe whose other end is already closed, so the write fails at once
// and deterministically. faults, if set, is consulted from "a" to "b".
func newBrokenPeer(t *testing.T, faults *faultnet.Net) *brokenPeer {
	t.Helper()
	local, remote := net.Pipe()
	_ = remote.Close()
	bp := &brokenPeer{pc: &peerConn{addr: "b", pending: make(map[uint64]*call)}}
	bp.pc.w = newFrameWriter(local, faults, "a", "b", time.Millisecond, func(err error) {
		bp.pc.fail(err)
		bp.failed.Store(true)
	})
	bp.pc.pending[1] = &call{
		done:  func(_ []byte, err error) { bp.answered.Store(&err) },
		timer: time.AfterFunc(time.Hour, func() {}),
	}
	return bp
}

// waitFailed waits for the broken write to have failed the connection: its
// onError returned and the pending call was answered with errConnLost.
func (bp *brokenPeer) waitFailed(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "onError to return and the pending call to be answered", func() bool {
		return bp.failed.Load() && bp.answered.Load() != nil
	})
	if err := *bp.answered.Load(); !errors.Is(err, errConnLost) {
		t.Fatalf("pending call answered with %v, want errConnLost", err)
	}
	// Closing again from outside, as mux.close does, returns at once.
	bp.pc.fail(errMuxClosed)
	bp.pc.w.close()
}

// A lazy frame is written by the linger timer's callback. When that write
// fails, onError (peerConn.fail) closes the writer from inside the callback;
// close must not wait for the callback calling it.
func TestFrameWriterLingerFlushFails(t *testing.T) {
	bp := newBrokenPeer(t, nil)
	if !bp.pc.w.send([]byte("heartbeat"), true) {
		t.Fatal("send on an open writer reported closed")
	}
	bp.waitFailed(t)
}

// The same through the fault seam: a delayed frame is written by its delay
// timer's callback.
func TestFrameWriterDelayedFlushFails(t *testing.T) {
	faults := faultnet.New(1)
	faults.Set("a", "b", faultnet.Rule{Delay: time.Millisecond, Duplicate: 1})
	bp := newBrokenPeer(t, faults)
	if !bp.pc.w.send([]byte("append"), false) {
		t.Fatal("send on an open writer reported closed")
	}
	bp.waitFailed(t)
}

// watchedConn counts the writes under way.
type watchedConn struct {
	net.Conn
	writing atomic.Int32
	writes  atomic.Int32
}

func (c *watchedConn) Write(b []byte) (int, error) {
	c.writing.Add(1)
	defer c.writing.Add(-1)
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// close from outside still waits for a linger callback that is writing, so
// nothing writes to the connection after close returns.
func TestFrameWriterCloseWaitsForLingerWrite(t *testing.T) {
	local, remote := net.Pipe()
	defer remote.Close()
	// Nobody reads remote: a write on local blocks until local is closed.
	conn := &watchedConn{Conn: local}
	var errs atomic.Int32
	w := newFrameWriter(conn, nil, "a", "b", time.Millisecond, func(error) { errs.Add(1) })
	w.send([]byte("heartbeat"), true)
	testutil.Eventually(t, 5*time.Second, "the linger callback to start writing", func() bool {
		return conn.writing.Load() == 1
	})
	w.close()
	if n := conn.writing.Load(); n != 0 {
		t.Fatalf("%d writes still under way after close returned", n)
	}
	if w.send([]byte("late"), false) {
		t.Fatal("send after close reported success")
	}
	if n := conn.writes.Load(); n != 1 {
		t.Fatalf("%d writes, want 1", n)
	}
	testutil.Eventually(t, 5*time.Second, "onError for the broken write", func() bool {
		return errs.Load() == 1
	})
}

// The inbound pattern (mux.serve): onError only closes the connection, and
// the serving goroutine closes the writer once its read fails. A linger
// flush that fails must leave that close free to return.
func TestFrameWriterInboundLingerFlushFails(t *testing.T) {
	local, remote := net.Pipe()
	_ = remote.Close()
	var errs atomic.Int32
	w := newFrameWriter(local, nil, "b", "a", time.Millisecond, func(error) {
		errs.Add(1)
		_ = local.Close()
	})
	w.send([]byte("answer"), true)
	testutil.Eventually(t, 5*time.Second, "onError for the broken write", func() bool {
		return errs.Load() == 1
	})
	w.close()
	if w.send([]byte("late"), true) {
		t.Fatal("send after close reported success")
	}
}
