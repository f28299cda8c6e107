package raftgroup

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/rlog"
)

// GroupID names a Raft group (a GridKV range). It is the same on every node.
type GroupID uint64

// Errors returned by Host and Group; raft's own errors are wrapped in them.
var (
	ErrClosed      = errors.New("raftgroup: closed")
	ErrNotLeader   = errors.New("raftgroup: not the leader")
	ErrLeaderLost  = errors.New("raftgroup: leadership lost before the entry committed")
	ErrTimeout     = errors.New("raftgroup: timed out")
	ErrGroupExists = errors.New("raftgroup: group already exists")
	// ErrTransferRefused: a leadership transfer was not started because it
	// could wedge the group (see Group.TransferLeadership); try later.
	ErrTransferRefused = errors.New("raftgroup: leadership transfer refused for now")
)

// Config configures a Host. Zero values mean the defaults given.
type Config struct {
	// NodeID names the node; it must not contain '/'. Required.
	NodeID string
	// Incarnation distinguishes this run of the node from earlier ones: Raft
	// logs are in memory, so a restarted node must never reuse its old Raft
	// server id. Default: a random non-zero number.
	Incarnation uint64
	// BindAddr is the TCP address every group's Raft RPCs share.
	// Default "127.0.0.1:0" (an ephemeral port; see Host.Addr).
	BindAddr string
	// AdvertiseAddr is the address the other nodes dial (host:port; port 0
	// means the bound port): the Raft server address of every group
	// replica on this node, and its identity on the wire. Default: the
	// bound address, or, when bound to every interface, the host's private
	// IP with the bound port (an error when there is none; see
	// internal/netaddr).
	AdvertiseAddr string
	// RPCTimeout bounds one Raft RPC (snapshots get more, scaled by size),
	// and each TLS handshake. Default 5s.
	RPCTimeout time.Duration
	// TLS, if set, puts every connection of the listener under mutual TLS:
	// peer connections both ways, snapshot installs and Host.Call. The
	// host clones it, never modifies it, and derives two sides from it:
	// the listener requires and verifies a client certificate (ClientAuth
	// is raised to tls.RequireAndVerifyClientCert if lower; with ClientCAs
	// nil it verifies clients against RootCAs); dials present the same
	// certificate (Certificates or GetClientCertificate) and verify the
	// server (against RootCAs, or ClientCAs when RootCAs is nil) for the
	// host of the address dialed, an IP address or a name, unless
	// ServerName is set: then every node's certificate must be valid for
	// that one name. The listener takes a connection's hello, which names
	// the address of the node it comes from, only if the client
	// certificate is valid for that address's host (or, with ServerName
	// set, for ServerName: then any holder of such a certificate can claim
	// to be any node). Each handshake is bounded by RPCTimeout and runs on
	// its connection's goroutine. A failed handshake is logged at Warn,
	// at most once a minute per remote host. Default nil: plaintext.
	TLS *tls.Config
	// Raft timings; zero takes hashicorp/raft's defaults (1s heartbeat and
	// election timeouts, 500ms leader lease).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is how long a leader with nothing new to send waits
	// before telling followers the commit index again. Default 1s
	// (raft's is 50ms): those empty appends are two thirds of an idle
	// group's traffic at 50ms, and at 250ms cost an idle 3-node cluster
	// about a quarter of its write syscalls (benchmarks/idletest).
	// Followers do not wait for them to learn a new commit index: the
	// commit notifier tells them about a millisecond after it advances
	// (see commit.go, docs/raftgroup.md).
	CommitTimeout time.Duration
	// MaxAppendEntries caps entries per AppendEntries RPC. Default 64.
	MaxAppendEntries int
	// SnapshotThreshold is how many new entries trigger a snapshot, which
	// lets raft drop the in-memory log up to TrailingLogs. Default 4096.
	// Logs live in memory; with entries of many writes each (gridkv batches
	// them) MaxLogBytes is what bounds them in practice.
	SnapshotThreshold uint64
	// TrailingLogs is how many entries stay after a snapshot, so a follower
	// that fell that far behind catches up without a snapshot. Default 256.
	TrailingLogs uint64
	// SnapshotInterval is how often raft checks SnapshotThreshold (with
	// jitter). Default 5s.
	SnapshotInterval time.Duration
	// MaxLogBytes: when a group's in-memory log passes this many bytes, the
	// host snapshots the group at once so raft trims the log to what fits
	// in a quarter of it (raft's own trigger counts entries, not bytes),
	// at most once per 250ms per group. A node's logs then hold at most
	// about Groups x MaxLogBytes, so a host of many groups wants a share
	// of a node-wide budget (gridkv gives each replica 32 MiB /
	// (ReplicaCount x GroupsPerNode), within 64 KiB..4 MiB).
	// Default 4 MiB; negative disables.
	MaxLogBytes int64
	// Logger receives raft's warnings and errors. Default slog.Default().
	Logger *slog.Logger
	// Faults, if set, decides the fate of every frame this node sends
	// (tests and the Jepsen-style suite). Default nil: no faults, no cost.
	Faults *faultnet.Net
	// Lease tunes leader leases, the default path of linearizable reads
	// (Group.LeaseIndex). HeartbeatTimeout must be the same on every node:
	// leases rest on followers refusing votes for that long.
	Lease LeaseOptions
	// OnLeaderChange, if set, is called (from one goroutine, in order) each
	// time a group on this node observes a new leader ("" while none).
	OnLeaderChange func(group GroupID, leader raft.ServerID)
	// DetailedStats has the host count, besides Stats' counters, frames
	// and bytes per peer (Host.PeerStats) and the histograms of frames per
	// write and entries per AppendEntries (Stats.FramesPerWrite,
	// Stats.EntriesPerAppend): a few atomic adds per write and read call
	// and per AppendEntries. Default false: none, a nil check each.
	DetailedStats bool
}

func (c *Config) fill() error {
	if c.NodeID == "" || strings.Contains(c.NodeID, "/") {
		return fmt.Errorf("raftgroup: NodeID %q must be non-empty and contain no '/'", c.NodeID)
	}
	if c.Incarnation == 0 {
		c.Incarnation = rand.Uint64()>>1 | 1
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1:0"
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 5 * time.Second
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = time.Second
	}
	if c.MaxAppendEntries <= 0 {
		c.MaxAppendEntries = 64
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 4096
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 256
	}
	if c.MaxLogBytes == 0 {
		c.MaxLogBytes = 4 << 20
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// ServerID is the Raft server id of a node's incarnation: "node/incarnation".
func ServerID(node string, incarnation uint64) raft.ServerID {
	return raft.ServerID(node + "/" + strconv.FormatUint(incarnation, 10))
}

// ParseServerID splits a Raft server id made by ServerID.
func ParseServerID(id raft.ServerID) (node string, incarnation uint64, err error) {
	s := string(id)
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("raftgroup: server id %q has no incarnation", s)
	}
	inc, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("raftgroup: server id %q: %w", s, err)
	}
	return s[:i], inc, nil
}

// Host runs many Raft groups on one node over one TCP listener.
//
// Threading: all methods are safe for concurrent use. Close stops every
// group and every goroutine the host started.
type Host struct {
	cfg Config
	id  raft.ServerID
	mux *mux
	log *slog.Logger
	// collapse is shared by every group's raft logger and the mux, which
	// reports the peers that answer: a peer down is one line per interval
	// per message, and one when it is back, not one per heartbeat.
	collapse *rlog.Collapser

	observations  chan raft.Observation
	leaderChanges atomic.Int64
	// starting counts CreateGroup calls between reserving a group and
	// settling it (started, or shut down after Close began).
	starting sync.WaitGroup

	mu struct {
		sync.Mutex
		closed bool
		groups map[GroupID]*Group
		byRaft map[*raft.Raft]GroupID
		// retired: the counters of the replicas shut down (see Stats).
		retired retiredStats
	}
	wg   sync.WaitGroup
	stop chan struct{}
}

// NewHost starts a node's listener. Groups are added with CreateGroup.
func NewHost(cfg Config) (*Host, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	hb := cfg.HeartbeatTimeout
	if hb <= 0 {
		hb = raft.DefaultConfig().HeartbeatTimeout
	}
	log := cfg.Logger.With("node", cfg.NodeID)
	collapse := rlog.NewCollapser(rlog.CollapseOptions{})
	m, err := newMux(muxConfig{bind: cfg.BindAddr, advertise: cfg.AdvertiseAddr, self: cfg.Incarnation, log: log, collapse: collapse, faults: cfg.Faults,
		timeout: cfg.RPCTimeout, beatTimeout: min(cfg.RPCTimeout, hb/2), linger: lingerFor(hb), tls: cfg.TLS, detailed: cfg.DetailedStats})
	if err != nil {
		return nil, err
	}
	h := &Host{
		cfg: cfg, id: ServerID(cfg.NodeID, cfg.Incarnation), mux: m,
		log:          log,
		collapse:     collapse,
		observations: make(chan raft.Observation, 1024),
		stop:         make(chan struct{}),
	}
	h.mu.groups = make(map[GroupID]*Group)
	h.mu.byRaft = make(map[*raft.Raft]GroupID)
	h.wg.Add(1)
	go func() { defer h.wg.Done(); h.observe() }()
	return h, nil
}

// Addr is the advertised address (Config.AdvertiseAddr), the Raft server
// address of every group replica on this node.
func (h *Host) Addr() string { return h.mux.addr }

// BoundAddr is the bound listen address (the real port when 0 was asked).
func (h *Host) BoundAddr() string { return h.mux.ln.Addr().String() }

// ID is this node incarnation's Raft server id.
func (h *Host) ID() raft.ServerID { return h.id }

// RPCTimeout is the configured bound of one RPC.
func (h *Host) RPCTimeout() time.Duration { return h.cfg.RPCTimeout }

// NodeID is the configured node id.
func (h *Host) NodeID() string { return h.cfg.NodeID }

// LeaderChanges counts leader observations across all groups since start.
func (h *Host) LeaderChanges() int64 { return h.leaderChanges.Load() }

// GroupOptions configure one group replica.
type GroupOptions struct {
	// Bootstrap, when non-empty, starts the group with this configuration,
	// which must include this host. Empty: the replica starts with no
	// configuration and waits for a leader to add it.
	Bootstrap []raft.Server
	// RecoverFrom, when set (Bootstrap empty), starts the group from the
	// state of another replica on this host, of a group that lost its
	// majority for good: its latest snapshot (taken first), the log
	// entries it stores after that, and its term, copied into this
	// group's fresh stores, with the configuration forced down to this
	// host alone (raft.RecoverCluster). The new group then elects itself;
	// the caller adds replicas with AddVoter. RecoverFrom itself is left
	// running, untouched: the caller shuts it down once the new group has
	// started, so a failure leaves it as it was.
	//
	// RecoverCluster counts every copied entry as committed, so an entry
	// RecoverFrom stored that never committed applies (a write whose
	// caller was told its outcome is unknown may take effect), and an
	// entry committed without RecoverFrom (acknowledged by the lost
	// majority, never appended to it) is lost. The state machine must
	// reset on Restore (raft's contract); indexes and terms go on from
	// RecoverFrom's, so versions stamped with log indexes keep growing.
	RecoverFrom *Group
}

// CreateGroup starts this node's replica of group id, applying to fsm.
func (h *Host) CreateGroup(id GroupID, fsm raft.FSM, opts GroupOptions) (*Group, error) {
	h.mu.Lock()
	if h.mu.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	if _, ok := h.mu.groups[id]; ok {
		h.mu.Unlock()
		return nil, fmt.Errorf("%w: %d", ErrGroupExists, id)
	}
	g := &Group{ID: id, h: h, logs: &logStore{}}
	h.mu.groups[id] = g // reserve the id while raft starts
	h.starting.Add(1)   // Close waits for this call to settle the group's fate
	h.mu.Unlock()
	defer h.starting.Done()

	err := g.start(fsm, opts)
	h.mu.Lock()
	closing := h.mu.closed
	switch {
	case err != nil:
		delete(h.mu.groups, id)
	case !closing:
		g.started = true
		h.mu.byRaft[g.raft] = id
	}
	h.mu.Unlock()
	switch {
	case err != nil:
		return nil, err
	case closing:
		// Close began while raft started, and left this group to us.
		_ = g.Shutdown()
		return nil, ErrClosed
	}
	return g, nil
}

// Group returns this node's replica of group id, or nil.
func (h *Host) Group(id GroupID) *Group {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.mu.groups[id]
	if g == nil || !g.started {
		return nil
	}
	return g
}

// Groups returns this node's replicas, in no particular order.
func (h *Host) Groups() []*Group {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Group, 0, len(h.mu.groups))
	for _, g := range h.mu.groups {
		if g.started {
			out = append(out, g)
		}
	}
	return out
}

func (h *Host) raftConfig() *raft.Config { return h.cfg.raftConfig(h.id, h.log, h.collapse) }

// RaftConfig is the raft.Config a Host with this Config gives each group
// replica (exported so benchmarks can run other transports with the very
// same settings).
func (c Config) RaftConfig(id raft.ServerID) (*raft.Config, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	return c.raftConfig(id, c.Logger.With("node", c.NodeID), rlog.NewCollapser(rlog.CollapseOptions{})), nil
}

func (c *Config) raftConfig(id raft.ServerID, log *slog.Logger, collapse *rlog.Collapser) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = id
	if c.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = c.HeartbeatTimeout
	}
	if c.ElectionTimeout > 0 {
		rc.ElectionTimeout = c.ElectionTimeout
	}
	if c.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	}
	rc.CommitTimeout = c.CommitTimeout
	rc.MaxAppendEntries = c.MaxAppendEntries
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.TrailingLogs = c.TrailingLogs
	rc.SnapshotInterval = c.SnapshotInterval
	// BatchApplyCh stays off: with it, an Apply racing Shutdown can land
	// in raft's buffered apply channel after the main loop has exited, and
	// its future is never answered. Unbuffered, the send succeeds only
	// into a running loop. Concurrent applies still batch: the leader loop
	// takes every sender that is ready, up to MaxAppendEntries, per round.
	rc.BatchApplyCh = false
	rc.NoSnapshotRestoreOnStart = true
	rc.Logger = rlog.New(log, "raft", slog.LevelWarn, collapse)
	return rc
}

// observe turns raft's leader observations into OnLeaderChange calls.
func (h *Host) observe() {
	for {
		select {
		case o := <-h.observations:
			lo, ok := o.Data.(raft.LeaderObservation)
			if !ok {
				continue
			}
			h.leaderChanges.Add(1)
			h.mu.Lock()
			id, known := h.mu.byRaft[o.Raft]
			h.mu.Unlock()
			if known && h.cfg.OnLeaderChange != nil {
				h.cfg.OnLeaderChange(id, lo.LeaderID)
			}
		case <-h.stop:
			return
		}
	}
}

// spawn runs fn on a goroutine that Close waits for; it reports false, and
// runs nothing, once Close has begun.
func (h *Host) spawn(fn func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return false
	}
	h.wg.Add(1)
	go func() { defer h.wg.Done(); fn() }()
	return true
}

// Close shuts down every group, then the listener and its connections, and
// waits for every goroutine the host started. It is idempotent.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.mu.closed {
		h.mu.Unlock()
		return nil
	}
	h.mu.closed = true
	groups := make([]*Group, 0, len(h.mu.groups))
	for _, g := range h.mu.groups {
		if g.started { // one still starting is CreateGroup's to shut down
			groups = append(groups, g)
		}
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() { defer wg.Done(); _ = g.Shutdown() }()
	}
	wg.Wait()
	h.starting.Wait() // groups that finish starting now are shut down by CreateGroup
	h.mux.close()
	close(h.stop)
	h.wg.Wait()
	// Nothing logs through the collapser now: write the counts it still
	// holds (a peer failing when the node stopped).
	h.collapse.Flush()
	return nil
}
