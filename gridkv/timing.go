package gridkv

import (
	"fmt"
	"time"

	"github.com/gridkv/gridkv/gossip"
)

// Timing holds every timing of a node: Raft's, gossip's, and how long the
// node's own background work waits and how often it runs. Start from a
// preset, LANTiming (the default) or LocalTiming, and change the fields
// you need.
//
// A zero field takes LANTiming's value, in a Timing that sets other fields
// too: the zero Timing is LANTiming, and Timing{MemberDelay: time.Minute}
// is LANTiming with a one-minute MemberDelay. Except that a zero
// ElectionTimeout or LeaderLeaseTimeout takes HeartbeatTimeout's value, as
// in both presets, so that Timing{HeartbeatTimeout: 3 * time.Second} is
// valid (Raft wants the election timeout at least it, the lease at most
// it). To change a field of LocalTiming, set it in LocalTiming's value,
// not in a zero Timing; changing HeartbeatTimeout there keeps the preset's
// other two, so set them too, or zero them to follow it.
// Negative durations are ErrInvalid, and so are Raft timings Raft refuses
// (see each field).
//
// HeartbeatTimeout must be the same on every node (see Open); the others
// may differ from node to node.
//
// Durations hard-wired in gridkv stay out of Timing when they are part of
// a protocol or of how a loop polls rather than a policy to tune (the
// 20ms polls of Open and WaitReady, retry backoffs, the watch long-poll
// hold, which travels on the wire): each says why where it is defined.
type Timing struct {
	// HeartbeatTimeout is how long a Raft follower hears nothing from its
	// leader before it starts an election; a leader heartbeats ten times
	// as often. Leader leases (the default read path) rest on followers
	// refusing to vote for this long, so it must be the same on every
	// node. At least 5ms. LAN 1s (hashicorp/raft's), Local 300ms.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a Raft candidate waits for votes before
	// it tries again. At least HeartbeatTimeout (Raft's rule). Zero:
	// HeartbeatTimeout. LAN 1s, Local 300ms.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a Raft leader goes without hearing
	// from a quorum before it steps down. GridKV's read lease is its own
	// and does not rest on it. At least 5ms, at most HeartbeatTimeout
	// (Raft's rule): a CPU stall of half HeartbeatTimeout on a loaded
	// machine made leaders step down while their followers still had them,
	// so the presets take HeartbeatTimeout. Zero: HeartbeatTimeout. LAN
	// 1s, Local 300ms.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is how long a Raft leader with nothing new to send
	// waits before sending followers the commit index again (they learn it
	// sooner through raftgroup's commit notifier). At least 1ms. LAN 1s,
	// Local 20ms.
	CommitTimeout time.Duration
	// RPCTimeout bounds one Raft RPC (snapshots get more, scaled by size),
	// a connection attempt, and a node-to-node request made without a
	// deadline of its own. LAN 5s, Local 1s.
	RPCTimeout time.Duration
	// Gossip picks memberlist's failure-detection timings. LAN: GossipLAN,
	// Local: GossipLocal.
	Gossip GossipPreset

	// MemberDelay: a member counts in placement once it has been up this
	// long, and still counts until it has been gone this long, so a brief
	// gossip flap moves no replica. LAN 1s, Local 250ms.
	MemberDelay time.Duration
	// ReconcileInterval is how often range leaders move replicas toward the
	// placement target, and how often idle groups sweep expired keys. LAN
	// and Local 250ms.
	ReconcileInterval time.Duration
	// StepTimeout bounds one configuration change the reconciler makes
	// (add, promote or remove a replica, hand leadership over), and one
	// step of a layout change. The reconciler makes the changes of up to
	// 8 groups at once, one at a time per group, so a node that does not
	// answer delays the other groups' changes by at most one StepTimeout.
	// LAN and Local 5s.
	StepTimeout time.Duration
	// RequestTimeout bounds one request or Apply of a background task: a
	// step of a range handoff, a watch poll beyond its hold, asking a
	// group for its replicas; probes for a range or a new group take half
	// of it. LAN and Local 2s.
	RequestTimeout time.Duration
	// ApplyTimeout bounds how long a batch of writes waits for its Raft
	// entry to commit and apply before its writes fail (the caller's ctx
	// may end them sooner). LAN and Local 10s.
	ApplyTimeout time.Duration
	// HandoffTimeout is how long a range handoff between two groups may
	// take before its source takes the range back. LAN 30s, Local 10s.
	HandoffTimeout time.Duration
	// HandoffPoll is how often the handoff loop looks for work when nothing
	// wakes it. LAN 100ms, Local 25ms.
	HandoffPoll time.Duration
	// DrainTimeout bounds how long Close waits for this node's replicas
	// to be re-replicated onto the members that stay before it takes them
	// out anyway (DB.Leave takes a context instead). LAN 30s, Local 10s.
	DrainTimeout time.Duration
	// LeaveTimeout bounds how long Close takes, after that, to take out the
	// replicas still in their groups (leaderships and replicas) before it
	// leaves anyway. LAN and Local 5s.
	LeaveTimeout time.Duration
}

// GossipPreset picks memberlist's failure-detection timings. The zero
// value is GossipLAN.
type GossipPreset int

const (
	// GossipLAN is memberlist's DefaultLANConfig: a probe every second,
	// answered within 500ms, a 10s TCP timeout, gossip every 200ms, a full
	// state exchange every 30s; a dead node is declared in seconds.
	GossipLAN GossipPreset = iota
	// GossipLocal is memberlist's DefaultLocalConfig, for nodes on one
	// machine: probes answered within 200ms, a 1s TCP timeout, gossip
	// every 100ms, a full state exchange every 15s.
	GossipLocal
)

func (p GossipPreset) String() string {
	switch p {
	case GossipLAN:
		return "GossipLAN"
	case GossipLocal:
		return "GossipLocal"
	}
	return fmt.Sprintf("GossipPreset(%d)", int(p))
}

// LANTiming is the default timing preset, for nodes on a LAN; the zero
// Timing, and every zero field of a Timing, take its values.
func LANTiming() Timing {
	return Timing{
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: time.Second,
		CommitTimeout:      time.Second,
		RPCTimeout:         5 * time.Second,
		Gossip:             GossipLAN,
		MemberDelay:        time.Second,
		ReconcileInterval:  250 * time.Millisecond,
		StepTimeout:        5 * time.Second,
		RequestTimeout:     2 * time.Second,
		ApplyTimeout:       10 * time.Second,
		HandoffTimeout:     30 * time.Second,
		HandoffPoll:        100 * time.Millisecond,
		DrainTimeout:       30 * time.Second,
		LeaveTimeout:       5 * time.Second,
	}
}

// LocalTiming is a preset for nodes on one machine (tests, the examples):
// failures detected, and leaders elected, in about a third of LANTiming's
// time. On a network with real latency it makes elections for nothing.
func LocalTiming() Timing {
	t := LANTiming()
	t.HeartbeatTimeout = 300 * time.Millisecond
	t.ElectionTimeout = 300 * time.Millisecond
	t.LeaderLeaseTimeout = 300 * time.Millisecond
	t.CommitTimeout = 20 * time.Millisecond
	t.RPCTimeout = time.Second
	t.Gossip = GossipLocal
	t.MemberDelay = 250 * time.Millisecond
	t.HandoffTimeout = 10 * time.Second
	t.HandoffPoll = 25 * time.Millisecond
	t.DrainTimeout = 10 * time.Second
	return t
}

// durations names t's duration fields, for filling defaults and checking.
func (t *Timing) durations() []struct {
	name string
	d    *time.Duration
} {
	return []struct {
		name string
		d    *time.Duration
	}{
		{"HeartbeatTimeout", &t.HeartbeatTimeout},
		{"ElectionTimeout", &t.ElectionTimeout},
		{"LeaderLeaseTimeout", &t.LeaderLeaseTimeout},
		{"CommitTimeout", &t.CommitTimeout},
		{"RPCTimeout", &t.RPCTimeout},
		{"MemberDelay", &t.MemberDelay},
		{"ReconcileInterval", &t.ReconcileInterval},
		{"StepTimeout", &t.StepTimeout},
		{"RequestTimeout", &t.RequestTimeout},
		{"ApplyTimeout", &t.ApplyTimeout},
		{"HandoffTimeout", &t.HandoffTimeout},
		{"HandoffPoll", &t.HandoffPoll},
		{"DrainTimeout", &t.DrainTimeout},
		{"LeaveTimeout", &t.LeaveTimeout},
	}
}

// withDefaults fills t's zero fields: ElectionTimeout and
// LeaderLeaseTimeout from HeartbeatTimeout, the others from LANTiming.
func (t Timing) withDefaults() Timing {
	t = t.followHeartbeat()
	lan := LANTiming()
	def := lan.durations()
	for i, f := range t.durations() {
		if *f.d == 0 {
			*f.d = *def[i].d
		}
	}
	return t
}

// followHeartbeat sets a zero ElectionTimeout or LeaderLeaseTimeout to
// HeartbeatTimeout, or to LANTiming's HeartbeatTimeout when that is zero
// too, as the presets do. A negative HeartbeatTimeout is left for
// problems to report; they take LANTiming's value.
func (t Timing) followHeartbeat() Timing {
	hb := t.HeartbeatTimeout
	if hb == 0 {
		hb = LANTiming().HeartbeatTimeout
	}
	if hb < 0 {
		return t
	}
	if t.ElectionTimeout == 0 {
		t.ElectionTimeout = hb
	}
	if t.LeaderLeaseTimeout == 0 {
		t.LeaderLeaseTimeout = hb
	}
	return t
}

// problems lists what is wrong with t, defaults filled, each naming its
// field (as Config.Timing.Field): negative durations, and the Raft
// timings hashicorp/raft refuses.
func (t Timing) problems() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, f := range t.durations() {
		if *f.d < 0 {
			add("field Timing.%s %v < 0", f.name, *f.d)
		}
	}
	if out != nil {
		return out // the rules below would repeat them
	}
	for _, bound := range []struct {
		name     string
		d, least time.Duration
	}{
		{"HeartbeatTimeout", t.HeartbeatTimeout, 5 * time.Millisecond},
		{"ElectionTimeout", t.ElectionTimeout, 5 * time.Millisecond},
		{"LeaderLeaseTimeout", t.LeaderLeaseTimeout, 5 * time.Millisecond},
		{"CommitTimeout", t.CommitTimeout, time.Millisecond},
	} {
		if bound.d < bound.least {
			add("field Timing.%s %v < %v (Raft's least)", bound.name, bound.d, bound.least)
		}
	}
	if t.ElectionTimeout < t.HeartbeatTimeout {
		add("field Timing.ElectionTimeout %v < Timing.HeartbeatTimeout %v (Raft requires at least it)", t.ElectionTimeout, t.HeartbeatTimeout)
	}
	if t.LeaderLeaseTimeout > t.HeartbeatTimeout {
		add("field Timing.LeaderLeaseTimeout %v > Timing.HeartbeatTimeout %v (Raft requires at most it)", t.LeaderLeaseTimeout, t.HeartbeatTimeout)
	}
	if t.Gossip != GossipLAN && t.Gossip != GossipLocal {
		add("field Timing.Gossip %v: want GossipLAN or GossipLocal", t.Gossip)
	}
	return out
}

// gossipPreset is the gossip package's preset for p.
func (p GossipPreset) gossipPreset() gossip.Preset {
	if p == GossipLocal {
		return gossip.Local
	}
	return gossip.LAN
}
