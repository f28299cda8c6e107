package raftgroup

import (
	"io"
	"math"
	"math/bits"
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
	// Commits is the log entries the host's replicas have known committed:
	// the sum of their commit indexes, those of replicas shut down
	// included (at their last value). A replica created from a snapshot
	// counts the entries the snapshot covers. Read from the replicas when
	// Stats is called: no cost on the commit path.
	Commits uint64
	// LeaseHits and LeaseMisses are Group.LeaseStats summed over the
	// host's replicas, those shut down included.
	LeaseHits, LeaseMisses uint64
	// With Config.DetailedStats, the histograms of FramesWritten per
	// write (its Sum is FramesWritten) and of Entries per AppendEntries
	// (its Sum is Entries); zero without.
	FramesPerWrite, EntriesPerAppend Sizes
}

// Stats returns the host's counters so far.
func (h *Host) Stats() Stats {
	s := &h.mux.stats
	// The histograms before the counters: a write or an append is counted
	// before it is observed, so, with traffic flowing, a histogram's Count
	// never exceeds its counter (Writes, AppendEntries) in one snapshot.
	var perWrite, perAppend Sizes
	d := h.mux.detail
	if d != nil {
		perWrite, perAppend = d.framesPerWrite.sizes(0), d.entriesPerAppend.sizes(0)
	}
	st := Stats{
		FramesWritten: s.framesWritten.Load(),
		Writes:        s.writes.Load(),
		FramesRead:    s.framesRead.Load(),
		Reads:         s.reads.Load(),
		AppendEntries: s.appendEntries.Load(),
		Entries:       s.entries.Load(),
		Applies:       s.applies.Load(),
		Goroutines:    s.goroutines.Load(),
	}
	if d != nil {
		perWrite.Sum, perAppend.Sum = st.FramesWritten, st.Entries
		st.FramesPerWrite, st.EntriesPerAppend = perWrite, perAppend
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st.Commits, st.LeaseHits, st.LeaseMisses = h.mu.retired.commits, h.mu.retired.leaseHits, h.mu.retired.leaseMisses
	for _, g := range h.mu.groups {
		if g.started {
			st.Commits += g.commits()
			st.LeaseHits += g.lease.hits.Load()
			st.LeaseMisses += g.lease.misses.Load()
		}
	}
	return st
}

// retiredStats are the counters of the replicas a host has shut down, at
// their last values; guarded by Host.mu.
type retiredStats struct {
	commits, leaseHits, leaseMisses uint64
}

// retireLocked adds g's final counters to the host's tally as g leaves the
// host's groups; h.mu is held.
func (h *Host) retireLocked(g *Group) {
	h.mu.retired.commits += g.commits()
	h.mu.retired.leaseHits += g.lease.hits.Load()
	h.mu.retired.leaseMisses += g.lease.misses.Load()
}

// counters is where the hot paths count: one atomic add each.
type counters struct {
	framesWritten, writes atomic.Uint64
	framesRead, reads     atomic.Uint64
	appendEntries         atomic.Uint64
	entries               atomic.Uint64
	applies, goroutines   atomic.Uint64
}

// SizeBuckets is the number of buckets of a Sizes histogram.
const SizeBuckets = 10

// Sizes is a histogram of small counts (frames per write, entries per
// AppendEntries) in power-of-two buckets: Buckets[i] counts the
// observations n with 2^(i-1) < n <= 2^i (Buckets[0]: n <= 1), the last
// bucket every n above 2^(SizeBuckets-2) (see SizeBound). Sum is their
// total.
type Sizes struct {
	Buckets [SizeBuckets]uint64
	Sum     uint64
}

// Count is the number of observations.
func (s Sizes) Count() uint64 {
	var n uint64
	for _, b := range s.Buckets {
		n += b
	}
	return n
}

// SizeBound is the upper bound of bucket i of a Sizes histogram: 2^i, and
// +Inf for the last bucket.
func SizeBound(i int) float64 {
	if i >= SizeBuckets-1 {
		return math.Inf(1)
	}
	return float64(uint64(1) << i)
}

// sizeCounts is a Sizes histogram being counted: one atomic add per
// observation (the sum is a counter kept anyway).
type sizeCounts struct {
	buckets [SizeBuckets]atomic.Uint64
}

func (c *sizeCounts) observe(n int) {
	i := 0
	if n > 1 {
		i = min(bits.Len(uint(n-1)), SizeBuckets-1)
	}
	c.buckets[i].Add(1)
}

func (c *sizeCounts) sizes(sum uint64) Sizes {
	s := Sizes{Sum: sum}
	for i := range c.buckets {
		s.Buckets[i] = c.buckets[i].Load()
	}
	return s
}

// detailCounters are the counters kept only with Config.DetailedStats.
type detailCounters struct {
	framesPerWrite, entriesPerAppend sizeCounts
}

// PeerStats are the counters of the connections with one peer (with
// Config.DetailedStats), cumulative since the host first exchanged frames
// with it. Snapshots this host sends the peer count in its writes and
// bytes written (not in its frames); those it receives are not counted.
type PeerStats struct {
	// Addr is the peer's advertised address (its Raft server address).
	Addr string
	// FramesWritten and BytesWritten are the frames and bytes handed to
	// write calls on connections to the peer, Writes those calls.
	FramesWritten, BytesWritten, Writes uint64
	// FramesRead and BytesRead are the frames and bytes read from them,
	// Reads the read calls (see Stats.Reads).
	FramesRead, BytesRead, Reads uint64
}

// peerCounters are one peer's PeerStats being counted.
type peerCounters struct {
	framesWritten, bytesWritten, writes atomic.Uint64
	framesRead, bytesRead, reads        atomic.Uint64
}

// PeerStats returns the counters of the peers this host has a live
// connection with, in no particular order; nil without
// Config.DetailedStats. A peer's counters run from the first frame
// exchanged with it since NewHost: a peer that reconnects carries on
// from where it was, one that has no connection is left out (so the
// list, and the metric series made from it, are bounded by the live
// connections, not by every address a connection ever claimed).
func (h *Host) PeerStats() []PeerStats {
	m := h.mux
	if m.detail == nil {
		return nil
	}
	m.mu.Lock()
	all := make([]*peer, 0, len(m.mu.peers))
	for _, p := range m.mu.peers {
		all = append(all, p)
	}
	m.mu.Unlock()
	peers := all[:0]
	for _, p := range all {
		p.mu.Lock()
		live := len(p.mu.conns) > 0
		p.mu.Unlock()
		if live {
			peers = append(peers, p)
		}
	}
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		c := p.stats
		out = append(out, PeerStats{Addr: p.addr,
			FramesWritten: c.framesWritten.Load(), BytesWritten: c.bytesWritten.Load(), Writes: c.writes.Load(),
			FramesRead: c.framesRead.Load(), BytesRead: c.bytesRead.Load(), Reads: c.reads.Load()})
	}
	return out
}

// countingReader counts, in reads unless it is nil, the reads that reach
// the connection under a bufio.Reader, and in peer, unless it is nil, the
// reads and bytes of the peer's connections.
type countingReader struct {
	r     io.Reader
	reads *atomic.Uint64
	peer  *peerCounters
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.reads != nil {
		c.reads.Add(1)
	}
	n, err := c.r.Read(p)
	if c.peer != nil {
		c.peer.reads.Add(1)
		c.peer.bytesRead.Add(uint64(n))
	}
	return n, err
}

// peerWriter counts in peer the writes and bytes that reach the
// connection under a bufio.Writer: a snapshot's stream.
type peerWriter struct {
	w    io.Writer
	peer *peerCounters
}

func (c *peerWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.peer.writes.Add(1)
	c.peer.bytesWritten.Add(uint64(n))
	return n, err
}
