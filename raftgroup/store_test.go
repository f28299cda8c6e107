package raftgroup

import (
	"runtime"
	"testing"
	"weak"

	"github.com/hashicorp/raft"
)

// gone reports whether the object p points into has been collected.
func gone[T any](p weak.Pointer[T]) bool {
	runtime.GC()
	runtime.GC()
	return p.Value() == nil
}

// A leader hands StoreLogs pointers into its Apply futures; the store must
// not keep the futures alive.
func TestLogStoreKeepsNoCallerStruct(t *testing.T) {
	type future struct { // the shape of raft's logFuture: the Log embedded
		log   raft.Log
		errCh chan error
	}
	s := &logStore{}
	f := &future{log: raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: make([]byte, 64)}, errCh: make(chan error, 1)}
	wf := weak.Make(f)
	if err := s.StoreLogs([]*raft.Log{&f.log}); err != nil {
		t.Fatal(err)
	}
	f = nil
	if !gone(wf) {
		t.Fatal("the log store keeps the struct the stored raft.Log was part of")
	}
	var got raft.Log
	if err := s.GetLog(1, &got); err != nil || len(got.Data) != 64 {
		t.Fatalf("GetLog(1) = %v, %d bytes of data", err, len(got.Data))
	}
}

// Entries deleted (a prefix after a snapshot, a suffix on a conflict) are
// no longer reachable from the store, and the byte count follows.
func TestLogStoreReleasesDeletedEntries(t *testing.T) {
	const n, size = 100, 1 << 10
	s := &logStore{}
	data := make([]weak.Pointer[byte], n+1)
	for i := uint64(1); i <= n; i++ {
		d := make([]byte, size)
		data[i] = weak.Make(&d[0])
		if err := s.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: d}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, keptFrom, keptTo uint64) {
		t.Helper()
		runtime.GC()
		runtime.GC()
		for i := uint64(1); i <= n; i++ {
			kept := i >= keptFrom && i <= keptTo
			if alive := data[i].Value() != nil; alive != kept {
				t.Fatalf("after %s: entry %d's data alive=%v, want %v", what, i, alive, kept)
			}
		}
		if want := int64(keptTo-keptFrom+1) * (size + logOverhead); s.Bytes() != want {
			t.Fatalf("after %s: Bytes() = %d, want %d", what, s.Bytes(), want)
		}
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		if first != keptFrom || last != keptTo {
			t.Fatalf("after %s: log holds %d..%d, want %d..%d", what, first, last, keptFrom, keptTo)
		}
	}
	if err := s.DeleteRange(1, 50); err != nil {
		t.Fatal(err)
	}
	check("a prefix delete", 51, n)
	if err := s.DeleteRange(80, n); err != nil {
		t.Fatal(err)
	}
	check("a suffix delete", 51, 79)
	// A conflicting entry replaces the tail from its index.
	if err := s.StoreLog(&raft.Log{Index: 70, Term: 2, Type: raft.LogCommand, Data: make([]byte, size)}); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	for i := uint64(70); i <= 79; i++ {
		if data[i].Value() != nil {
			t.Fatalf("entry %d's data is still reachable after entry 70 replaced the tail", i)
		}
	}
	if want := int64(70-51+1) * (size + logOverhead); s.Bytes() != want {
		t.Fatalf("after the replacement: Bytes() = %d, want %d", s.Bytes(), want)
	}
}
