package raftgroup

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// SnapshotRetainer is the method the sinks of a Host group's snapshot store
// add to raft.SnapshotSink, so that an FSM whose snapshot is an immutable
// view of its state can hand the store that view instead of its bytes.
//
// An FSM snapshot's Persist checks for it on the sink:
//
//	if r, ok := sink.(raftgroup.SnapshotRetainer); ok && r.Retain(snap) {
//		return sink.Close() // the store keeps snap; no bytes are written
//	}
//	// else write the bytes to sink as usual
//
// Retain reports whether the store keeps w. When it does, the store streams
// the snapshot from w.WriteTo whenever raft opens it (to send it to a
// follower), for as long as it is the group's newest snapshot: WriteTo must
// write exactly the bytes Persist would write, every time, may be called
// concurrently from several goroutines, and must keep working after the
// snapshot's Release. Retain calls WriteTo once at once, to count the
// bytes (raft sends the size ahead of the stream, and a follower checks
// it). When Retain returns false (bytes were written already, or the
// counting pass failed), the FSM writes the bytes.
//
// Threading: raft calls Persist, and so Retain, from its snapshot goroutine.
type SnapshotRetainer interface {
	Retain(w io.WriterTo) bool
}

// snapshotStore is an in-memory raft.SnapshotStore that keeps the newest
// snapshot only: by reference when the FSM retained it (SnapshotRetainer),
// else as bytes, in chunks sized to the snapshot (raft's
// InmemSnapshotStore grows a bytes.Buffer, up to twice the size).
//
// Snapshots installed from a leader arrive as bytes (raft copies them in
// with io.Copy, which is how the store tells them from the FSM's own).
// They stay until a snapshot of the replica's own replaces them: raft
// needs one to catch up a follower should this replica lead. Once an
// installed snapshot has been read to the end (restored into the FSM),
// the store calls onInstalled, once, so the owner can take that snapshot
// at once; an FSM that retains then holds the state once, not twice.
//
// It also notes the index of the newest configuration a snapshot carried
// (taken here or installed from a leader): the log may no longer hold that
// configuration's entry.
//
// A snapshot becomes the newest when its sink is closed, not when it is
// created: until then raft cannot open it, and a cancelled one never
// replaces the last good one.
//
// Threading: safe for concurrent use.
type snapshotStore struct {
	mu     sync.Mutex
	latest *storedSnapshot
	seq    uint64 // makes snapshot ids unique
	// onInstalled, if set, is called (on the goroutine reading it) when an
	// installed snapshot has been read to the end for the first time. It
	// must not block: raft's FSM goroutine is the reader of a restore.
	onInstalled func()

	configIndex atomic.Uint64
}

// storedSnapshot is one snapshot: retained (a WriterTo) or bytes (chunks).
// It is not modified once published.
type storedSnapshot struct {
	meta      raft.SnapshotMeta
	retained  io.WriterTo
	chunks    [][]byte
	installed bool        // the bytes came in through ReadFrom
	readOnce  atomic.Bool // an installed snapshot was read to the end
}

var _ raft.SnapshotStore = (*snapshotStore)(nil)

// NewSnapshotStore returns an empty in-memory raft.SnapshotStore, the one
// every Host group uses (see SnapshotRetainer).
func NewSnapshotStore() raft.SnapshotStore { return &snapshotStore{} }

// Create starts a snapshot; only version 1 exists (raft's own stores
// refuse others too). The sink leaves SnapshotMeta.Peers empty: raft reads
// it only from version 0 snapshots.
func (s *snapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("raftgroup: snapshot version %d not supported", version)
	}
	s.mu.Lock()
	s.seq++
	id := fmt.Sprintf("%d-%d-%d", term, index, s.seq)
	s.mu.Unlock()
	return &snapshotSink{store: s, snap: &storedSnapshot{meta: raft.SnapshotMeta{
		Version: version, ID: id, Index: index, Term: term,
		Configuration: configuration.Clone(), ConfigurationIndex: configurationIndex,
	}}}, nil
}

// List returns the newest snapshot's metadata, if there is one.
func (s *snapshotStore) List() ([]*raft.SnapshotMeta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest == nil {
		return []*raft.SnapshotMeta{}, nil
	}
	meta := s.latest.meta
	return []*raft.SnapshotMeta{&meta}, nil
}

// Open returns the newest snapshot, which must be id, as a stream: from
// its bytes, or from the retained snapshot's WriteTo.
func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	s.mu.Lock()
	snap, onInstalled := s.latest, s.onInstalled
	s.mu.Unlock()
	if snap == nil || snap.meta.ID != id {
		return nil, nil, fmt.Errorf("raftgroup: snapshot %q is not the newest one", id)
	}
	meta := snap.meta
	if snap.retained != nil {
		return &meta, &streamReader{id: id, src: snap.retained, size: meta.Size}, nil
	}
	r := &chunkReader{chunks: snap.chunks}
	if snap.installed && onInstalled != nil {
		r.atEnd = func() {
			if snap.readOnce.CompareAndSwap(false, true) {
				onInstalled()
			}
		}
	}
	return &meta, r, nil
}

// publish makes snap the newest snapshot.
func (s *snapshotStore) publish(snap *storedSnapshot) {
	s.mu.Lock()
	// raft persists its own snapshots on its snapshot goroutine and
	// installs a leader's on its main one: an older snapshot closing
	// after a newer one must not become the newest again.
	if s.latest != nil && snap.meta.Index < s.latest.meta.Index {
		s.mu.Unlock()
		return
	}
	s.latest = snap
	s.mu.Unlock()
	for {
		old := s.configIndex.Load()
		if snap.meta.ConfigurationIndex <= old || s.configIndex.CompareAndSwap(old, snap.meta.ConfigurationIndex) {
			return
		}
	}
}

// snapshotSink receives one snapshot: Retain, or Writes, then Close (or
// Cancel). Threading: one goroutine at a time, as raft uses it.
type snapshotSink struct {
	store *snapshotStore
	snap  *storedSnapshot
	done  error // set by Close or Cancel: what later calls return
}

var (
	_ raft.SnapshotSink = (*snapshotSink)(nil)
	_ SnapshotRetainer  = (*snapshotSink)(nil)
	_ io.ReaderFrom     = (*snapshotSink)(nil)

	errSinkClosed    = errors.New("raftgroup: snapshot sink closed")
	errSinkCancelled = errors.New("raftgroup: snapshot sink cancelled")
	errRetained      = errors.New("raftgroup: snapshot sink: Write after Retain")
)

// Chunk sizes of a snapshot kept as bytes: an eighth of what was written
// so far, within these bounds, so the unused tail of the last chunk stays
// small until Close trims it.
const (
	minSnapChunk = 4 << 10
	maxSnapChunk = 1 << 20
)

func (k *snapshotSink) ID() string { return k.snap.meta.ID }

// Retain keeps w instead of bytes (see SnapshotRetainer).
func (k *snapshotSink) Retain(w io.WriterTo) bool {
	if k.done != nil || k.snap.retained != nil || k.snap.meta.Size > 0 {
		return false
	}
	var c countingWriter
	if _, err := w.WriteTo(&c); err != nil {
		return false
	}
	k.snap.retained, k.snap.meta.Size = w, c.n
	return true
}

// Write appends p to the snapshot's bytes.
func (k *snapshotSink) Write(p []byte) (int, error) {
	if err := k.writable(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		room := k.room()
		m := copy(room, p)
		k.grow(m)
		p = p[m:]
	}
	return n, nil
}

// ReadFrom appends everything r holds, read straight into the chunks. raft
// copies a snapshot installed from a leader in with io.Copy, which comes
// here: such a snapshot is marked installed.
func (k *snapshotSink) ReadFrom(r io.Reader) (int64, error) {
	if err := k.writable(); err != nil {
		return 0, err
	}
	k.snap.installed = true
	var total int64
	for {
		n, err := r.Read(k.room())
		k.grow(n)
		total += int64(n)
		switch {
		case err == io.EOF:
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

func (k *snapshotSink) writable() error {
	switch {
	case k.done != nil:
		return k.done
	case k.snap.retained != nil:
		return errRetained
	}
	return nil
}

// room is the free capacity of the last chunk, a new one if it is full.
func (k *snapshotSink) room() []byte {
	chunks := k.snap.chunks
	if last := len(chunks) - 1; last >= 0 && len(chunks[last]) < cap(chunks[last]) {
		return chunks[last][len(chunks[last]):cap(chunks[last])]
	}
	size := min(max(k.snap.meta.Size/8, minSnapChunk), maxSnapChunk)
	k.snap.chunks = append(chunks, make([]byte, 0, size))
	return k.snap.chunks[len(chunks)][:size]
}

// grow counts n bytes written into room().
func (k *snapshotSink) grow(n int) {
	last := len(k.snap.chunks) - 1
	k.snap.chunks[last] = k.snap.chunks[last][:len(k.snap.chunks[last])+n]
	k.snap.meta.Size += int64(n)
}

// Close makes the snapshot the store's newest. The last chunk is copied to
// its exact size first.
func (k *snapshotSink) Close() error {
	switch k.done {
	case nil:
	case errSinkClosed:
		return nil
	default:
		return k.done
	}
	k.done = errSinkClosed
	if n := len(k.snap.chunks); n > 0 && len(k.snap.chunks[n-1]) < cap(k.snap.chunks[n-1]) {
		last := k.snap.chunks[n-1]
		k.snap.chunks[n-1] = make([]byte, len(last))
		copy(k.snap.chunks[n-1], last)
	}
	k.store.publish(k.snap)
	return nil
}

// Cancel drops the snapshot; the store's newest stays what it was.
func (k *snapshotSink) Cancel() error {
	if k.done == nil {
		k.done = errSinkCancelled
		k.snap.chunks, k.snap.retained = nil, nil
	}
	return nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// chunkReader reads a snapshot kept as bytes, without copying them first.
type chunkReader struct {
	chunks [][]byte // shared with the store: never written
	i, off int      // next byte: chunks[i][off]
	atEnd  func()   // if set, called when Read or WriteTo reaches the end
	closed bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.i < len(r.chunks) && r.off == len(r.chunks[r.i]) {
		r.i, r.off = r.i+1, 0
	}
	if r.i == len(r.chunks) {
		r.end()
		return 0, io.EOF
	}
	n := copy(p, r.chunks[r.i][r.off:])
	r.off += n
	return n, nil
}

// WriteTo writes what is left unread to w (io.Copy takes this path).
func (r *chunkReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for ; r.i < len(r.chunks); r.i, r.off = r.i+1, 0 {
		n, err := w.Write(r.chunks[r.i][r.off:])
		total += int64(n)
		if err != nil {
			r.off += n
			return total, err
		}
	}
	r.end()
	return total, nil
}

func (r *chunkReader) end() {
	if r.atEnd != nil && !r.closed {
		r.atEnd()
		r.atEnd = nil
	}
}

func (r *chunkReader) Close() error { r.closed = true; r.i = len(r.chunks); return nil }

// streamReader reads a retained snapshot from its WriteTo, checking that it
// writes exactly the size counted when it was retained.
//
// io.Copy (the transport sending it to a follower) takes the WriteTo path:
// the snapshot writes straight into the destination. Read (restoring it
// here) runs WriteTo as a coroutine (iter.Pull): each Write it makes hands
// its buffer to Read, which copies out of it; no goroutine, no second
// buffer. Close stops the coroutine if WriteTo has not finished; a reader
// must be closed (raft closes every snapshot it opens).
type streamReader struct {
	id   string
	src  io.WriterTo
	size int64

	next    func() ([]byte, bool) // nil until the first Read
	stop    func()
	pending []byte // the rest of the buffer WriteTo is blocked writing
	read    int64
	srcErr  error // what WriteTo returned; set on the coroutine before it ends
	err     error // sticky: io.EOF at the end
}

var errReaderClosed = errors.New("raftgroup: snapshot reader closed")

func (r *streamReader) Read(p []byte) (int, error) {
	if r.next == nil && r.err == nil {
		r.next, r.stop = iter.Pull(func(yield func([]byte) bool) {
			_, r.srcErr = r.src.WriteTo(yieldWriter(yield))
		})
	}
	for len(r.pending) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		b, ok := r.next()
		if !ok {
			r.err = r.endErr(r.read, r.srcErr)
			continue
		}
		r.pending = b
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	r.read += int64(n)
	if r.read > r.size {
		r.err = r.endErr(r.read, nil)
		return n, r.err
	}
	return n, nil
}

// WriteTo streams the whole snapshot to w, when nothing was read yet.
func (r *streamReader) WriteTo(w io.Writer) (int64, error) {
	if r.next != nil || r.err != nil {
		return io.Copy(w, struct{ io.Reader }{r}) // a Read has begun: go on reading
	}
	cw := &countingTo{w: w}
	_, err := r.src.WriteTo(cw)
	r.read = cw.n
	if r.err = r.endErr(cw.n, err); r.err == io.EOF {
		return cw.n, nil
	}
	return cw.n, r.err
}

// endErr is the error a reader ends with after n bytes, WriteTo having
// returned srcErr: io.EOF when the size is right.
func (r *streamReader) endErr(n int64, srcErr error) error {
	switch {
	case srcErr != nil:
		return fmt.Errorf("raftgroup: snapshot %s: %w", r.id, srcErr)
	case n != r.size:
		return fmt.Errorf("raftgroup: snapshot %s: WriteTo wrote %d bytes, %d when it was retained", r.id, n, r.size)
	}
	return io.EOF
}

// Close ends the stream, stopping WriteTo if it is under way.
func (r *streamReader) Close() error {
	if r.stop != nil {
		r.stop()
	}
	r.pending = nil
	if r.err == nil {
		r.err = errReaderClosed
	}
	return nil
}

// yieldWriter hands every Write's buffer to a streamReader's Read, and
// returns once Read has taken all of it.
type yieldWriter func([]byte) bool

func (y yieldWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !y(p) {
		return 0, errReaderClosed
	}
	return len(p), nil
}

type countingTo struct {
	w io.Writer
	n int64
}

func (c *countingTo) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// snapshotAfterInstall takes a snapshot of the replica's own once an
// installed snapshot has been restored, so that it replaces the installed
// bytes (see snapshotStore). Not on the caller's goroutine: that is raft's
// FSM goroutine, which the snapshot needs.
func (g *Group) snapshotAfterInstall() {
	g.h.spawn(func() {
		err := g.raft.Snapshot().Error()
		if err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) && !errors.Is(err, raft.ErrRaftShutdown) {
			g.h.log.Debug("snapshot after an install failed", "group", g.ID, "err", err)
		}
	})
}
