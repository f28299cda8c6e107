package gridkv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Config configures a node. The zero Config is a single-node cluster on
// loopback with ephemeral ports; zero always means "the default".
type Config struct {
	// NodeID is unique in the cluster and must not contain '/'.
	// Default: random.
	NodeID string
	// BindAddr is the TCP address for Raft and node-to-node RPC.
	// Default "127.0.0.1:0".
	BindAddr string
	// GossipAddr is the memberlist address (TCP and UDP). Default "127.0.0.1:0".
	GossipAddr string
	// Seeds are gossip addresses of existing members. Empty: this node
	// starts a new cluster (see BootstrapExpect).
	Seeds []string
	// ReplicaCount is the replicas per range. Default 3 (fewer while fewer
	// nodes exist).
	ReplicaCount int
	// Groups is the number of hash ranges, one Raft group each. Default 64.
	Groups int
	// MaxValueBytes is the largest value accepted. Default 1 MiB (exactly
	// 1 MiB is allowed).
	MaxValueBytes int
	// MemoryLimit caps the bytes of keys plus values in the cluster,
	// enforced per range (each range may hold MemoryLimit/Groups).
	// Default 0: no limit.
	MemoryLimit int64

	// BootstrapExpect: when > 1, nodes started together wait until this
	// many of them see each other through gossip (Seeds must name at least
	// one other), then all bootstrap the same ranges with the same replica
	// sets; they can never form two clusters. Default 0: a node without
	// Seeds bootstraps alone at once, a node with Seeds only joins.
	BootstrapExpect int
	// JoinTimeout bounds how long Open tries to reach a seed (and, with
	// BootstrapExpect, to see the expected nodes). Default 30s.
	JoinTimeout time.Duration
	// ReconcileInterval is how often range leaders move replicas toward
	// the placement target. Default 250ms.
	ReconcileInterval time.Duration
	// MemberDelay: a member counts in placement once it has been up this
	// long, and still counts until it has been gone this long, so a brief
	// gossip flap moves no replica. Default 1s (Fast: 250ms).
	MemberDelay time.Duration
	// Fast selects faster Raft and gossip timings, for nodes on one
	// machine (tests, the example cluster). Default false: LAN timings.
	Fast bool
	// Logger receives warnings and errors. Default slog.Default().
	Logger *slog.Logger
}

const maxKeyBytes = 64 << 10

// withDefaults copies c, fills defaults and reports every problem at once.
func (c Config) withDefaults() (Config, error) {
	if c.NodeID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		c.NodeID = "node-" + hex.EncodeToString(b[:])
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1:0"
	}
	if c.GossipAddr == "" {
		c.GossipAddr = "127.0.0.1:0"
	}
	if c.ReplicaCount == 0 {
		c.ReplicaCount = 3
	}
	if c.Groups == 0 {
		c.Groups = 64
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = 1 << 20
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 30 * time.Second
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 250 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MemberDelay == 0 {
		c.MemberDelay = time.Second
		if c.Fast {
			c.MemberDelay = 250 * time.Millisecond
		}
	}
	c.Seeds = append([]string(nil), c.Seeds...)
	var errs []error
	if strings.Contains(c.NodeID, "/") {
		errs = append(errs, fmt.Errorf("field NodeID %q contains '/'", c.NodeID))
	}
	if c.ReplicaCount < 1 {
		errs = append(errs, fmt.Errorf("field ReplicaCount %d < 1", c.ReplicaCount))
	}
	if c.Groups < 1 || c.Groups > 4096 {
		errs = append(errs, fmt.Errorf("field Groups %d outside 1..4096", c.Groups))
	}
	if c.MaxValueBytes < 0 {
		errs = append(errs, fmt.Errorf("field MaxValueBytes %d < 0", c.MaxValueBytes))
	}
	if c.MemoryLimit < 0 {
		errs = append(errs, fmt.Errorf("field MemoryLimit %d < 0", c.MemoryLimit))
	}
	if c.BootstrapExpect < 0 {
		errs = append(errs, fmt.Errorf("field BootstrapExpect %d < 0", c.BootstrapExpect))
	}
	if c.BootstrapExpect > 1 && len(c.Seeds) == 0 {
		errs = append(errs, fmt.Errorf("field BootstrapExpect %d needs Seeds to find the others", c.BootstrapExpect))
	}
	if c.JoinTimeout < 0 || c.ReconcileInterval < 0 || c.MemberDelay < 0 {
		errs = append(errs, errors.New("negative JoinTimeout, ReconcileInterval or MemberDelay"))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("%w: config: %w", ErrInvalid, errors.Join(errs...))
	}
	return c, nil
}
