package fsm

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
)

// Snapshot stream format: magic, applied index, then per entry
// (uvarint key length, key, uvarint value length, value, uvarint version,
// varint expireAt), then a zero key length as terminator. It is written
// and read entry by entry; no buffer holds the whole state.
var snapMagic = [4]byte{'G', 'K', 'V', '1'}

// maxSnapField bounds one key or value read from a snapshot, so a corrupt
// stream cannot make Restore allocate without bound.
const maxSnapField = 1 << 30

type snapItem struct {
	key string
	e   entry
}

type snapshot struct {
	applied uint64
	shards  [shardCount][]snapItem
}

// Snapshot captures the state as of the last applied entry. It copies the
// references to keys and values (which are never mutated in place), not
// the bytes, one shard at a time; Persist then streams them.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	snap := &snapshot{applied: f.applied.Load()}
	for i := range f.shards {
		s := &f.shards[i]
		s.mu.RLock()
		items := make([]snapItem, 0, len(s.m))
		for k, e := range s.m {
			items = append(items, snapItem{key: k, e: e})
		}
		s.mu.RUnlock()
		snap.shards[i] = items
	}
	return snap, nil
}

// Persist writes the snapshot to sink, entry by entry.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.writeTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) writeTo(out io.Writer) error {
	w := bufio.NewWriterSize(out, 64<<10)
	var scratch [3 * binary.MaxVarintLen64]byte
	w.Write(snapMagic[:])
	w.Write(binary.AppendUvarint(scratch[:0], s.applied))
	for _, items := range s.shards {
		for _, it := range items {
			b := binary.AppendUvarint(scratch[:0], uint64(len(it.key)))
			w.Write(b)
			w.WriteString(it.key)
			w.Write(binary.AppendUvarint(scratch[:0], uint64(len(it.e.value))))
			if _, err := w.Write(it.e.value); err != nil {
				return err
			}
			b = binary.AppendUvarint(scratch[:0], it.e.version)
			b = binary.AppendVarint(b, it.e.expireAt)
			w.Write(b)
		}
	}
	w.Write([]byte{0})
	return w.Flush()
}

// Release drops the snapshot's references.
func (s *snapshot) Release() { s.shards = [shardCount][]snapItem{} }

// Restore replaces the whole state with the snapshot read from rc.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReaderSize(rc, 64<<10)
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	if magic != snapMagic {
		return errors.New("fsm: restore: not a gridkv snapshot")
	}
	applied, err := binary.ReadUvarint(r)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	var maps [shardCount]map[string]entry
	for i := range maps {
		maps[i] = make(map[string]entry)
	}
	var used, count int64
	var expiries expiryHeap
	for {
		klen, err := readLen(r)
		if err != nil {
			return err
		}
		if klen == 0 {
			break
		}
		key, err := readBytes(r, klen)
		if err != nil {
			return err
		}
		vlen, err := readLen(r)
		if err != nil {
			return err
		}
		value, err := readBytes(r, vlen)
		if err != nil {
			return err
		}
		version, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("fsm: restore: %w", err)
		}
		expireAt, err := binary.ReadVarint(r)
		if err != nil {
			return fmt.Errorf("fsm: restore: %w", err)
		}
		k := string(key)
		maps[xxhash64Shard(k)][k] = entry{value: value, version: version, expireAt: expireAt}
		if expireAt != 0 {
			expiries = append(expiries, expiry{at: expireAt, key: k, version: version})
		}
		used += int64(len(k) + len(value))
		count++
	}
	heap.Init(&expiries)
	for i := range f.shards {
		s := &f.shards[i]
		s.mu.Lock()
		s.m = maps[i]
		s.mu.Unlock()
	}
	f.expiries = expiries
	f.used.Store(used)
	f.count.Store(count)
	f.advance(applied)
	return nil
}

func readLen(r *bufio.Reader) (int, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, fmt.Errorf("fsm: restore: %w", err)
	}
	if n > maxSnapField {
		return 0, fmt.Errorf("fsm: restore: field of %d bytes is over the limit", n)
	}
	return int(n), nil
}

func readBytes(r *bufio.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("fsm: restore: %w", io.ErrUnexpectedEOF)
	}
	return b, nil
}
