package raftgroup

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// logStore is an in-memory raft.LogStore: a contiguous run of entries in a
// slice, first index held separately. Raft appends at the end, deletes a
// suffix on conflicts and a prefix after snapshots, so a slice fits better
// than hashicorp's map-based InmemStore.
//
// Entries are copied in by value: a leader hands StoreLogs pointers into
// its Apply futures (raft's logFuture embeds the raft.Log), and keeping
// those pointers would keep every future, with its channel and response,
// alive for as long as the entry stays in the log. A trimmed prefix is
// copied out of the old array, and a dropped suffix cleared, so no entry
// the log no longer holds stays reachable from it.
//
// Threading: safe for concurrent use (raft reads from replication goroutines
// while its main loop appends).
type logStore struct {
	mu    sync.RWMutex
	first uint64 // index of logs[0]; 0 when empty
	logs  []raft.Log
	bytes int64 // approximate memory held by logs

	// When bytes pass maxBytes, onFull is called (once, until reset by
	// full.Store(false)) so the owner can snapshot and let raft trim the
	// log: raft's own triggers count entries, not bytes.
	maxBytes int64
	onFull   func()
	full     atomic.Bool

	// configs are the indexes of the configuration entries held, oldest
	// first; the newest one below first is kept after a prefix delete.
	configs []uint64
}

// latestConfig is the index of the newest configuration entry stored (0
// if none: the configuration came from a snapshot, or there is none).
func (s *logStore) latestConfig() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.configs) == 0 {
		return 0
	}
	return s.configs[len(s.configs)-1]
}

// dropFromLocked deletes the entries at index min and above (min within
// the log), clearing them so the array keeps no reference to their data.
func (s *logStore) dropFromLocked(min uint64) {
	dropped := s.logs[min-s.first:]
	for i := range dropped {
		s.bytes -= logSize(&dropped[i])
	}
	clear(dropped)
	s.logs = s.logs[:min-s.first]
	s.dropConfigsFromLocked(min)
}

// dropConfigsFromLocked forgets the configuration entries at index min and
// above (a deleted suffix).
func (s *logStore) dropConfigsFromLocked(min uint64) {
	for len(s.configs) > 0 && s.configs[len(s.configs)-1] >= min {
		s.configs = s.configs[:len(s.configs)-1]
	}
}

// logOverhead approximates a raft.Log's memory beyond its data: the
// struct's own 96 bytes in the slice.
const logOverhead = 96

func logSize(l *raft.Log) int64 { return int64(len(l.Data)+len(l.Extensions)) + logOverhead }

var _ raft.LogStore = (*logStore)(nil)

// NewLogStore returns an empty in-memory raft.LogStore, the one every Host
// group uses.
func NewLogStore() raft.LogStore { return &logStore{} }

// tailWithin counts the newest entries whose sizes add up to at most
// budget (at least one entry when the log is not empty).
func (s *logStore) tailWithin(budget int64) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var n uint64
	for i := len(s.logs) - 1; i >= 0; i-- {
		budget -= logSize(&s.logs[i])
		if budget < 0 && n > 0 {
			break
		}
		n++
	}
	return n
}

// Bytes is the approximate memory the log holds.
func (s *logStore) Bytes() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bytes
}

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
	*out = s.logs[index-s.first]
	return nil
}

func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs appends logs; an index at or below the last one replaces the
// tail from there (raft only does so after deleting it, but be safe).
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	s.mu.Lock()
	for _, l := range logs {
		switch {
		case len(s.logs) == 0:
			s.first = l.Index
			s.logs = append(s.logs, *l)
		case l.Index == s.lastLocked()+1:
			s.logs = append(s.logs, *l)
		case l.Index >= s.first && l.Index <= s.lastLocked():
			s.dropFromLocked(l.Index)
			s.logs = append(s.logs, *l)
		default:
			s.mu.Unlock()
			return errors.New("raftgroup: log store: gap before index")
		}
		s.bytes += logSize(l)
		if l.Type == raft.LogConfiguration {
			s.configs = append(s.configs, l.Index)
		}
	}
	full := s.maxBytes > 0 && s.bytes > s.maxBytes && s.onFull != nil
	s.mu.Unlock()
	if full && s.full.CompareAndSwap(false, true) {
		s.onFull()
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
		// A compaction (the snapshot holds the configuration) or a
		// conflict (the entries were not committed): either way the
		// snapshot's configuration is the one to report.
		s.logs, s.first, s.bytes, s.configs = nil, 0, 0, nil
	case min <= s.first: // prefix: copy the rest so the old array can be freed
		for i := range s.logs[:max-s.first+1] {
			s.bytes -= logSize(&s.logs[i])
		}
		rest := s.logs[max-s.first+1:]
		s.logs = append(make([]raft.Log, 0, len(rest)+len(rest)/4), rest...)
		s.first = max + 1
		keep := 0 // the newest configuration below first, and all after
		for keep+1 < len(s.configs) && s.configs[keep+1] < s.first {
			keep++
		}
		s.configs = s.configs[keep:]
	case max >= last: // suffix
		s.dropFromLocked(min)
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
