package raftgroup

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
)

// frameWriter owns the write side of one connection. Senders append whole
// frames to a buffer under a lock; one goroutine writes whatever has
// accumulated in a single syscall, so frames of many groups sent at the same
// moment (heartbeats, say) share one write.
//
// Frames marked lazy (heartbeats, empty AppendEntries that only carry the
// commit index, and their answers) do not wake the writer: they wait up to
// lazyLinger for company, so at idle the heartbeats of many groups leave in
// one write instead of one syscall each. Any other frame flushes them.
//
// Every frame passes the fault seam here: dropped, duplicated or delayed per
// the rule from the local node to the peer. With no faultnet.Net configured
// this is one nil check.
type frameWriter struct {
	conn     net.Conn
	faults   *faultnet.Net
	from, to string

	mu        sync.Mutex
	buf       []byte
	closed    bool
	lazyArmed bool                     // linger is running for lazy frames in buf
	timers    map[*time.Timer]struct{} // frames held back by a delay rule
	linger    *time.Timer
	kick      chan struct{}
	done      chan struct{}
	delays    sync.WaitGroup
}

// lazyLinger is how long a lazy frame may wait for others to share its write.
// Heartbeats are sent every HeartbeatTimeout/10 (100ms by default), so a
// few milliseconds is noise to them.
const lazyLinger = 5 * time.Millisecond

func newFrameWriter(conn net.Conn, faults *faultnet.Net, from, to string) *frameWriter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &frameWriter{
		conn: conn, faults: faults, from: from, to: to, linger: t,
		kick: make(chan struct{}, 1), done: make(chan struct{}),
	}
}

// send queues one frame; it never blocks on the network. It reports false
// if the connection is closed.
func (w *frameWriter) send(frame []byte, lazy bool) bool {
	if w.faults != nil {
		v := w.faults.Decide(w.from, w.to)
		if v.Copies == 0 {
			return true // lost on the way: the sender cannot tell
		}
		if v.Delay > 0 {
			return w.sendLater(frame, v)
		}
		if v.Copies == 2 && !w.enqueue(frame, lazy) {
			return false
		}
	}
	return w.enqueue(frame, lazy)
}

func (w *frameWriter) enqueue(frame []byte, lazy bool) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.buf = append(w.buf, frame...)
	if lazy {
		if !w.lazyArmed {
			w.lazyArmed = true
			w.linger.Reset(lazyLinger)
		}
		w.mu.Unlock()
		return true
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return true
}

func (w *frameWriter) sendLater(frame []byte, v faultnet.Verdict) bool {
	held := append([]byte(nil), frame...) // the caller reuses frame
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if w.timers == nil {
		w.timers = make(map[*time.Timer]struct{})
	}
	w.delays.Add(1)
	var t *time.Timer
	t = time.AfterFunc(v.Delay, func() {
		defer w.delays.Done()
		w.mu.Lock()
		delete(w.timers, t)
		w.mu.Unlock()
		for i := 0; i < v.Copies; i++ {
			w.enqueue(held, false)
		}
	})
	w.timers[t] = struct{}{}
	return true
}

// loop writes queued frames until the connection fails or close is called.
func (w *frameWriter) loop() error {
	var spare []byte
	for {
		select {
		case <-w.kick:
		case <-w.linger.C:
		case <-w.done:
			return nil
		}
		w.mu.Lock()
		out := w.buf
		w.buf = spare[:0]
		w.lazyArmed = false // a linger still running fires into an empty buffer
		w.mu.Unlock()
		if len(out) > 0 {
			if _, err := w.conn.Write(out); err != nil {
				return err
			}
		}
		spare = out
	}
}

// close stops the writer and closes the connection; held-back frames are
// discarded. It waits for delay timers that already fired.
func (w *frameWriter) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.linger.Stop()
	for t := range w.timers {
		if t.Stop() {
			w.delays.Done()
		}
	}
	w.timers = nil
	close(w.done)
	w.mu.Unlock()
	w.delays.Wait()
	_ = w.conn.Close()
}

// readFrame reads one frame. It allocates a fresh buffer per frame (decoded
// requests keep slices of it), grown as the bytes arrive, so a peer that
// announces a large frame and sends nothing costs nothing.
func readFrame(r *bufio.Reader) (frameHeader, []byte, error) {
	var lenBuf [4]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return frameHeader{}, nil, err
	}
	n := int(binary.BigEndian.Uint32(lenBuf[:]))
	if n < headerLen-4 || n > maxFrame {
		return frameHeader{}, nil, fmt.Errorf("raftgroup: frame of %d bytes", n)
	}
	const chunk = 1 << 20
	buf := make([]byte, 0, min(n, chunk))
	for len(buf) < n {
		step := min(n-len(buf), chunk)
		if cap(buf)-len(buf) < step {
			buf = append(buf[:len(buf):len(buf)], make([]byte, step)...)[:len(buf)]
		}
		if _, err := io.ReadFull(r, buf[len(buf):len(buf)+step]); err != nil {
			return frameHeader{}, nil, err
		}
		buf = buf[:len(buf)+step]
	}
	h, body, err := parseHeader(buf)
	return h, body, err
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func getFrame() *[]byte { return framePool.Get().(*[]byte) }

func putFrame(b *[]byte) {
	if cap(*b) > 64<<10 {
		return // keep the pool's buffers small
	}
	*b = (*b)[:0]
	framePool.Put(b)
}
