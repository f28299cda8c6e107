package raftgroup

import (
	"io"
	"sync/atomic"
)

// Stats are a host's cumulative counters since NewHost, for metrics and
// benchmarks: divide the differences of two snapshots. Snapshot-install
// connections are not counted.
type Stats struct {
	// FramesWritten is the frames handed to connection writes (a frame the
	// fault seam duplicates counts twice, one it drops not at all), and
	// Writes the write calls that carried them: FramesWritten/Writes is
	// the frames per write syscall.
	FramesWritten, Writes uint64
	// FramesRead is the frames read from connections, and Reads the read
	// calls that filled the readers' buffers (each at least one read
	// syscall; a read that finds no data parks on the poller and retries).
	FramesRead, Reads uint64
	// AppendEntries is the AppendEntries requests sent that carried log
	// entries, and Entries the entries they carried: Entries/AppendEntries
	// is raft's batch size. Heartbeats and empty appends are not counted.
	AppendEntries, Entries uint64
	// Applies counts Group.Apply calls, and Goroutines the goroutines the
	// request paths started: Host.Call handlers, answer responders and
	// request drainers (at most one per group at a time), and Apply
	// waiters (likewise).
	Applies, Goroutines uint64
}

// Stats returns the host's counters so far.
func (h *Host) Stats() Stats {
	s := &h.mux.stats
	return Stats{
		FramesWritten: s.framesWritten.Load(),
		Writes:        s.writes.Load(),
		FramesRead:    s.framesRead.Load(),
		Reads:         s.reads.Load(),
		AppendEntries: s.appendEntries.Load(),
		Entries:       s.entries.Load(),
		Applies:       s.applies.Load(),
		Goroutines:    s.goroutines.Load(),
	}
}

// counters is where the hot paths count: one atomic add each.
type counters struct {
	framesWritten, writes atomic.Uint64
	framesRead, reads     atomic.Uint64
	appendEntries         atomic.Uint64
	entries               atomic.Uint64
	applies, goroutines   atomic.Uint64
}

// countingReader counts, in reads unless it is nil, the reads that reach
// the connection under a bufio.Reader.
type countingReader struct {
	r     io.Reader
	reads *atomic.Uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.reads != nil {
		c.reads.Add(1)
	}
	return c.r.Read(p)
}
