package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridkv/gridkv/raftgroup"
)

// Forwarded requests travel together: the reads (or the writes) a node
// sends to one node incarnation while earlier ones are in flight go in one
// reqReads (reqWrites) frame, answered by one frame. One Host.Call per
// frame, instead of per request, saves a goroutine, a timer and a context
// on the serving side, and a timer and a frame on this one.
const (
	// maxReadsPerFrame bounds the requests of one frame.
	maxReadsPerFrame = 256
	// readsFrameBytes bounds the requests' bodies in one request frame,
	// and the answers in one answer frame (the first one's aside): far
	// below raftgroup's frame limit (256 MiB), and small enough that one
	// frame does not hold up the connection for long.
	readsFrameBytes = 4 << 20
	// readFramesInFlight bounds the frames in flight to one node: while
	// one is, reads queue for the next. Measured on 2 cores
	// (BenchmarkForwardedGet/replicas=1, three runs each): with 1, 7.6-8.0
	// µs of CPU per Get and 175-186k Gets/s; with 2, 9.0-12.2 µs and
	// 122-156k/s (fewer reads a frame: 5.6 against 7.9).
	readFramesInFlight = 1
)

var errForwarderClosed = errors.New("gridkv: forwarder closed")

// forwarder sends the reads and writes this node forwards, coalesced per
// destination and kind.
//
// Threading: read and write are safe for concurrent use; close stops the
// senders and fails the requests still queued.
type forwarder struct {
	host *raftgroup.Host

	mu struct {
		sync.Mutex
		closed bool
		queues map[dest]*readQueue
	}
	wg sync.WaitGroup

	// What was sent: frames of reads and of writes, and the reads and
	// writes they carried (tests and benchmarks look).
	readFrames, writeFrames, reads, writes atomic.Int64
}

// dest is where a queue's frames go: a node incarnation, and reqReads or
// reqWrites.
type dest struct {
	to   peer
	kind byte
}

// readQueue is the requests waiting for a frame to one destination;
// guarded by forwarder.mu.
type readQueue struct {
	reads   []*pendingRead
	senders int // running senders, at most readFramesInFlight
}

type pendingRead struct {
	r        int
	body     []byte    // a reqRead body: mode byte, key
	deadline time.Time // the caller's; zero: none
	done     chan readResult
}

type readResult struct {
	ans []byte
	err error
}

// readPool recycles pendingReads whose answer was taken; one abandoned by
// its caller (ctx ended) is left to the garbage collector, since a sender
// may still answer it.
var readPool = sync.Pool{New: func() any { return &pendingRead{done: make(chan readResult, 1)} }}

func newForwarder(host *raftgroup.Host) *forwarder {
	f := &forwarder{host: host}
	f.mu.queues = make(map[dest]*readQueue)
	return f
}

// read sends a read of group r (a wireGroup; body: mode byte, key) to the node
// incarnation to, with others bound there, and returns its answer (status
// byte, body) or the frame's error, as Host.Call would for the read alone.
// A nil answer and error: the answer frame was malformed.
func (f *forwarder) read(ctx context.Context, to peer, r int, body []byte) ([]byte, error) {
	return f.forward(ctx, dest{to, reqReads}, r, body)
}

// write is read for a write of group r (body: an encoded single-operation
// command). An error means what it would for a single Call: NotSent, not
// applied; otherwise the outcome is unknown.
func (f *forwarder) write(ctx context.Context, to peer, r int, body []byte) ([]byte, error) {
	return f.forward(ctx, dest{to, reqWrites}, r, body)
}

func (f *forwarder) forward(ctx context.Context, to dest, r int, body []byte) ([]byte, error) {
	p := readPool.Get().(*pendingRead)
	p.r, p.body = r, body
	p.deadline, _ = ctx.Deadline()
	f.mu.Lock()
	if f.mu.closed {
		f.mu.Unlock()
		p.body = nil
		readPool.Put(p)
		return nil, errForwarderClosed
	}
	q := f.mu.queues[to]
	if q == nil {
		q = &readQueue{}
		f.mu.queues[to] = q
	}
	q.reads = append(q.reads, p)
	if q.senders < readFramesInFlight {
		q.senders++
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.send(to, q) }()
	}
	f.mu.Unlock()
	select {
	case res := <-p.done:
		p.body = nil
		readPool.Put(p)
		return res.ans, res.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", raftgroup.ErrTimeout, ctx.Err())
	}
}

// send sends frames of the requests queued for to until none are left.
func (f *forwarder) send(to dest, q *readQueue) {
	for {
		// Let readers that are ready to run queue first (as batcher.run
		// does): measured with BenchmarkForwardedGet/replicas=1, 7.9 reads
		// a frame with it, 5.3 without.
		runtime.Gosched()
		f.mu.Lock()
		if f.mu.closed || len(q.reads) == 0 {
			for _, p := range q.reads {
				p.done <- readResult{err: errForwarderClosed}
			}
			q.reads = nil
			q.senders--
			if q.senders == 0 && f.mu.queues[to] == q {
				delete(f.mu.queues, to)
			}
			f.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(q.reads) && n < maxReadsPerFrame && (n == 0 || size+len(q.reads[n].body) <= readsFrameBytes) {
			size += len(q.reads[n].body)
			n++
		}
		batch := append([]*pendingRead(nil), q.reads[:n]...)
		clear(q.reads[:n])
		q.reads = q.reads[n:]
		f.mu.Unlock()
		if resend := f.call(to, batch, size); len(resend) > 0 {
			f.mu.Lock()
			q.reads = append(resend, q.reads...)
			f.mu.Unlock()
		}
	}
}

// call sends batch in one frame and answers its requests; it returns
// those to send again.
func (f *forwarder) call(to dest, batch []*pendingRead, size int) (resend []*pendingRead) {
	req := encodeReads(to.kind, len(batch), size)
	// The frame waits as long as its most patient read would have: the
	// latest deadline, or Call's own time-out if a read has none.
	var deadline time.Time
	unbounded := false
	for _, p := range batch {
		req = appendRead(req, p.r, p.body)
		unbounded = unbounded || p.deadline.IsZero()
		if p.deadline.After(deadline) {
			deadline = p.deadline
		}
	}
	ctx := context.Background()
	if !unbounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if to.kind == reqWrites {
		f.writeFrames.Add(1)
		f.writes.Add(int64(len(batch)))
	} else {
		f.readFrames.Add(1)
		f.reads.Add(int64(len(batch)))
	}
	resp, err := f.host.Call(ctx, to.to.id, to.to.addr, req)
	var answers [][]byte
	if err == nil {
		answers, _ = decodeReadAnswers(resp, len(batch))
	}
	for i, p := range batch {
		switch {
		case err != nil:
			p.done <- readResult{err: err}
		case answers == nil:
			p.done <- readResult{} // malformed
		case answers[i][0] == stResend:
			resend = append(resend, p)
		default:
			p.done <- readResult{ans: answers[i]}
		}
	}
	return resend
}

// close fails the queued reads and waits for the frames in flight: call it
// after the host closed, which ends them.
func (f *forwarder) close() {
	f.mu.Lock()
	f.mu.closed = true
	f.mu.Unlock()
	f.wg.Wait()
}

// serveReads answers a reqReads request: every read it can at once, in
// one pass, then the others range by range (one goroutine per range when
// there are several, waited for), then one answer for all.
func (db *DB) serveReads(ctx context.Context, body []byte) []byte {
	reads, err := decodeReads(body)
	if err != nil {
		return append([]byte{stInvalid}, err.Error()...)
	}
	answers := make([][]byte, len(reads))
	var slow map[int][]int // range -> the indexes of its reads that wait
	closed := db.isClosed()
	for i, rd := range reads {
		if rd.r >= db.groupCount() {
			answers[i] = db.unknownGroup(rd.r)
			continue
		}
		if ans := db.superseded(rd.r, rd.gen); ans != nil {
			answers[i] = ans
			continue
		}
		if !closed {
			if ans, ok := db.readNow(db.currentReplica(rd.r), rd.mode, rd.key); ok {
				answers[i] = ans
				continue
			}
		}
		if slow == nil {
			slow = make(map[int][]int)
		}
		slow[rd.r] = append(slow[rd.r], i)
	}
	serveRange := func(r int, idx []int) {
		rr := make([]*readReq, len(idx))
		for j, i := range idx {
			rr[j] = &reads[i]
		}
		for j, ans := range db.serveRead(ctx, r, db.currentReplica(r), rr) {
			answers[idx[j]] = ans
		}
	}
	if len(slow) == 1 {
		for r, idx := range slow {
			serveRange(r, idx)
		}
	} else if len(slow) > 1 {
		var wg sync.WaitGroup
		for r, idx := range slow {
			wg.Add(1)
			go func() { defer wg.Done(); serveRange(r, idx) }()
		}
		wg.Wait()
	}
	return encodeReadAnswers(answers)
}

// encodeReadAnswers is the answer to a reqReads request: once the answers
// pass readsFrameBytes, the next ones are stResend.
func encodeReadAnswers(answers [][]byte) []byte { return encodeAnswers(answers, true) }

// encodeAnswers is the answer to a reqReads or reqWrites request. With
// resend, once the answers pass readsFrameBytes, the next ones are
// stResend; never for writes, which have applied (their answers are a few
// bytes each).
func encodeAnswers(answers [][]byte, resend bool) []byte {
	size := 0
	for _, ans := range answers {
		size += len(ans)
	}
	out := make([]byte, 0, 1+binary.MaxVarintLen64*(1+len(answers))+min(size, 2*readsFrameBytes))
	out = append(out, stOK)
	out = binary.AppendUvarint(out, uint64(len(answers)))
	size = 0
	for i, ans := range answers {
		if resend && i > 0 && size+len(ans) > readsFrameBytes {
			ans = []byte{stResend}
		}
		size += len(ans)
		out = appendReadAnswer(out, ans)
	}
	return out
}

// serveWrites answers a reqWrites request: each write goes to its group's
// batcher at once, then the answers are awaited in order; no goroutine
// per write. Each write is answered as a single reqWrite would be.
func (db *DB) serveWrites(ctx context.Context, body []byte) []byte {
	writes, err := decodeWrites(body)
	if err != nil {
		return append([]byte{stInvalid}, err.Error()...)
	}
	answers := make([][]byte, len(writes))
	pending := make([]*pendingWrite, len(writes))
	for i, w := range writes {
		if w.r >= db.groupCount() {
			answers[i] = db.unknownGroup(w.r)
			continue
		}
		if ans := db.superseded(w.r, w.gen); ans != nil {
			answers[i] = ans
			continue
		}
		rep, ans := db.writeReplica(ctx, w.r)
		if ans != nil {
			answers[i] = ans
			continue
		}
		if pending[i], answers[i] = rep.batch.enqueue(w.cmd); answers[i] != nil {
			pending[i] = nil
		}
	}
	for i, p := range pending {
		if p != nil {
			answers[i] = p.wait(ctx)
		}
	}
	return encodeAnswers(answers, false)
}
