package raftgroup

import (
	"errors"
	"sync"

	"github.com/hashicorp/raft"
)

// logStore is an in-memory raft.LogStore: a contiguous run of entries in a
// slice, first index held separately. Raft appends at the end, deletes a
// suffix on conflicts and a prefix after snapshots, so a slice fits better
// than hashicorp's map-based InmemStore.
//
// Threading: safe for concurrent use (raft reads from replication goroutines
// while its main loop appends).
type logStore struct {
	mu    sync.RWMutex
	first uint64 // index of logs[0]; 0 when empty
	logs  []*raft.Log
}

var _ raft.LogStore = (*logStore)(nil)

// NewLogStore returns an empty in-memory raft.LogStore, the one every Host
// group uses.
func NewLogStore() raft.LogStore { return &logStore{} }

func (s *logStore) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.first, nil
}

func (s *logStore) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.lastLocked(), nil
}

func (s *logStore) lastLocked() uint64 {
	if len(s.logs) == 0 {
		return 0
	}
	return s.first + uint64(len(s.logs)) - 1
}

func (s *logStore) GetLog(index uint64, out *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.logs) == 0 || index < s.first || index > s.lastLocked() {
		return raft.ErrLogNotFound
	}
	*out = *s.logs[index-s.first]
	return nil
}

func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs appends logs; an index at or below the last one replaces the
// tail from there (raft only does so after deleting it, but be safe).
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range logs {
		switch {
		case len(s.logs) == 0:
			s.first = l.Index
			s.logs = append(s.logs, l)
		case l.Index == s.lastLocked()+1:
			s.logs = append(s.logs, l)
		case l.Index >= s.first && l.Index <= s.lastLocked():
			s.logs = append(s.logs[:l.Index-s.first], l)
		default:
			return errors.New("raftgroup: log store: gap before index")
		}
	}
	return nil
}

// DeleteRange removes [min, max]; raft deletes only prefixes and suffixes.
func (s *logStore) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.logs) == 0 || max < s.first || min > s.lastLocked() {
		return nil
	}
	last := s.lastLocked()
	switch {
	case min <= s.first && max >= last:
		s.logs, s.first = nil, 0
	case min <= s.first: // prefix: copy the rest so the old array can be freed
		rest := s.logs[max-s.first+1:]
		s.logs = append(make([]*raft.Log, 0, len(rest)+len(rest)/4), rest...)
		s.first = max + 1
	case max >= last: // suffix
		for i := min - s.first; i < uint64(len(s.logs)); i++ {
			s.logs[i] = nil
		}
		s.logs = s.logs[:min-s.first]
	default:
		return errors.New("raftgroup: log store: cannot delete from the middle")
	}
	return nil
}

// stableStore is an in-memory raft.StableStore.
type stableStore struct {
	mu   sync.Mutex
	kv   map[string][]byte
	ints map[string]uint64
}

// NewStableStore returns an empty in-memory raft.StableStore.
func NewStableStore() raft.StableStore {
	return &stableStore{kv: map[string][]byte{}, ints: map[string]uint64{}}
}

func (s *stableStore) Set(key []byte, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv[string(key)] = append([]byte(nil), val...)
	return nil
}

// Get returns an error for a missing key, as raft expects ("not found").
func (s *stableStore) Get(key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[string(key)]
	if !ok {
		return nil, errors.New("not found")
	}
	return append([]byte(nil), v...), nil
}

func (s *stableStore) SetUint64(key []byte, val uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ints[string(key)] = val
	return nil
}

func (s *stableStore) GetUint64(key []byte) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ints[string(key)], nil
}
