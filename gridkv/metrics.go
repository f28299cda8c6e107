package gridkv

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/raftgroup"
)

// Prometheus metrics (Config.Metrics; docs/metrics.md lists them). Only
// the operations and the writes per log entry are counted as they happen,
// and only when metrics are on: DB.met is nil otherwise, and the hot paths
// check it once. Everything else is read at scrape time from counters the
// node keeps anyway (raftgroup.Stats, the forwarder's) or from its state.

// opKind is what a public call did: the kind label.
type opKind uint8

const (
	opSet opKind = iota
	opGet
	opDelete
	opCAS
	opCVS
	opCAD
	opIncr
	opExpire
	opScan
	numOpKinds
)

var opKindNames = [numOpKinds]string{"set", "get", "delete", "cas", "cvs", "cad", "incr", "expire", "scan"}

// opPath is the read path asked for: the path label; pathNone for writes.
type opPath uint8

const (
	pathNone opPath = iota
	pathLease
	pathReadIndex
	pathQuorum
	pathStale
	numOpPaths
)

var opPathNames = [numOpPaths]string{"none", "lease", "readindex", "quorum", "stale"}

// pathOf is the path label of a read in mode m: the default mode is the
// lease path (which falls back to ReadIndex when the leader holds no
// lease; gridkv_raft_lease_reads_total counts those).
func pathOf(m readMode) opPath {
	switch m {
	case readIndex:
		return pathReadIndex
	case readQuorum:
		return pathQuorum
	case readStale:
		return pathStale
	}
	return pathLease
}

// opResult is the result label: the API's error classes.
type opResult uint8

const (
	resOK opResult = iota
	resNotFound
	resTimeout
	resClosed
	resInvalid
	resMemoryLimit
	resUnavailable
	resError // anything else (a malformed answer)
	numOpResults
)

var opResultNames = [numOpResults]string{"ok", "not_found", "timeout", "closed", "invalid", "memory_limit", "unavailable", "error"}

func resultOf(err error) opResult {
	switch {
	case err == nil:
		return resOK
	case errors.Is(err, ErrNotFound):
		return resNotFound
	case errors.Is(err, ErrTimeout):
		return resTimeout
	case errors.Is(err, ErrClosed):
		return resClosed
	case errors.Is(err, ErrInvalid):
		return resInvalid
	case errors.Is(err, ErrMemoryLimit):
		return resMemoryLimit
	case errors.Is(err, ErrUnavailable):
		return resUnavailable
	}
	return resError
}

// durationBuckets span a lease read on one node (tens of µs) to a write
// that waits out an election (seconds).
var durationBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5}

// opCell is one (kind, path, result) series pair, looked up once.
type opCell struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// nodeMetrics is a node's Prometheus collector: the operation series, the
// writes per entry and the membership events, counted as they happen, and
// the rest read at scrape time. It is registered, with the constant label
// node, in Open, and unregistered by Close.
//
// Threading: safe for concurrent use; Collect may run while the node
// opens or closes.
type nodeMetrics struct {
	db  *DB
	reg prometheus.Registerer // Config.Metrics with the node label
	// ready is set once Open has started everything Collect reads.
	ready atomic.Bool
	// epoch is what operations are timed from: time.Since(epoch) reads
	// the monotonic clock alone, where time.Now reads the wall clock too
	// (a third of the bookkeeping's cost, measured).
	epoch time.Time

	ops         *prometheus.CounterVec
	durations   *prometheus.HistogramVec
	cells       [numOpKinds][numOpPaths][numOpResults]atomic.Pointer[opCell]
	opsPerEntry prometheus.Histogram
	membership  *prometheus.CounterVec

	forwarded, forwardFrames        *prometheus.Desc
	commits, applies, leaderChanges *prometheus.Desc
	leaseReads, entriesPerAppend    *prometheus.Desc
	sentFrames, receivedFrames      *prometheus.Desc
	sentBytes, receivedBytes        *prometheus.Desc
	framesPerWrite                  *prometheus.Desc
	groupsHeld, groupsLed           *prometheus.Desc
	rangesHeld, rangesLed           *prometheus.Desc
	memoryUsed, memoryLimit         *prometheus.Desc
}

var _ prometheus.Collector = (*nodeMetrics)(nil)

// newMetrics registers db's metrics in cfg.Metrics, labelled with its
// NodeID; nil when cfg.Metrics is nil. A failed registration (another
// node of this NodeID in the same registry, say) is ErrInvalid.
func newMetrics(db *DB, cfg Config) (*nodeMetrics, error) {
	if cfg.Metrics == nil {
		return nil, nil
	}
	m := &nodeMetrics{db: db, epoch: time.Now(), reg: prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.NodeID}, cfg.Metrics)}
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gridkv_operations_total",
		Help: "Operations called on this node, by kind, result and read path (none for writes)."},
		[]string{"kind", "result", "path"})
	m.durations = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gridkv_operation_duration_seconds",
		Help: "Time from call to return of the operations called on this node, by kind, result and read path.", Buckets: durationBuckets},
		[]string{"kind", "result", "path"})
	m.opsPerEntry = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridkv_raft_operations_per_entry",
		Help: "Writes carried by each log entry this node's group leaders committed (group commit).", Buckets: prometheus.ExponentialBuckets(1, 2, 9)})
	m.membership = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gridkv_membership_events_total",
		Help: "Membership events this node's gossip saw: join, leave (graceful), fail (declared dead)."}, []string{"event"})
	for _, ev := range []string{"join", "leave", "fail"} {
		m.membership.WithLabelValues(ev)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	m.forwarded = desc("gridkv_forwarded_operations_total", "Reads and writes this node sent to another node's group leader (or replica), by kind.", "kind")
	m.forwardFrames = desc("gridkv_forwarded_frames_total", "Frames the forwarded reads and writes travelled in (several per frame under load), by kind.", "kind")
	m.commits = desc("gridkv_raft_commits_total", "Log entries this node's replicas know committed, leader or follower (the sum of their commit indexes).")
	m.applies = desc("gridkv_raft_applies_total", "Log entries this node's group leaders proposed (raftgroup Apply calls).")
	m.leaderChanges = desc("gridkv_raft_leader_changes_total", "Leader changes this node's replicas observed (including losing a leader).")
	m.leaseReads = desc("gridkv_raft_lease_reads_total", "Default-mode reads this node's leaders served under their lease (hit) or by a ReadIndex round for want of one (miss).", "result")
	m.entriesPerAppend = desc("gridkv_raft_entries_per_append", "Log entries carried by each AppendEntries this node sent with entries.")
	m.sentFrames = desc("gridkv_transport_sent_frames_total", "Frames this node wrote to a peer's connection.", "peer")
	m.receivedFrames = desc("gridkv_transport_received_frames_total", "Frames this node read from a peer's connection.", "peer")
	m.sentBytes = desc("gridkv_transport_sent_bytes_total", "Bytes this node wrote to a peer's connection.", "peer")
	m.receivedBytes = desc("gridkv_transport_received_bytes_total", "Bytes this node read from a peer's connection.", "peer")
	m.framesPerWrite = desc("gridkv_transport_frames_per_write", "Frames carried by each write syscall to a peer.")
	m.groupsHeld = desc("gridkv_groups_held", "Replica groups this node holds a replica of.")
	m.groupsLed = desc("gridkv_groups_led", "Replica groups this node leads.")
	m.rangesHeld = desc("gridkv_ranges_held", "Ranges owned by the replica groups this node holds a replica of.")
	m.rangesLed = desc("gridkv_ranges_led", "Ranges owned by the replica groups this node leads.")
	m.memoryUsed = desc("gridkv_memory_used_bytes", "Bytes of keys plus values this node's replicas hold.")
	m.memoryLimit = desc("gridkv_memory_limit_bytes", "The share of MemoryLimit the ranges this node's replicas own may hold (absent without a MemoryLimit).")
	if err := m.reg.Register(m); err != nil {
		return nil, fmt.Errorf("%w: config: field Metrics: registering node %q's metrics failed (is a node of that NodeID registered there already?): %v",
			ErrInvalid, cfg.NodeID, err)
	}
	return m, nil
}

// unregister takes the metrics out of the registry (Close, or a failed
// Open), so that a node of the same NodeID can register again.
func (m *nodeMetrics) unregister() {
	if m != nil {
		m.reg.Unregister(m)
	}
}

// start is when an operation starts (since m.epoch), or nothing without
// metrics.
func (m *nodeMetrics) start() time.Duration {
	if m == nil {
		return 0
	}
	return time.Since(m.epoch)
}

// done counts an operation that started at start and ended with err;
// nothing without metrics.
func (m *nodeMetrics) done(kind opKind, path opPath, start time.Duration, err error) {
	if m != nil {
		m.observe(kind, path, start, err)
	}
}

func (m *nodeMetrics) observe(kind opKind, path opPath, start time.Duration, err error) {
	res := resultOf(err)
	slot := &m.cells[kind][path][res]
	c := slot.Load()
	if c == nil {
		k, p, r := opKindNames[kind], opPathNames[path], opResultNames[res]
		c = &opCell{count: m.ops.WithLabelValues(k, r, p), duration: m.durations.WithLabelValues(k, r, p)}
		slot.Store(c) // a racing store holds the same series
	}
	c.count.Inc()
	c.duration.Observe((time.Since(m.epoch) - start).Seconds())
}

// noteEntry counts the writes one committed log entry carried.
func (m *nodeMetrics) noteEntry(writes int) {
	if m != nil {
		m.opsPerEntry.Observe(float64(writes))
	}
}

// noteMember counts a membership event (gossip.Config.OnEvent).
func (m *nodeMetrics) noteMember(ev gossip.Event) {
	switch ev.Kind {
	case gossip.EventJoin, gossip.EventLeave, gossip.EventFail:
		m.membership.WithLabelValues(ev.Kind.String()).Inc()
	}
}

// Describe implements prometheus.Collector.
func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.ops.Describe(ch)
	m.durations.Describe(ch)
	m.opsPerEntry.Describe(ch)
	m.membership.Describe(ch)
	for _, d := range []*prometheus.Desc{m.forwarded, m.forwardFrames, m.commits, m.applies, m.leaderChanges,
		m.leaseReads, m.entriesPerAppend, m.sentFrames, m.receivedFrames, m.sentBytes, m.receivedBytes,
		m.framesPerWrite, m.groupsHeld, m.groupsLed, m.rangesHeld, m.rangesLed, m.memoryUsed, m.memoryLimit} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the counted series, then what
// is read from the node now.
func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	m.ops.Collect(ch)
	m.durations.Collect(ch)
	m.opsPerEntry.Collect(ch)
	m.membership.Collect(ch)
	if !m.ready.Load() {
		return // Open has not started the parts yet
	}
	db := m.db
	counter := func(d *prometheus.Desc, v uint64, labels ...string) { constCounter(ch, d, v, labels...) }
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}

	counter(m.forwarded, uint64(db.fwd.reads.Load()), "read")
	counter(m.forwarded, uint64(db.fwd.writes.Load()), "write")
	counter(m.forwardFrames, uint64(db.fwd.readFrames.Load()), "read")
	counter(m.forwardFrames, uint64(db.fwd.writeFrames.Load()), "write")

	st := db.host.Stats()
	counter(m.commits, st.Commits)
	counter(m.applies, st.Applies)
	counter(m.leaderChanges, uint64(db.host.LeaderChanges()))
	counter(m.leaseReads, st.LeaseHits, "hit")
	counter(m.leaseReads, st.LeaseMisses, "miss")
	ch <- sizesHistogram(m.entriesPerAppend, st.EntriesPerAppend)
	ch <- sizesHistogram(m.framesPerWrite, st.FramesPerWrite)
	m.collectPeers(ch, db.host.PeerStats())

	var held, led, rangesHeld, rangesLed int
	var used, limit int64
	for r := range db.reps {
		rep := db.reps[r].Load()
		if rep == nil {
			continue
		}
		owned := rep.fsm.CountIn(fsm.Owned)
		held++
		rangesHeld += owned
		if rep.group.IsLeader() {
			led++
			rangesLed += owned
		}
		used += rep.fsm.Used()
		if l := rep.fsm.Limit(); l != math.MaxInt64 {
			limit += l
		}
	}
	gauge(m.groupsHeld, float64(held))
	gauge(m.groupsLed, float64(led))
	gauge(m.rangesHeld, float64(rangesHeld))
	gauge(m.rangesLed, float64(rangesLed))
	gauge(m.memoryUsed, float64(used))
	if db.cfg.MemoryLimit > 0 {
		gauge(m.memoryLimit, float64(limit))
	}
}

// collectPeers sends the per-peer transport counters of peers.
func (m *nodeMetrics) collectPeers(ch chan<- prometheus.Metric, peers []raftgroup.PeerStats) {
	for _, p := range peers {
		constCounter(ch, m.sentFrames, p.FramesWritten, p.Addr)
		constCounter(ch, m.receivedFrames, p.FramesRead, p.Addr)
		constCounter(ch, m.sentBytes, p.BytesWritten, p.Addr)
		constCounter(ch, m.receivedBytes, p.BytesRead, p.Addr)
	}
}

// constCounter sends a counter of d, unless the series cannot be made: a
// label value that is not valid UTF-8 (the peer label is an address a
// remote node sent) would otherwise panic (MustNewConstMetric), or fail
// the whole scrape; it loses that one series instead.
func constCounter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	if c, err := prometheus.NewConstMetric(d, prometheus.CounterValue, float64(v), labels...); err == nil {
		ch <- c
	}
}

// sizesHistogram is s as a Prometheus histogram.
func sizesHistogram(d *prometheus.Desc, s raftgroup.Sizes) prometheus.Metric {
	buckets := make(map[float64]uint64, raftgroup.SizeBuckets-1)
	var cum uint64
	for i, n := range s.Buckets {
		cum += n
		if i < raftgroup.SizeBuckets-1 { // the last is +Inf: the count
			buckets[raftgroup.SizeBound(i)] = cum
		}
	}
	return prometheus.MustNewConstHistogram(d, cum, float64(s.Sum), buckets)
}
