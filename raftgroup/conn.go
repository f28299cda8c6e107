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
// frames to a buffer under a lock and wake the writer, one goroutine per
// connection, which writes everything queued in one syscall: frames of
// every group, requests and answers alike, queued while it was writing or
// waking up leave together, and no sender ever blocks in a syscall (raft's
// replication, the answer responders and Host.Call only queue). Before a
// write, the writer yields for at most maxGather while others keep adding
// (see gather).
//
// Frames marked lazy (heartbeats, empty AppendEntries that only carry the
// commit index, and their answers) do not wake the writer: they wait up to
// lazyLinger for company, so at idle the heartbeats of many groups leave in
// one write instead of one syscall each. Any other frame takes them along.
//
// Every frame passes the fault seam here: dropped, duplicated or delayed per
// the rule from the local node to the peer. With no faultnet.Net configured
// this is one nil check.
type frameWriter struct {
	conn     net.Conn
	faults   *faultnet.Net
	from, to string
	// onError is called once, from the writer goroutine, after the first
	// write that fails. It may call close.
	onError func(error)
	// stats, if set, counts frames and writes; peer and perWrite, if set
	// (Config.DetailedStats), count them for the peer and the frames per
	// write.
	stats    *counters
	peer     *peerCounters
	perWrite *sizeCounts

	mu        sync.Mutex
	buf       []byte
	queued    int // frames in buf
	closed    bool
	retired   bool // the retire frame is queued: no frame may follow it
	finishing bool // close once everything queued is written
	lazyArmed bool
	linger    *time.Timer
	lingerFor time.Duration
	timers    map[*time.Timer]struct{} // frames held back by a delay rule
	timerWG   sync.WaitGroup           // linger and delay callbacks running

	wake chan struct{} // one slot: frames are waiting for the writer
	done chan struct{} // closed by close
}

// lingerFor returns how long a lazy frame may wait for others to share its
// write: HeartbeatTimeout/50 (20ms by default), within [1ms, 20ms].
// Heartbeats go out every HeartbeatTimeout/10 to /5, so this is noise to
// them, and nobody else waits on them: VerifyLeader sends its own round eagerly.
func lingerFor(heartbeatTimeout time.Duration) time.Duration {
	return min(max(heartbeatTimeout/50, time.Millisecond), 20*time.Millisecond)
}

// newFrameWriter returns a writer for conn; its owner runs w.run on a
// goroutine it waits for.
func newFrameWriter(conn net.Conn, faults *faultnet.Net, from, to string, linger time.Duration, onError func(error)) *frameWriter {
	w := &frameWriter{conn: conn, faults: faults, from: from, to: to, lingerFor: linger, onError: onError,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.linger = time.AfterFunc(time.Hour, w.lingerFired)
	w.linger.Stop()
	return w
}

// send queues one frame for the writer; a lazy one waits for company. It
// reports false if the connection is closed. frame may be reused on return.
func (w *frameWriter) send(frame []byte, lazy bool) bool {
	if w.faults != nil {
		v := w.faults.Decide(w.from, w.to)
		if v.Copies == 0 {
			return true // lost on the way: the sender cannot tell
		}
		if v.Delay > 0 {
			return w.sendLater(frame, v)
		}
		return w.add(frame, lazy, v.Copies)
	}
	return w.add(frame, lazy, 1)
}

// add queues copies of frame, all or none: a sender told false sends the
// frame again on another connection, whose reader would not recognize a
// copy left here as a duplicate.
func (w *frameWriter) add(frame []byte, lazy bool, copies int) bool {
	w.mu.Lock()
	if w.closed || w.retired {
		w.mu.Unlock()
		return false
	}
	for range copies {
		w.buf = append(w.buf, frame...)
	}
	w.queued += copies
	if lazy {
		if !w.lazyArmed {
			// timerWG counts a pending linger run once. The writer clears
			// lazyArmed when it takes the buffer, possibly while the timer
			// is still pending: then Reset only moves that run.
			w.lazyArmed = true
			w.timerWG.Add(1)
			if w.linger.Reset(w.lingerFor) {
				w.timerWG.Done() // it was pending, and counted already
			}
		}
		w.mu.Unlock()
		return true
	}
	w.mu.Unlock()
	w.signal()
	return true
}

// retire queues frame as the last one: later sends report false, and
// frames held back by a delay rule are dropped.
func (w *frameWriter) retire(frame []byte) {
	w.mu.Lock()
	if !w.closed && !w.retired {
		w.buf = append(w.buf, frame...)
		w.queued++
		w.retired = true
	}
	w.mu.Unlock()
	w.signal()
}

// finish has the writer close the connection once everything queued is
// written.
func (w *frameWriter) finish() {
	w.mu.Lock()
	w.finishing = true
	w.mu.Unlock()
	w.signal()
}

func (w *frameWriter) signal() {
	select {
	case w.wake <- struct{}{}:
	default: // the writer is already due to run
	}
}

func (w *frameWriter) lingerFired() {
	w.mu.Lock()
	w.lazyArmed = false
	w.mu.Unlock()
	w.signal()
	w.timerWG.Done()
}

// maxGather bounds how long the writer yields for company before a write:
// tens of µs, against a round trip of hundreds on a loaded node.
const maxGather = 30 * time.Microsecond

// run writes whatever is queued each time it is woken, until close or a
// failed write (reported to onError).
func (w *frameWriter) run() {
	var spare []byte
	for {
		select {
		case <-w.wake:
		case <-w.done:
			return
		}
		w.gather()
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return
		}
		out, frames, finishing := w.buf, w.queued, w.finishing
		if frames > 0 {
			w.buf, w.queued, w.lazyArmed = spare[:0], 0, false
		}
		w.mu.Unlock()
		if frames == 0 {
			if finishing {
				w.close()
				return
			}
			continue // a linger timer found its frames already written
		}
		if w.stats != nil {
			w.stats.framesWritten.Add(uint64(frames))
			w.stats.writes.Add(1)
		}
		if w.peer != nil {
			w.peer.framesWritten.Add(uint64(frames))
			w.peer.bytesWritten.Add(uint64(len(out)))
			w.peer.writes.Add(1)
			w.perWrite.observe(frames)
		}
		if _, err := w.conn.Write(out); err != nil {
			if w.onError != nil {
				w.onError(err)
			}
			return
		}
		spare = out
		if finishing {
			w.signal() // once more: close when nothing is left
		}
	}
}

// gather lets runnable goroutines add their frames before a write: it
// yields twice, and goes on yielding as long as each round adds frames,
// for at most maxGather. A woken writer runs at once on an idle core; the
// yields let the goroutines the same event readied (responders, other
// groups' replication, the other direction's answers) queue theirs first.
// It yields rather than sleeps: a timer shorter than a millisecond fires
// about a millisecond late on an idle node, and when nothing else is
// runnable a yield returns at once, so an idle connection pays nothing.
// Measured (BenchmarkThreeNodeSet, 2 groups per node): yielding only after
// a write that carried several frames gave 1.2 frames per write, these
// yields 2.5; waiting in real time (polling the clock for 30 or 100µs
// after such a write) gave 2.3 and 2.6 at 50% more CPU per Set.
func (w *frameWriter) gather() {
	deadline := time.Now().Add(maxGather)
	runtime.Gosched()
	queued := w.queuedNow()
	for time.Now().Before(deadline) {
		runtime.Gosched()
		n := w.queuedNow()
		if n == queued {
			return
		}
		queued = n
	}
}

func (w *frameWriter) queuedNow() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.queued
}

func (w *frameWriter) sendLater(frame []byte, v faultnet.Verdict) bool {
	held := append([]byte(nil), frame...) // the caller reuses frame
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.retired {
		return false
	}
	if w.timers == nil {
		w.timers = make(map[*time.Timer]struct{})
	}
	w.timerWG.Add(1)
	var t *time.Timer
	t = time.AfterFunc(v.Delay, func() {
		defer w.timerWG.Done()
		w.mu.Lock()
		delete(w.timers, t)
		w.mu.Unlock()
		w.add(held, false, v.Copies)
	})
	w.timers[t] = struct{}{}
	return true
}

// close stops the writer and closes the connection; queued and held-back
// frames are discarded. It waits for timer callbacks already running (they
// only queue), not for the writer goroutine, so onError may call it.
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
