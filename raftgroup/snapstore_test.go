package raftgroup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hashicorp/raft"
)

// snapContent is n bytes of a recognisable pattern.
func snapContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// bytesSnap is an io.WriterTo writing its content in writes of at most
// piece bytes through a bufio.Writer, as an FSM would.
type bytesSnap struct {
	content []byte
	piece   int
	calls   atomic.Int32
}

func (b *bytesSnap) WriteTo(w io.Writer) (int64, error) {
	b.calls.Add(1)
	bw := bufio.NewWriterSize(w, 4096)
	var n int64
	for rest := b.content; len(rest) > 0; {
		m := min(len(rest), b.piece)
		k, err := bw.Write(rest[:m])
		n += int64(k)
		if err != nil {
			return n, err
		}
		rest = rest[m:]
	}
	return n, bw.Flush()
}

func createSink(t *testing.T, s *snapshotStore, index uint64) raft.SnapshotSink {
	t.Helper()
	sink, err := s.Create(1, index, 1, raft.Configuration{}, index, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sink
}

// openAll opens the newest snapshot and checks its metadata and that both
// ways of reading it (Read in pieces, and io.Copy's WriteTo path) give want.
func openAll(t *testing.T, s *snapshotStore, want []byte) {
	t.Helper()
	metas, _ := s.List()
	if len(metas) != 1 || metas[0].Size != int64(len(want)) {
		t.Fatalf("List() = %+v, want one snapshot of %d bytes", metas, len(want))
	}
	meta, rc, err := s.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Size != int64(len(want)) {
		t.Fatalf("Open: Size %d, want %d", meta.Size, len(want))
	}
	if err := iotest.TestReader(rc, want); err != nil {
		t.Fatalf("Read: %v", err)
	}
	rc.Close()
	_, rc, _ = s.Open(metas[0].ID)
	var got bytes.Buffer
	if n, err := io.Copy(&got, rc); err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("io.Copy: %d bytes, %v; content equal: %v", n, err, bytes.Equal(got.Bytes(), want))
	}
	rc.Close()
}

// Snapshots written as bytes read back exactly, kept in chunks with no
// unused capacity once closed.
func TestSnapshotStoreBytes(t *testing.T) {
	for _, size := range []int{0, 1, minSnapChunk - 1, minSnapChunk + 1, 3<<20 + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := &snapshotStore{}
			sink := createSink(t, s, 5)
			want := snapContent(size)
			for rest := want; len(rest) > 0; {
				m := min(len(rest), 1000)
				if n, err := sink.Write(rest[:m]); n != m || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
				rest = rest[m:]
			}
			if metas, _ := s.List(); len(metas) != 0 {
				t.Fatal("a snapshot is listed before its sink is closed")
			}
			if err := sink.Close(); err != nil {
				t.Fatal(err)
			}
			var held int
			for _, c := range s.latest.chunks {
				if cap(c) != len(c) {
					t.Fatalf("a chunk holds %d bytes in %d of capacity", len(c), cap(c))
				}
				held += cap(c)
			}
			if held != size {
				t.Fatalf("chunks hold %d bytes, want %d", held, size)
			}
			openAll(t, s, want)
		})
	}
}

// A retained snapshot is kept by reference: its size counted once at
// Retain, its bytes streamed from WriteTo at every Open.
func TestSnapshotStoreRetains(t *testing.T) {
	s := &snapshotStore{}
	want := snapContent(200<<10 + 3)
	src := &bytesSnap{content: want, piece: 10000}
	sink := createSink(t, s, 7)
	r, ok := sink.(SnapshotRetainer)
	if !ok || !r.Retain(src) {
		t.Fatal("the sink does not retain")
	}
	if _, err := sink.Write([]byte("x")); err == nil {
		t.Fatal("Write after Retain succeeded")
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if s.latest.retained == nil || s.latest.chunks != nil {
		t.Fatal("the store does not hold the retained snapshot by reference")
	}
	openAll(t, s, want)
	if n := src.calls.Load(); n != 3 { // the counting pass, then one per read
		t.Fatalf("WriteTo called %d times, want 3", n)
	}

	// Several readers at once, one of them closed early: the coroutine
	// stops (goleak in TestMain checks) and the others are unaffected.
	id := s.latest.meta.ID
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, rc, err := s.Open(id)
			if err != nil {
				t.Error(err)
				return
			}
			defer rc.Close()
			if i == 0 {
				buf := make([]byte, 100)
				if _, err := io.ReadFull(rc, buf); err != nil || !bytes.Equal(buf, want[:100]) {
					t.Errorf("partial read: %v", err)
				}
				return
			}
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("ReadAll: %d bytes, %v", len(got), err)
			}
		}()
	}
	wg.Wait()

	// Retain is refused once bytes were written; the FSM then writes.
	sink = createSink(t, s, 8)
	if _, err := sink.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if sink.(SnapshotRetainer).Retain(src) {
		t.Fatal("Retain accepted after a Write")
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	openAll(t, s, []byte("abc"))
}

// flakySnap writes a different number of bytes after its first call, or
// fails: the store refuses it, or its readers fail.
type flakySnap struct {
	calls atomic.Int32
	fail  bool
}

func (f *flakySnap) WriteTo(w io.Writer) (int64, error) {
	if f.calls.Add(1) > 1 {
		n, _ := w.Write([]byte("one byte more"))
		return int64(n), nil
	}
	if f.fail {
		return 0, errors.New("broken")
	}
	n, _ := w.Write([]byte("one byte mor"))
	return int64(n), nil
}

func TestSnapshotStoreRetainedSizeChecked(t *testing.T) {
	s := &snapshotStore{}
	if createSink(t, s, 1).(SnapshotRetainer).Retain(&flakySnap{fail: true}) {
		t.Fatal("Retain accepted a snapshot whose WriteTo failed")
	}
	sink := createSink(t, s, 2)
	if !sink.(SnapshotRetainer).Retain(&flakySnap{}) {
		t.Fatal("Retain refused")
	}
	_ = sink.Close()
	id := s.latest.meta.ID
	_, rc, _ := s.Open(id)
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "wrote") {
		t.Fatalf("Read of a snapshot whose size changed: %v", err)
	}
	rc.Close()
	_, rc, _ = s.Open(id)
	if _, err := io.Copy(io.Discard, rc); err == nil {
		t.Fatal("io.Copy of a snapshot whose size changed succeeded")
	}
	rc.Close()
}

// A cancelled snapshot leaves the newest one in place; only the newest can
// be opened; the configuration index noted is the highest closed.
func TestSnapshotStoreNewestAndCancel(t *testing.T) {
	s := &snapshotStore{}
	first := createSink(t, s, 10)
	_, _ = first.Write([]byte("first"))
	_ = first.Close()
	firstID := first.ID()

	cancelled := createSink(t, s, 20)
	_, _ = cancelled.Write([]byte("cancelled"))
	_ = cancelled.Cancel()
	if err := cancelled.Close(); err == nil {
		t.Fatal("Close after Cancel succeeded")
	}
	openAll(t, s, []byte("first"))
	if got := s.configIndex.Load(); got != 10 {
		t.Fatalf("configIndex = %d, want 10 (the cancelled snapshot's must not count)", got)
	}

	second := createSink(t, s, 30)
	_, _ = second.Write([]byte("second"))
	_ = second.Close()
	if _, _, err := s.Open(firstID); err == nil {
		t.Fatal("an older snapshot could still be opened")
	}
	openAll(t, s, []byte("second"))
	if got := s.configIndex.Load(); got != 30 {
		t.Fatalf("configIndex = %d, want 30", got)
	}
	if _, err := s.Create(0, 1, 1, raft.Configuration{}, 0, nil); err == nil {
		t.Fatal("Create accepted snapshot version 0")
	}
}

// retainFSM is a test FSM whose snapshots are retained by the store: a map
// of key to value, each snapshot a sorted copy written by WriteTo.
type retainFSM struct {
	mu       sync.Mutex
	m        map[string]string
	retained atomic.Int32 // snapshots the store kept by reference
	written  atomic.Int32 // snapshots written as bytes
	restores atomic.Int32
}

func newRetainFSM() *retainFSM { return &retainFSM{m: map[string]string{}} }

func (f *retainFSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	k, v, _ := strings.Cut(string(l.Data), "=")
	f.mu.Lock()
	f.m[k] = v
	f.mu.Unlock()
	return nil
}

func (f *retainFSM) get(k string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[k]
	return v, ok
}

func (f *retainFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &retainSnap{f: f}
	for k, v := range f.m {
		s.items = append(s.items, [2]string{k, v})
	}
	slices.SortFunc(s.items, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return s, nil
}

func (f *retainFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReader(rc)
	m := map[string]string{}
	for {
		k, err := readString(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		v, err := readString(r)
		if err != nil {
			return err
		}
		m[k] = v
	}
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	f.restores.Add(1)
	return nil
}

func readString(r *bufio.Reader) (string, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return string(b), err
}

type retainSnap struct {
	f     *retainFSM
	items [][2]string
}

func (s *retainSnap) WriteTo(w io.Writer) (int64, error) {
	cw := &countingTo{w: w}
	bw := bufio.NewWriterSize(cw, 4096)
	for _, kv := range s.items {
		for _, str := range kv {
			bw.Write(binary.AppendUvarint(nil, uint64(len(str))))
			bw.WriteString(str)
		}
	}
	err := bw.Flush()
	return cw.n, err
}

func (s *retainSnap) Persist(sink raft.SnapshotSink) error {
	if r, ok := sink.(SnapshotRetainer); ok && r.Retain(s) {
		s.f.retained.Add(1)
		return sink.Close()
	}
	s.f.written.Add(1)
	if _, err := s.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *retainSnap) Release() {}

// A snapshot copied in with io.Copy (raft installing one from a leader) is
// marked installed: the first read to the end calls onInstalled, once; a
// partial read does not, nor does reading a snapshot the FSM wrote.
func TestSnapshotStoreInstalled(t *testing.T) {
	var calls atomic.Int32
	s := &snapshotStore{onInstalled: func() { calls.Add(1) }}
	want := snapContent(100 << 10)

	own := createSink(t, s, 1)
	_, _ = own.Write(want)
	_ = own.Close()
	openAll(t, s, want)
	if n := calls.Load(); n != 0 {
		t.Fatalf("reading the FSM's own snapshot called onInstalled %d times", n)
	}

	installed := createSink(t, s, 2)
	if n, err := io.Copy(installed, iotest.HalfReader(bytes.NewReader(want))); err != nil || n != int64(len(want)) {
		t.Fatalf("io.Copy into the sink: %d, %v", n, err)
	}
	_ = installed.Close()
	_, rc, _ := s.Open(installed.ID())
	if _, err := io.ReadFull(rc, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if n := calls.Load(); n != 0 {
		t.Fatalf("a partial read called onInstalled %d times", n)
	}
	openAll(t, s, want) // reads it to the end twice (Read, then io.Copy)
	if n := calls.Load(); n != 1 {
		t.Fatalf("onInstalled called %d times, want once", n)
	}
}

// A follower that fell behind the leader's log installs the leader's
// retained snapshot, streamed from the FSM snapshot's WriteTo; once it is
// restored, a snapshot of the follower's own replaces the installed bytes.
func TestLaggingFollowerInstallsRetainedSnapshot(t *testing.T) {
	// No periodic snapshots: raft's check would take one soon after an
	// install too (with the log emptied, its entry count underflows).
	// 300 writes and a snapshot through one leader, which must still lead
	// when the follower comes back: slow timings keep a stall from
	// electing another.
	c := newTestCluster(t, 3, 0, slowTimings, func(cfg *Config) { cfg.SnapshotInterval = time.Hour })
	var servers []raft.Server
	for _, h := range c.hosts {
		servers = append(servers, raft.Server{ID: h.ID(), Address: raft.ServerAddress(h.Addr())})
	}
	fsms := make([]*retainFSM, len(c.hosts))
	for i, h := range c.hosts {
		fsms[i] = newRetainFSM()
		if _, err := h.CreateGroup(0, fsms[i], GroupOptions{Bootstrap: servers}); err != nil {
			t.Fatal(err)
		}
	}
	c.waitLeaders(1, 15*time.Second)
	li := c.waitLeader(0)
	l := c.hosts[li].Group(0)
	lag := (li + 1) % 3
	var others []string
	for i, h := range c.hosts {
		if i != lag {
			others = append(others, h.Addr())
		}
	}
	c.faults.Isolate(c.hosts[lag].Addr(), others...)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const writes = 300
	for i := 0; i < writes; i++ {
		if _, err := l.Apply(ctx, []byte(fmt.Sprintf("k%03d=v%d", i, i))); err != nil {
			t.Fatal(err)
		}
	}
	rc := l.Raft().ReloadableConfig()
	rc.TrailingLogs = 10
	if err := l.Raft().ReloadConfig(rc); err != nil {
		t.Fatal(err)
	}
	if err := l.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if fsms[li].retained.Load() == 0 || fsms[li].written.Load() != 0 || l.snaps.latest.retained == nil {
		t.Fatalf("leader's snapshots: %d retained, %d written", fsms[li].retained.Load(), fsms[li].written.Load())
	}
	if first, _ := l.logs.FirstIndex(); first < writes/2 {
		t.Fatalf("leader's log still starts at %d", first)
	}

	c.faults.HealAll()
	eventually(t, 15*time.Second, "the lagging follower to catch up", func() bool {
		v, ok := fsms[lag].get(fmt.Sprintf("k%03d", writes-1))
		return ok && v == fmt.Sprint("v", writes-1)
	})
	if fsms[lag].restores.Load() == 0 {
		t.Fatal("the follower caught up without installing a snapshot")
	}
	for i := 0; i < writes; i++ {
		if v, ok := fsms[lag].get(fmt.Sprintf("k%03d", i)); !ok || v != fmt.Sprint("v", i) {
			t.Fatalf("follower has k%03d = %q, %v", i, v, ok)
		}
	}
	f := c.hosts[lag].Group(0)
	eventually(t, 3*time.Second, "a snapshot of the follower's own to replace the installed bytes", func() bool {
		f.snaps.mu.Lock()
		defer f.snaps.mu.Unlock()
		return f.snaps.latest != nil && f.snaps.latest.retained != nil
	})
	if fsms[lag].written.Load() != 0 {
		t.Fatal("the follower wrote a snapshot as bytes")
	}
}

// A snapshot that closes after a newer one (raft persists its own on one
// goroutine and installs a leader's on another) does not replace it.
func TestSnapshotStoreOlderCloseKeepsNewest(t *testing.T) {
	s := &snapshotStore{}
	older := createSink(t, s, 10)
	newer := createSink(t, s, 20)
	_, _ = newer.Write([]byte("newer"))
	_ = newer.Close()
	_, _ = older.Write([]byte("older"))
	_ = older.Close()
	openAll(t, s, []byte("newer"))
}
