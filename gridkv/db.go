package gridkv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/internal/netaddr"
	"github.com/gridkv/gridkv/internal/testhook"
	"github.com/gridkv/gridkv/raftgroup"
)

// DB is one node of a GridKV cluster.
//
// Threading: every method is safe for concurrent use. Close stops every
// goroutine the node started.
type DB struct {
	cfg  Config
	log  *slog.Logger
	host *raftgroup.Host
	gsp  *gossip.Node

	mu     sync.Mutex // serializes creating and dropping replicas, and Close
	closed atomic.Bool
	// recovering holds the groups startRecovered is building a new
	// creation of, outside mu, each with a channel closed once it is done
	// (guarded by mu; nil until the first).
	recovering map[int]chan struct{}
	// lay is where ranges live; nil until this node knows the cluster's
	// group count (a joining node learns it from gossip in Open).
	lay atomic.Pointer[layout]
	// reps[g] is this node's replica of group g, or nil: read on every
	// request, so without a lock.
	reps       [maxGroups]atomic.Pointer[replica]
	leaderHint sync.Map // group -> peer (its leader), learned from redirects
	fwd        *forwarder
	// tls decides which gossip members count, with Config.TLS (see
	// tlscheck.go); nil without.
	tls     *tlsCheck
	stepLog stepLog // the reconciler's rate-limited warnings
	// steps runs the reconciler's configuration changes, several groups
	// at once (steprun.go); its goroutines are counted in wg.
	steps *stepRunner
	// orphans: this node's replicas checking they still belong to their
	// groups (orphans.go).
	orphans orphanState
	// meta serializes gossip metadata updates (announce); leads is the
	// groups this node leads, as the reconciler last saw them.
	meta struct {
		sync.Mutex
		leads []int
	}
	// layoutMu serializes adopting a newer layout (adoptLayout).
	layoutMu sync.Mutex

	stop chan struct{}
	wg   sync.WaitGroup
	// stopCtx ends when stop is closed, for calls that take a context.
	stopCtx    context.Context
	stopCancel context.CancelFunc

	// feeds are the watch feeds running (watchfeed.go); shared is the one
	// the node's watchers share.
	feeds struct {
		sync.Mutex
		shared *feed
		all    map[*feed]struct{}
		closed bool
	}

	// handoffKick wakes the handoff loop (handoff.go); handoffTimeout
	// (nanoseconds) is how long a handoff may take before its source takes
	// the range back: Timing.HandoffTimeout, or the suite's
	// (testhook.Hooks.HandoffTimeout).
	handoffKick    chan struct{}
	handoffTimeout atomic.Int64
	// chunkHook, when set (by tests), is asked before each Chunk this
	// node's handoff loop pulls (range, cursor); false stops the pull for
	// this pass, as if the node had died there.
	chunkHook atomic.Pointer[func(r int, cursor string) bool]

	// quorumSlack lets a Quorum read answer from a replica that trails the
	// largest stored index seen by this much: 0, except in the suite's
	// negative control.
	quorumSlack uint64
	// fixedGroups keeps the group count at the formation's (the suite's
	// testhook.Hooks.FixedGroups).
	fixedGroups bool

	// Quorum reads that found no answer applied through M at once, and
	// how long they waited for one (benchmarks read them).
	quorumWaits, quorumWaitNanos atomic.Int64
	// Log entries the batchers applied and the writes they carried
	// (benchmarks read them).
	batchEntries, batchWrites atomic.Int64

	// met is the node's Prometheus metrics (metrics.go); nil without
	// Config.Metrics, which the hot paths check once.
	met *nodeMetrics
}

// replica is this node's copy of one replica group.
type replica struct {
	id    int    // the group's number
	gen   uint64 // its creation epoch (fsm.Created.Gen; 0 for a genesis group)
	group *raftgroup.Group
	fsm   *fsm.FSM
	batch *batcher
	// genesis is set once the group's Genesis command (its ranges, owned
	// at epoch 1) is known applied here; see ensureGenesis.
	genesis   atomic.Bool
	genesisMu sync.Mutex
	// handoff is the handoff driver's state (handoff.go), touched only by
	// the node's handoff loop.
	handoff handoffState
	// sole is set while this node is the range's only server (a single-node
	// cluster, or the last node left after the others closed; see
	// becomeSole): then its state is linearizable to read directly, since
	// no other node can be elected. Cleared before this node adds a
	// replica; only this node, as leader, changes the configuration.
	sole atomic.Bool
}

// unloggedCreation reports whether rep is a new creation of group 0,
// recovered here, that has not yet logged itself: its layout (group 0's
// own) still names an older creation. It stays this replica alone until
// it has (logSelfRecord, finishRecovery).
func (rep *replica) unloggedCreation() bool {
	return rep.id == 0 && rep.gen > rep.fsm.Layout().Gen(0)
}

// Member is a live member of the cluster.
type Member struct {
	ID string `json:"id"`
	// Addr is where the others dial it for Raft and RPC: its
	// AdvertiseAddr, by default its bound BindAddr.
	Addr  string `json:"addr"`
	Leads int    `json:"leads"` // how many replica groups it leads, as last known
	// GossipAddr is where the others gossip with it, a seed for nodes on
	// any host: its GossipAdvertiseAddr, by default its bound GossipAddr.
	GossipAddr  string `json:"gossip_addr"`
	Incarnation uint64 `json:"incarnation"`
}

// Location says where a key lives.
type Location struct {
	Range    int      // the key's hash range
	Group    int      // the replica group (Raft group) that holds the range
	Leader   string   // node id; "" while no leader is known
	Replicas []string // node ids
}

// Open starts a node: OpenContext with context.Background(), so joining is
// bounded by JoinTimeout alone.
func Open(cfg Config) (*DB, error) {
	return OpenContext(context.Background(), cfg)
}

// OpenContext starts a node. The zero Config is a single-node cluster on
// loopback with ephemeral ports. With Seeds it joins an existing cluster;
// its ranges' leaders then add replicas on it. See Config for every option.
//
// ctx bounds joining and forming the cluster, as JoinTimeout does (the
// sooner ends it). Errors, each on one line:
//   - ErrInvalid: a field that cannot be used (every such field is named,
//     with why): malformed, an address that cannot be bound (a port in
//     use), a NodeID that a live member answers to, or a setting that must
//     be the same on every node and differs from the cluster's (Ranges, GroupsPerNode,
//     ReplicaCount, MemoryLimit, Timing.HeartbeatTimeout, TLS on or off: both values are
//     named). The
//     members refuse such a node too and never count it.
//   - ErrTimeout, wrapping ctx.Err(): ctx ended first.
//   - ErrUnavailable: JoinTimeout passed before a seed let this node in
//     (it says how many seeds were tried, and the first one's error), or
//     before the BootstrapExpect nodes saw each other. A GossipKey other
//     than the members' (or none) ends this way too: the members drop
//     what they cannot decrypt, so the node cannot tell it from silence.
//     With Config.TLS, a node that joined gossip but completed no round
//     trip over mutual TLS with any member (its certificate, or theirs,
//     refused) ends this way too, naming TLS; it leaves gossip.
//
// A failed OpenContext has stopped every goroutine it started.
func OpenContext(ctx context.Context, cfg Config) (*DB, error) {
	return open(ctx, cfg, nil)
}

// The Jepsen-style suite opens its nodes through testhook.Open, with hooks.
func init() {
	testhook.Open = func(ctx context.Context, cfg any, h *testhook.Hooks) (any, error) {
		c, ok := cfg.(Config)
		if !ok {
			return nil, fmt.Errorf("%w: testhook.Open takes a gridkv.Config, not %T", ErrInvalid, cfg)
		}
		return open(ctx, c, h)
	}
}

// nodeLogBytes bounds the memory of a node's Raft logs, all its replicas
// together: each replica's log is trimmed (by a snapshot) when it passes
// its share, down to a quarter of it (raftgroup's MaxLogBytes). Measured
// with benchmarks/memtest (docs/memory.md), 1M writes of 112 B, when each
// of 64 ranges was its own group: raftgroup's default of 4 MiB per group
// let 64 groups keep 147 MB of log, the whole write history; 64 MiB in all
// kept ~48 MB per node, 32 MiB ~31 MB.
const nodeLogBytes = 32 << 20

// logBytesPerGroup is a replica's share of nodeLogBytes when a node holds
// replicas of that many groups, within 64 KiB..4 MiB: below that, a
// follower pausing for a moment would need a snapshot.
func logBytesPerGroup(replicas int) int64 {
	return min(max(nodeLogBytes/int64(max(replicas, 1)), 64<<10), 4<<20)
}

// gossipLeaveWait bounds how long Close waits for gossip to send that this
// node leaves, and then that it left. memberlist sends those on its next
// gossip rounds, 100-200ms apart with either preset; a second is several
// rounds. A node whose leave was not confirmed in time then pings the
// others (up to three probe timeouts, gossip.Node.Close) to tell a failed
// leave from nobody being there. It follows the gossip preset, so it is
// not a Timing of its own.
const gossipLeaveWait = time.Second

// open is OpenContext with the suite's hooks (nil: none).
func open(ctx context.Context, cfg Config, hooks *testhook.Hooks) (_ *DB, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	db := &DB{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), stop: make(chan struct{}),
		handoffKick: make(chan struct{}, 1)}
	// Registered first, so that a registry that refuses them fails Open
	// before anything starts; scrapes see the node's state once it runs.
	if db.met, err = newMetrics(db, cfg); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			db.met.unregister()
		}
	}()
	db.feeds.all = map[*feed]struct{}{}
	db.steps = newStepRunner(&db.wg, maxParallelSteps, slowForSteps*cfg.Timing.StepTimeout)
	db.stopCtx, db.stopCancel = context.WithCancel(context.Background())
	db.handoffTimeout.Store(int64(cfg.Timing.HandoffTimeout))
	switch {
	case len(cfg.Seeds) == 0:
		db.lay.Store(newLayout(cfg.Ranges, cfg.formationGroups(1)))
	case cfg.BootstrapExpect > 1:
		db.lay.Store(newLayout(cfg.Ranges, cfg.formationGroups(cfg.BootstrapExpect)))
	}

	tm := cfg.Timing
	hc := raftgroup.Config{NodeID: cfg.NodeID, BindAddr: cfg.BindAddr, AdvertiseAddr: cfg.AdvertiseAddr, Logger: cfg.Logger, TLS: cfg.TLS,
		// A node holds about ReplicaCount x GroupsPerNode replicas.
		MaxLogBytes:      logBytesPerGroup(cfg.ReplicaCount * cfg.GroupsPerNode),
		HeartbeatTimeout: tm.HeartbeatTimeout, ElectionTimeout: tm.ElectionTimeout,
		LeaderLeaseTimeout: tm.LeaderLeaseTimeout, CommitTimeout: tm.CommitTimeout, RPCTimeout: tm.RPCTimeout,
		// Per-peer and histogram counters cost a few atomic adds per
		// write: only for metrics.
		DetailedStats: db.met != nil}
	if hooks != nil {
		hc.Faults = hooks.Faults
		hc.Lease = hooks.Lease
		db.quorumSlack = hooks.QuorumSlack
		db.fixedGroups = hooks.FixedGroups
		if hooks.HandoffTimeout > 0 {
			db.handoffTimeout.Store(int64(hooks.HandoffTimeout))
		}
	}
	if hooks != nil && hooks.ClockRate > 0 && hooks.ClockRate != 1 {
		if err := emulateClockRate(&hc, hooks.ClockRate); err != nil {
			return nil, fmt.Errorf("%w: config: %v", ErrInvalid, err)
		}
	}
	if db.host, err = raftgroup.NewHost(hc); err != nil {
		if errors.Is(err, netaddr.ErrNoPrivateIP) {
			return nil, fmt.Errorf("%w: config: field BindAddr %q binds every interface and this host has no private IP to advertise: set AdvertiseAddr", ErrInvalid, cfg.BindAddr)
		}
		return nil, fmt.Errorf("%w: config: field BindAddr %q cannot be used: %v", ErrInvalid, cfg.BindAddr, err)
	}
	db.host.SetRPCHandler(db.serve)
	db.fwd = newForwarder(db.host)
	if cfg.TLS != nil {
		db.tls = newTLSCheck(db.host)
	}
	_, inc, _ := raftgroup.ParseServerID(db.host.ID())

	var onEvent func(gossip.Event)
	if db.met != nil {
		onEvent = db.met.noteMember
	}
	db.gsp, err = gossip.Start(gossip.Config{
		Name: cfg.NodeID, BindAddr: cfg.GossipAddr, AdvertiseAddr: cfg.GossipAdvertiseAddr, SecretKey: cfg.GossipKey,
		Preset: tm.Gossip.gossipPreset(), Logger: cfg.Logger,
		Meta:     db.selfMeta(inc),
		Settings: cfg.clusterSettings(),
		Faults:   hc.Faults,
		OnEvent:  onEvent,
	})
	if err != nil {
		db.host.Close()
		if errors.Is(err, netaddr.ErrNoPrivateIP) {
			return nil, fmt.Errorf("%w: config: field GossipAddr %q binds every interface and this host has no private IP to advertise: set GossipAdvertiseAddr", ErrInvalid, cfg.GossipAddr)
		}
		return nil, fmt.Errorf("%w: config: field GossipAddr %q cannot be used: %v", ErrInvalid, cfg.GossipAddr, err)
	}
	if err := db.form(ctx); err != nil {
		db.gsp.Close(gossipLeaveWait)
		db.host.Close()
		return nil, err
	}
	db.wg.Add(1)
	go func() { defer db.wg.Done(); db.reconcileLoop() }()
	db.wg.Add(1)
	go func() { defer db.wg.Done(); db.handoffLoop() }()
	db.wg.Add(1)
	go func() { defer db.wg.Done(); db.layoutLoop() }()
	if hooks != nil {
		hooks.SetNode(hookNode{db})
	}
	if db.met != nil {
		db.met.ready.Store(true)
	}
	return db, nil
}

// form joins or bootstraps the cluster, within ctx and JoinTimeout.
func (db *DB) form(ctx context.Context) error {
	joinCtx, cancel := context.WithTimeout(ctx, db.cfg.JoinTimeout)
	defer cancel()
	if len(db.cfg.Seeds) > 0 {
		if _, err := db.gsp.Join(joinCtx, db.cfg.Seeds); err != nil {
			return db.joinError(ctx, err)
		}
	}
	if db.lay.Load() == nil {
		// With TLS, the layout is read only from members verified first:
		// a gossip-only member must not set it.
		if err := db.joinTLS(ctx, joinCtx); err != nil {
			return err
		}
		return db.learnLayout(ctx, joinCtx)
	}
	switch {
	case len(db.cfg.Seeds) == 0:
		return db.bootstrap([]gossip.Member{db.self()})
	case db.cfg.BootstrapExpect > 1:
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if db.tls != nil {
				// Only nodes that completed a round trip over mutual TLS
				// count (tlscheck.go).
				_, _ = db.tls.tryAll(joinCtx, db.gsp.Members())
			}
			if ms := db.members(); len(ms) >= db.cfg.BootstrapExpect {
				return db.bootstrap(ms[:db.cfg.BootstrapExpect])
			}
			select {
			case <-joinCtx.Done():
				err := fmt.Errorf("saw %d of the %d expected nodes (BootstrapExpect)", len(db.members()), db.cfg.BootstrapExpect)
				if n := len(db.gsp.Members()) - len(db.members()); n > 0 {
					err = fmt.Errorf("%v, and %d more in gossip that completed no round trip over mutual TLS (Config.TLS)", err, n)
				}
				if ctx.Err() != nil {
					return fmt.Errorf("%w: %w: %v", ErrTimeout, ctx.Err(), err)
				}
				return fmt.Errorf("%w: JoinTimeout %v passed: %v", ErrUnavailable, db.cfg.JoinTimeout, err)
			case <-tick.C:
			}
		}
	}
	return nil
}

// learnLayout waits, within joinCtx, until a member announces the
// cluster's group count, and takes it; the groups' leaders then add
// replicas on this node. With TLS only members that passed the round
// trip are heard (db.members), and the others are tried meanwhile.
func (db *DB) learnLayout(ctx, joinCtx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if db.tls != nil {
			_, _ = db.tls.tryAll(joinCtx, db.gsp.Members())
		}
		meta, ok, err := clusterLayout(db.members())
		if err != nil {
			return fmt.Errorf("%w: joining: %v", ErrUnavailable, err)
		}
		if ok {
			// What gossip says of the layout; the nodes this one will hold
			// replicas on tell it the rest (followLayout, reqCreateGroup).
			l := newLayout(db.cfg.Ranges, meta.GenesisGroups)
			l = l.with(meta.Groups, meta.Groups, meta.LayoutEpoch)
			l.creation = meta.LayoutCreation
			db.lay.Store(l)
			db.announce()
			return nil
		}
		select {
		case <-joinCtx.Done():
			err := errors.New("no member announced the cluster's replica groups (is it still forming?)")
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %w: %v", ErrTimeout, ctx.Err(), err)
			}
			return fmt.Errorf("%w: JoinTimeout %v passed: %v", ErrUnavailable, db.cfg.JoinTimeout, err)
		case <-tick.C:
		}
	}
}

// groupCount is the number of replica groups that exist, as far as this
// node knows (its layout's exists); 0 while it does not know the cluster
// yet.
func (db *DB) groupCount() int {
	if l := db.lay.Load(); l != nil {
		return l.exists
	}
	return 0
}

// joinError maps gossip's Join error to the API's: a cluster that refused
// this node for good is a config error, ctx's end a timeout, JoinTimeout's
// an unavailable cluster.
func (db *DB) joinError(ctx context.Context, err error) error {
	// gossip's sentinels' own text adds nothing to what is said here.
	detail := func(sentinel error) string { return strings.TrimPrefix(err.Error(), sentinel.Error()+": ") }
	switch {
	case errors.Is(err, gossip.ErrIncompatible):
		return fmt.Errorf("%w: config: settings that must be the same on every node differ from the cluster's: %s",
			ErrInvalid, detail(gossip.ErrIncompatible))
	case errors.Is(err, gossip.ErrNameTaken):
		return fmt.Errorf("%w: config: field NodeID %q is taken by a live member: %s", ErrInvalid, db.cfg.NodeID, detail(gossip.ErrNameTaken))
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %w", ErrTimeout, err) // err wraps ctx.Err()
	}
	return fmt.Errorf("%w: JoinTimeout %v passed: %v", ErrUnavailable, db.cfg.JoinTimeout, err)
}

func (db *DB) self() gossip.Member {
	_, inc, _ := raftgroup.ParseServerID(db.host.ID())
	return gossip.Member{Name: db.cfg.NodeID, Addr: db.gsp.Addr(), Meta: db.selfMeta(inc)}
}

// announce sets this node's gossip metadata to what it knows now: the
// layout, and the groups it leads.
func (db *DB) announce() {
	db.meta.Lock()
	defer db.meta.Unlock()
	m := db.self().Meta
	m.Leads = db.meta.leads
	if err := db.gsp.SetMeta(m); err != nil {
		db.log.Debug("gossip metadata update failed", "err", err)
	}
}

// selfMeta is this node's gossip metadata but for the groups it leads:
// who it is and the layout it knows.
func (db *DB) selfMeta(inc uint64) gossip.Meta {
	m := gossip.Meta{NodeID: db.cfg.NodeID, Incarnation: inc, RPCAddr: db.host.Addr()}
	if l := db.lay.Load(); l != nil {
		m.Groups, m.GenesisGroups, m.LayoutEpoch, m.LayoutCreation = l.groups, l.genesisGroups, l.epoch, l.creation
	}
	return m
}

// bootstrap creates, on this node, every replica group it holds in the
// placement of members, each bootstrapped with its full replica set. Every
// node of members computes the same sets, so their bootstraps agree.
func (db *DB) bootstrap(members []gossip.Member) error {
	ids, byID := indexMembers(members)
	for r := range db.groupCount() {
		var servers []raft.Server
		mine := false
		for _, p := range placedPeers(r, ids, byID, db.cfg.ReplicaCount) {
			mine = mine || p.id == db.host.ID()
			servers = append(servers, raft.Server{ID: p.id, Address: raft.ServerAddress(p.addr)})
		}
		if mine {
			rep, err := db.openReplica(r, 0, servers)
			if err != nil {
				return err
			}
			rep.sole.Store(len(servers) == 1)
		}
	}
	return nil
}

// openReplica creates this node's replica of group r created at gen
// (bootstrapped with servers, or empty to be added by the leader) unless
// it exists. A replica of r from an earlier creation (a group created
// again, grow.go) is dropped first; one from a later creation stays, and
// the call fails.
func (db *DB) openReplica(r int, gen uint64, servers []raft.Server) (*replica, error) {
	for {
		rep, stale, err := db.openReplicaLocked(r, gen, servers)
		if stale == nil {
			return rep, err
		}
		db.log.Info("replica of a group created again dropped", "group", r, "gen", stale.gen, "new_gen", gen)
		db.dropReplica(r, stale)
	}
}

// openReplicaLocked is openReplica under db.mu; it returns the replica of
// r from an earlier creation instead, for the caller to drop first.
func (db *DB) openReplicaLocked(r int, gen uint64, servers []raft.Server) (rep, stale *replica, err error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed.Load() {
		return nil, nil, ErrClosed
	}
	if r < 0 || r >= db.groupCount() {
		return nil, nil, fmt.Errorf("gridkv: group %d asked of node %s, which knows %d groups", r, db.cfg.NodeID, db.groupCount())
	}
	if known := db.lay.Load().gen(r); gen < known {
		return nil, nil, fmt.Errorf("gridkv: group %d created at layout epoch %d asked of node %s, which knows its creation at epoch %d", r, gen, db.cfg.NodeID, known)
	}
	if rep := db.reps[r].Load(); rep != nil {
		switch {
		case rep.gen == gen:
			return rep, nil, nil
		case rep.gen < gen:
			return nil, rep, nil
		}
		return nil, nil, fmt.Errorf("gridkv: group %d created at layout epoch %d asked of node %s, which has its creation at epoch %d", r, gen, db.cfg.NodeID, rep.gen)
	}
	// Group 0 holds the cluster's layout (grow.go).
	f := fsm.New(fsm.Options{MemoryLimit: db.cfg.MemoryLimit, Ranges: db.cfg.Ranges, Layout: r == 0})
	g, err := db.host.CreateGroup(groupID(r, gen), f, raftgroup.GroupOptions{Bootstrap: servers})
	if err != nil {
		return nil, nil, fmt.Errorf("gridkv: group %d: %w", r, err)
	}
	rep = &replica{id: r, gen: gen, group: g, fsm: f}
	rep.batch = newBatcher(db, rep)
	db.reps[r].Store(rep)
	return rep, nil, nil
}

// groupID is the Raft group id of group r created at gen: gen above the
// group number, so a group created again is a Raft group of its own.
func groupID(r int, gen uint64) raftgroup.GroupID {
	return raftgroup.GroupID(gen<<16 | uint64(r))
}

// replica is this node's replica of group r, or nil (also for a group
// number out of bounds).
func (db *DB) replica(r int) *replica {
	if r < 0 || r >= len(db.reps) {
		return nil
	}
	return db.reps[r].Load()
}

// currentReplica is this node's replica of group r, or nil also when it is
// of a creation older than the one the layout this node knows names: a
// replica of a superseded creation serves none of this node's requests
// (it is dropped, or a recovery starts from it: dropStaleCreations).
func (db *DB) currentReplica(r int) *replica {
	rep := db.replica(r)
	if rep != nil && rep.gen < db.lay.Load().gen(r) {
		return nil
	}
	return rep
}

func (db *DB) replicaList() map[int]*replica {
	out := make(map[int]*replica)
	for r := range db.reps {
		if rep := db.reps[r].Load(); rep != nil {
			out[r] = rep
		}
	}
	return out
}

// NodeID is this node's id.
func (db *DB) NodeID() string { return db.cfg.NodeID }

// Addr is the bound BindAddr (the real port when 0 was asked). The others
// dial this node at its advertised address (Config.AdvertiseAddr), which
// is its Member.Addr.
func (db *DB) Addr() string { return db.host.BoundAddr() }

// GossipAddr is the bound GossipAddr, to pass to other nodes as a seed.
// Nodes on other hosts should be given the advertised address instead
// (Config.GossipAdvertiseAddr, this node's Member.GossipAddr): bound to
// every interface, GossipAddr is 0.0.0.0 or [::] with the port.
func (db *DB) GossipAddr() string { return db.gsp.BoundAddr() }

// Members returns the live members; a member that left or died is dropped.
// With Config.TLS, a gossip member is listed only once this node has
// completed a round trip with it over mutual TLS.
func (db *DB) Members() []Member {
	var out []Member
	for _, m := range db.members() {
		out = append(out, Member{ID: m.Meta.NodeID, Addr: m.Meta.RPCAddr, Leads: len(m.Meta.Leads),
			GossipAddr: m.Addr, Incarnation: m.Meta.Incarnation})
	}
	return out
}

// Locate says where key lives: its range, the range's leader and replicas
// (node ids), as this node knows them.
func (db *DB) Locate(key string) (Location, error) {
	if db.isClosed() {
		return Location{}, ErrClosed
	}
	if err := db.checkKey(key); err != nil {
		return Location{}, err
	}
	l := db.lay.Load()
	rng, r := l.locate(key) // where this node believes the range is now
	loc := Location{Range: rng, Group: r}
	loc.Leader, loc.Replicas, _ = db.groupView(r)
	return loc, nil
}

func (db *DB) memberIDs() []string {
	var ids []string
	for _, m := range db.members() {
		ids = append(ids, m.Meta.NodeID)
	}
	return ids
}

// WaitReady returns when every range has a leader this node can reach and
// as many replicas as ReplicaCount allows with the current members.
func (db *DB) WaitReady(ctx context.Context) error {
	if db.isClosed() {
		return ErrClosed
	}
	if err := ctxErr(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := db.ready(ctx)
		if err == nil || errors.Is(err, ErrClosed) {
			return err
		}
		select {
		case <-ctx.Done():
			// Say what was still missing: the last check's reason.
			return fmt.Errorf("%w; not ready: %s", timedOut(ctx.Err(), false), oneLine(err.Error()))
		case <-tick.C:
		}
	}
}

func (db *DB) ready(ctx context.Context) error {
	want := min(db.cfg.ReplicaCount, len(db.members()))
	live := db.liveServers(false)
	for r := range db.groupCount() {
		ans, err := db.route(ctx, r, -1, reqStatus, nil, false)
		if err != nil {
			return err
		}
		if err := replicasReady(ans, want, live); err != nil {
			return fmt.Errorf("%w: group %d %v", ErrUnavailable, r, err)
		}
	}
	return nil
}

// replicasReady checks a range leader's status answer (its servers, each
// with a voter flag): want voters, every one the live incarnation of a
// member, and no change under way.
func replicasReady(ans []byte, want int, live map[raft.ServerID]bool) error {
	voters := 0
	for len(ans) > 0 {
		n, k := uvarint(ans)
		if k <= 0 || n+1 > uint64(len(ans)-k) {
			return errBadMessage
		}
		id := raft.ServerID(ans[k : k+int(n)])
		voter := ans[k+int(n)] == 1
		ans = ans[k+int(n)+1:]
		switch {
		case !voter:
			return fmt.Errorf("is adding %s", id)
		case !live[id]:
			return fmt.Errorf("still has %s, which is not a live member", id)
		}
		voters++
	}
	if voters != want {
		return fmt.Errorf("has %d of %d replicas", voters, want)
	}
	return nil
}

func (db *DB) isClosed() bool { return db.closed.Load() }

// stopServing marks the node closed and stops its own goroutines; it
// returns the replicas it had, by range, or false if the node was already
// closed.
func (db *DB) stopServing() (map[int]*replica, bool) {
	db.mu.Lock()
	if db.closed.Load() {
		db.mu.Unlock()
		return nil, false
	}
	db.closed.Store(true)
	reps := db.replicaList()
	db.mu.Unlock()
	close(db.stop)
	db.stopCancel()
	db.wg.Wait()
	db.stopFeeds()
	return reps, true
}

// Close leaves the cluster gracefully, then stops every goroutine the node
// started: Leave, waiting at most Timing.DrainTimeout for this node's
// replicas to be re-replicated.
func (db *DB) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.DrainTimeout)
	defer cancel()
	return db.Leave(ctx)
}

// Leave leaves the cluster gracefully, then stops every goroutine the node
// started, as Close does; ctx bounds only the wait for re-replication
// (below). Idempotent with Close; calls after it return ErrClosed, and so
// do calls made while it runs.
//
// The node first stops serving and tells the others, through gossip, that
// it is leaving: from then on they no longer place replicas on it. Where
// the members that stay can hold more replicas, the groups' leaders then
// add a replica on one of them, and let it catch up and vote, before they
// take this node's replica out, so a planned removal never drops a range
// below ReplicaCount; where they cannot, they take it out at once. The
// node hands away the leadership of each group it leads so that this can
// happen, and waits for it until ctx ends.
//
// Then, for each range still holding its replica (ctx ended first, or no
// live majority would be left without it), it hands leadership to another
// live replica if it leads, and has the range's leader remove its replica
// from the range's Raft configuration — when the replicas that stay, and
// are not leaving too, are a majority of the range's remaining voters,
// since otherwise the change could not commit; when no replica takes the
// leadership it removes itself. This takes at most Timing.LeaveTimeout.
// So a cluster shrunk one Close at a time keeps every range serving, down
// to a single node, whose ranges then have it as their only voter. Only
// then does the node leave gossip. Close nodes one at a time: nodes
// closing together do not count on each other, and a range whose
// remaining voters are mostly leaving keeps them all and loses its
// majority when they are gone (see the README, "When nodes fail").
func (db *DB) Leave(ctx context.Context) error {
	reps, ok := db.stopServing()
	if !ok {
		return nil
	}
	if err := db.gsp.AnnounceLeave(gossipLeaveWait); err != nil {
		db.log.Debug("closing: leave announcement not confirmed", "err", err)
	}
	db.leaveRanges(db.drainRanges(ctx, reps))
	err := db.gsp.Close(gossipLeaveWait)
	if herr := db.host.Close(); herr != nil && err == nil { // answers entries in flight
		err = herr
	}
	db.fwd.close()
	for _, rep := range reps {
		rep.batch.close()
	}
	db.met.unregister() // a node of this NodeID may register again
	return err
}
