package raftgroup

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/gridkv/gridkv/internal/faultnet"
)

// frameWriter owns the write side of one connection. Senders append whole
// frames to a buffer under a lock; the first sender to find no write under
// way becomes the flusher and writes everything that accumulates, in as few
// syscalls as it takes, so frames of many groups sent at the same moment
// share a write and no goroutine hop sits on the send path. When the last
// write carried more than one frame (the connection is busy), the flusher
// first yields for at most maxGather while other senders keep adding.
//
// Frames marked lazy (heartbeats, empty AppendEntries that only carry the
// commit index, and their answers) do not flush: they wait up to lazyLinger
// for company, so at idle the heartbeats of many groups leave in one write
// instead of one syscall each. Any other frame flushes them.
//
// Every frame passes the fault seam here: dropped, duplicated or delayed per
// the rule from the local node to the peer. With no faultnet.Net configured
// this is one nil check.
type frameWriter struct {
	conn     net.Conn
	faults   *faultnet.Net
	from, to string
	// onError is called once, after the first write that fails. It may
	// call close: it runs outside the timerWG count (see fail).
	onError func(error)
	// stats, if set, counts frames and writes.
	stats *counters

	mu        sync.Mutex
	buf       []byte
	queued    int // frames in buf
	lastFlush int // frames the last write carried
	spare     []byte
	flushing  bool
	closed    bool
	failed    bool // onError was called
	lazyArmed bool
	linger    *time.Timer
	lingerFor time.Duration
	timers    map[*time.Timer]struct{} // frames held back by a delay rule
	timerWG   sync.WaitGroup           // linger and delay callbacks running
	done      chan struct{}
}

// lingerFor returns how long a lazy frame may wait for others to share its
// write: HeartbeatTimeout/50 (20ms by default), within [1ms, 20ms].
// Heartbeats go out every HeartbeatTimeout/10 to /5, so this is noise to
// them, and nobody else waits on them: VerifyLeader sends its own round eagerly.
func lingerFor(heartbeatTimeout time.Duration) time.Duration {
	return min(max(heartbeatTimeout/50, time.Millisecond), 20*time.Millisecond)
}

func newFrameWriter(conn net.Conn, faults *faultnet.Net, from, to string, linger time.Duration, onError func(error)) *frameWriter {
	w := &frameWriter{conn: conn, faults: faults, from: from, to: to, lingerFor: linger, onError: onError, done: make(chan struct{})}
	w.linger = time.AfterFunc(time.Hour, w.lingerFired)
	w.linger.Stop()
	return w
}

// send queues one frame and, unless it is lazy or a write is under way,
// writes it. It reports false if the connection is closed.
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
	ok, err := w.add(frame, lazy)
	w.fail(err)
	return ok
}

// add is enqueue without the onError call: a timer callback makes that
// call itself once it is no longer counted in timerWG.
func (w *frameWriter) add(frame []byte, lazy bool) (ok bool, err error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false, nil
	}
	w.buf = append(w.buf, frame...)
	w.queued++
	if lazy || w.flushing {
		if lazy && !w.lazyArmed && !w.flushing {
			// Not pending: lingerFired clears lazyArmed before returning.
			w.lazyArmed = true
			w.timerWG.Add(1)
			w.linger.Reset(w.lingerFor)
		}
		w.mu.Unlock()
		return true, nil
	}
	w.flushing = true
	busy := w.lastFlush > 1
	w.mu.Unlock()
	// Give goroutines that are about to send a chance to add their frames
	// to this write: under load, one syscall per frame dominated the CPU.
	runtime.Gosched()
	if busy {
		w.gather()
	}
	return true, w.flush()
}

// maxGather bounds how long a flusher waits for company once the previous
// write carried several frames: tens of µs, against a round trip of
// hundreds on a loaded node.
const maxGather = 30 * time.Microsecond

// gather lets runnable goroutines add their frames before a write, as long
// as each round adds some, for at most maxGather. It yields rather than
// sleeps: a timer shorter than a millisecond may fire a millisecond late on
// an idle node, and when nothing else is runnable a yield returns at once.
func (w *frameWriter) gather() {
	deadline := time.Now().Add(maxGather)
	w.mu.Lock()
	queued := w.queued
	w.mu.Unlock()
	for time.Now().Before(deadline) {
		runtime.Gosched()
		w.mu.Lock()
		grew := w.queued > queued
		queued = w.queued
		w.mu.Unlock()
		if !grew {
			return
		}
	}
}

func (w *frameWriter) lingerFired() {
	w.mu.Lock()
	w.lazyArmed = false
	if w.flushing || w.closed || len(w.buf) == 0 {
		w.mu.Unlock()
		w.timerWG.Done()
		return
	}
	w.flushing = true
	w.mu.Unlock()
	err := w.flush()
	w.timerWG.Done()
	w.fail(err)
}

// fail hands the first write error to onError. Timer callbacks call it
// only after their timerWG.Done: onError may close the writer, and close
// waits for timerWG, so a callback still counted would wait for itself.
// close from outside still waits for every write a callback makes.
func (w *frameWriter) fail(err error) {
	if err == nil || w.onError == nil {
		return
	}
	w.mu.Lock()
	first := !w.failed
	w.failed = true
	w.mu.Unlock()
	if first {
		w.onError(err)
	}
}

// flush writes until the buffer is empty and returns the write error, if
// any, for the caller to pass to fail; the caller set w.flushing.
func (w *frameWriter) flush() error {
	for {
		w.mu.Lock()
		if w.closed || len(w.buf) == 0 {
			w.flushing = false
			w.mu.Unlock()
			return nil
		}
		out, frames := w.buf, w.queued
		w.buf, w.spare, w.queued, w.lastFlush = w.spare[:0], nil, 0, frames
		w.mu.Unlock()
		if w.stats != nil {
			w.stats.framesWritten.Add(uint64(frames))
			w.stats.writes.Add(1)
		}
		_, err := w.conn.Write(out)
		w.mu.Lock()
		w.spare = out[:0]
		w.mu.Unlock()
		if err != nil {
			w.mu.Lock()
			w.flushing = false
			w.mu.Unlock()
			return err
		}
	}
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
	w.timerWG.Add(1)
	var t *time.Timer
	t = time.AfterFunc(v.Delay, func() {
		w.mu.Lock()
		delete(w.timers, t)
		w.mu.Unlock()
		var err error
		for i := 0; i < v.Copies && err == nil; i++ {
			_, err = w.add(held, false)
		}
		w.timerWG.Done() // before fail: see there
		w.fail(err)
	})
	w.timers[t] = struct{}{}
	return true
}

// close stops the writer and closes the connection; queued and held-back
// frames are discarded. It waits for the writes of timer callbacks already
// running, not for their onError calls, so onError may call it.
func (w *frameWriter) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	if w.linger.Stop() {
		w.timerWG.Done()
	}
	for t := range w.timers {
		if t.Stop() {
			w.timerWG.Done()
		}
	}
	w.timers = nil
	close(w.done)
	w.mu.Unlock()
	_ = w.conn.Close()
	w.timerWG.Wait()
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
