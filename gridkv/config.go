package gridkv

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/internal/netaddr"
)

// Config configures a node. The zero Config is a single-node cluster on
// loopback with ephemeral ports; zero always means "the default".
type Config struct {
	// NodeID is unique among the live members of the cluster: Open fails
	// with ErrInvalid while a live member answers to it. A node restarting
	// after a crash keeps its NodeID; it gets in once the cluster has
	// declared its predecessor dead (Open waits, within JoinTimeout). At
	// most 128 bytes, no '/'. Default: random.
	NodeID string
	// BindAddr is the TCP address (host:port) for Raft and node-to-node
	// RPC. Default "127.0.0.1:0".
	BindAddr string
	// GossipAddr is the memberlist address (host:port, TCP and UDP).
	// Default "127.0.0.1:0".
	GossipAddr string
	// AdvertiseAddr is the address (host:port) the other nodes dial for
	// BindAddr, when that is not the bound one: behind NAT, in a
	// container, or bound to every interface. It is the RPC address this
	// node announces in gossip (Member.Addr) and its Raft server address.
	// Port 0 means the bound port. A host name is allowed; it must resolve
	// on every node. Default: the bound address; when BindAddr binds every
	// interface ("", 0.0.0.0 or ::), which no other host can dial, the
	// host's private IP (RFC 6890, the default route's interface first, as
	// memberlist picks it) with the bound port, and Open fails with
	// ErrInvalid when the host has none. DB.Addr stays the bound address.
	AdvertiseAddr string
	// GossipAdvertiseAddr is the same for GossipAddr: the address the
	// other members gossip with and join through (Member.GossipAddr), an
	// ip:port (memberlist carries IPs, not host names); port 0 means the
	// bound port. Default as for AdvertiseAddr. DB.GossipAddr stays the
	// bound address.
	GossipAdvertiseAddr string
	// GossipKey, if set, encrypts and authenticates gossip with AES-GCM
	// (memberlist's keyring): 16, 24 or 32 bytes (AES-128, -192, -256),
	// other lengths are ErrInvalid. Every node must have the same key: a
	// node with another key, or none, cannot join (its Open ends with
	// ErrUnavailable after JoinTimeout, or ErrTimeout), and the members
	// never count it. It does not cover the Raft/RPC traffic on BindAddr.
	// Default nil: plaintext gossip.
	GossipKey []byte
	// TLS, if set, puts all node-to-node traffic on BindAddr (Raft, and
	// the RPCs that forward reads and writes) under mutual TLS: every node
	// both serves and dials with it. Open does not modify it (it is
	// cloned), but derives:
	//   - the listener requires and verifies a client certificate:
	//     ClientAuth is raised to tls.RequireAndVerifyClientCert if lower;
	//     clients are verified against ClientCAs, or RootCAs when
	//     ClientCAs is nil (so one private CA in RootCAs does for both);
	//   - dials present the same certificate (Certificates, or
	//     GetClientCertificate) and verify the server against RootCAs (or
	//     ClientCAs when RootCAs is nil) for the host of the address they
	//     dial, the member's AdvertiseAddr: an IP address must be among
	//     the certificate's IP SANs, a host name among its DNS SANs. Or
	//     set ServerName: then every node's certificate must be valid for
	//     that one name (say "gridkv.internal"), whatever its address.
	//   - the listener takes a connection as coming from the node whose
	//     address it claims only if the client certificate is valid for
	//     that address's host in the same way (or, with ServerName set,
	//     for ServerName: then any holder of a certificate for that name
	//     can pass for any node).
	//     VerifyPeerCertificate or VerifyConnection, if set, run too (to
	//     pin a certificate, say).
	// Certificates (or both GetCertificate and GetClientCertificate) must
	// be set, and settings that would weaken verification are refused:
	// RootCAs and ClientCAs both nil (the system roots would accept any
	// publicly issued certificate), or InsecureSkipVerify, unless
	// VerifyPeerCertificate or VerifyConnection is set to verify instead;
	// GetConfigForClient at all (its configuration would replace the
	// listener's, and the required client certificate with it). Each is
	// ErrInvalid naming the field. Every node must use TLS or none
	// does: a node with the other setting cannot join (ErrInvalid naming
	// TLS). A gossip member counts (placement, routing, Members, Locate)
	// only once this node has completed a round trip with it over mutual
	// TLS; a joining node's Open must complete one with a member (and
	// takes the cluster's layout only from such members), or
	// fails with ErrUnavailable when JoinTimeout passes. Handshakes take at
	// most the RPC time-out (Timing.RPCTimeout: 5s, Local 1s); failed ones are logged at Warn
	// at most once a minute per remote host. TLS does not cover gossip
	// (see GossipKey). See docs/security.md. Default nil: plaintext.
	TLS *tls.Config
	// Seeds are gossip addresses (host:port) of existing members. Empty:
	// this node starts a new cluster (see BootstrapExpect).
	Seeds []string
	// ReplicaCount is the replicas per replica group. Default 3 (fewer
	// while fewer nodes exist). The same on every node (see Open).
	ReplicaCount int
	// Ranges is the number of consistent-hash ranges the key space is cut
	// into, fixed when the cluster is created: the unit of placement (each
	// range belongs to one replica group). Default 1024, at most 65536.
	// The same on every node (see Open).
	Ranges int
	// GroupsPerNode is how many replica groups (Raft groups, each carrying
	// many ranges) the cluster has per node: a cluster created by one node
	// has GroupsPerNode groups, one created by BootstrapExpect nodes
	// GroupsPerNode x BootstrapExpect. As stable members join, group 0's
	// leader grows the count to GroupsPerNode per member (up to 4096) and
	// ranges move into the new groups; it never shrinks (grow.go).
	// Default 1, at most 64: on 2 cores with 3 nodes and 64 clients, 1
	// ran Sets 1.4x and a 90/10 mix 1.4x faster than 2 (fewer, fuller log
	// entries; docs/replica-groups.md). The same on every node (see Open).
	GroupsPerNode int
	// MaxValueBytes is the largest value accepted. Default 1 MiB (exactly
	// 1 MiB is allowed). Checked by the node a write is made through, so
	// it may differ between nodes (and be raised one node at a time).
	MaxValueBytes int
	// MemoryLimit caps the bytes of keys plus values in the cluster,
	// enforced per replica group, in proportion to the ranges it holds: a
	// group of k ranges may hold MemoryLimit*k/Ranges, decided in its
	// replicated state when a write applies.
	// Default 0: no limit. The same on every node (see Open).
	MemoryLimit int64

	// BootstrapExpect: when > 1, nodes started together wait until this
	// many of them see each other through gossip (Seeds must name at least
	// one other), then all bootstrap the same ranges with the same replica
	// sets; they can never form two clusters, provided no other node is in
	// gossip while they wait (each takes the first BootstrapExpect members
	// by NodeID it sees: with TLS, of those it verified; start other nodes
	// once the cluster has formed). Default 0: a node without
	// Seeds bootstraps alone at once, a node with Seeds only joins.
	BootstrapExpect int
	// JoinTimeout bounds how long Open tries to reach a seed (and, with
	// BootstrapExpect, to see the expected nodes); OpenContext's ctx may
	// end it sooner. Default 30s.
	JoinTimeout time.Duration
	// Timing holds every timing: Raft's, gossip's, and the node's own
	// (MemberDelay, ReconcileInterval, handoff and request time-outs). The
	// zero Timing is LANTiming; LocalTiming is faster, for nodes on one
	// machine; a zero field takes LANTiming's value. Its HeartbeatTimeout
	// must be the same on every node (see Open).
	Timing Timing
	// Logger receives warnings and errors. Default slog.Default().
	Logger *slog.Logger
	// Metrics, if set, is where Open registers the node's Prometheus
	// metrics (docs/metrics.md lists them), each with the constant label
	// node = NodeID: nodes registering in one registry need distinct
	// NodeIDs, and a registration refused (a node of the same NodeID is
	// registered there) fails Open with ErrInvalid. Close unregisters
	// them, so a node may be opened again on the same registry. Most are
	// read from the node's own counters when scraped; operations cost two
	// clock readings and a few atomic adds each. Default nil: no metrics,
	// and no cost.
	Metrics prometheus.Registerer
}

const (
	maxKeyBytes    = 64 << 10
	maxNodeIDBytes = 128 // leaves room in gossip's 512 bytes of metadata
	// maxAdvertiseBytes bounds AdvertiseAddr, which gossip's metadata
	// carries too.
	maxAdvertiseBytes = 128

	maxRanges        = 1 << 16 // a range number fits in 16 bits
	maxGroupsPerNode = 64
	// maxGroups bounds a cluster's replica groups: GroupsPerNode x
	// BootstrapExpect, capped here.
	maxGroups = 4096
)

// withDefaults copies c, fills defaults and reports every problem at once,
// on one line.
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
	if c.Ranges == 0 {
		c.Ranges = 1024
	}
	if c.GroupsPerNode == 0 {
		c.GroupsPerNode = 1
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = 1 << 20
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Timing = c.Timing.withDefaults()
	c.Seeds = append([]string(nil), c.Seeds...)
	if c.GossipKey != nil {
		c.GossipKey = append([]byte(nil), c.GossipKey...)
	}
	var errs []string
	add := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if strings.Contains(c.NodeID, "/") {
		add("field NodeID %q contains '/'", c.NodeID)
	}
	if len(c.NodeID) > maxNodeIDBytes {
		add("field NodeID of %d bytes is longer than %d", len(c.NodeID), maxNodeIDBytes)
	}
	if err := checkAddr(c.BindAddr, true); err != nil {
		add("field BindAddr %q: %v", c.BindAddr, err)
	}
	if err := checkAddr(c.GossipAddr, true); err != nil {
		add("field GossipAddr %q: %v", c.GossipAddr, err)
	}
	if err := checkAdvertise(c.AdvertiseAddr, false); c.AdvertiseAddr != "" && err != nil {
		add("field AdvertiseAddr %q: %v", c.AdvertiseAddr, err)
	}
	if err := checkAdvertise(c.GossipAdvertiseAddr, true); c.GossipAdvertiseAddr != "" && err != nil {
		add("field GossipAdvertiseAddr %q: %v", c.GossipAdvertiseAddr, err)
	}
	if n := len(c.GossipKey); n != 0 && n != 16 && n != 24 && n != 32 {
		add("field GossipKey of %d bytes: want 16, 24 or 32", n)
	}
	if t := c.TLS; t != nil && len(t.Certificates) == 0 && (t.GetCertificate == nil || t.GetClientCertificate == nil) {
		add("field TLS has no certificate: set Certificates (or both GetCertificate and GetClientCertificate), since every node both serves and dials with mutual TLS")
	}
	if t := c.TLS; t != nil {
		ownCheck := t.VerifyPeerCertificate != nil || t.VerifyConnection != nil
		if t.RootCAs == nil && t.ClientCAs == nil && !ownCheck {
			add("field TLS has neither RootCAs nor ClientCAs: the system roots would accept any publicly issued certificate as a node; set RootCAs to the nodes' CA (or verify in VerifyPeerCertificate or VerifyConnection)")
		}
		if t.InsecureSkipVerify && !ownCheck {
			add("field TLS.InsecureSkipVerify is set without VerifyPeerCertificate or VerifyConnection: dials would accept any server")
		}
		if t.GetConfigForClient != nil {
			add("field TLS.GetConfigForClient is set: the configuration it returns would replace the listener's, and with it the required client certificate; it is not supported")
		}
	}
	for i, seed := range c.Seeds {
		if err := checkAddr(seed, false); err != nil {
			add("field Seeds[%d] %q: %v", i, seed, err)
		}
	}
	if c.ReplicaCount < 1 {
		add("field ReplicaCount %d < 1", c.ReplicaCount)
	}
	if c.Ranges < 1 || c.Ranges > maxRanges {
		add("field Ranges %d outside 1..%d", c.Ranges, maxRanges)
	}
	if c.GroupsPerNode < 1 || c.GroupsPerNode > maxGroupsPerNode {
		add("field GroupsPerNode %d outside 1..%d", c.GroupsPerNode, maxGroupsPerNode)
	}
	if c.MaxValueBytes < 0 {
		add("field MaxValueBytes %d < 0", c.MaxValueBytes)
	}
	if c.MemoryLimit < 0 {
		add("field MemoryLimit %d < 0", c.MemoryLimit)
	}
	if c.BootstrapExpect < 0 {
		add("field BootstrapExpect %d < 0", c.BootstrapExpect)
	}
	if c.BootstrapExpect > 1 && len(c.Seeds) == 0 {
		add("field BootstrapExpect %d needs Seeds to find the others", c.BootstrapExpect)
	}
	if c.JoinTimeout < 0 {
		add("field JoinTimeout %v < 0", c.JoinTimeout)
	}
	errs = append(errs, c.Timing.problems()...)
	if len(errs) > 0 {
		return c, fmt.Errorf("%w: config: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return c, nil
}

// checkAddr checks that addr is host:port with a numeric port; a listen
// address may leave the host empty (every interface) and ask for port 0
// (any free one), a seed may not.
func checkAddr(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		return fmt.Errorf("port %q is not a number in 0..65535", port)
	case !listen && host == "":
		return errors.New("want host:port, the host is empty")
	case !listen && p == 0:
		return errors.New("port 0 cannot be dialed")
	}
	return nil
}

// checkAdvertise checks an advertise address: host:port with a host
// another node can dial (an IP when ipOnly), and a numeric port (0: the
// bound one).
func checkAdvertise(addr string, ipOnly bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number in 0..65535", port)
	}
	ip := net.ParseIP(host)
	switch {
	case netaddr.Unspecified(host):
		return errors.New("the host must be one other nodes can dial, not every interface")
	case ipOnly && ip == nil:
		return errors.New("the host must be an IP address (memberlist carries no host names)")
	case len(addr) > maxAdvertiseBytes:
		return fmt.Errorf("longer than %d bytes", maxAdvertiseBytes)
	}
	return nil
}

// clusterSettings are the settings every node of a cluster must share.
// They travel in the gossip metadata; a node whose settings differ from a
// member's cannot join, and the members never count it (gossip.Config
// Settings). Each is there because a difference breaks the cluster:
//   - Ranges: keys hash into Ranges ranges, so nodes with another count
//     send a key to another range, or to a range that does not exist (the
//     write fails, or lands where no one reads it).
//   - GroupsPerNode: it decides how many replica groups a new cluster
//     has; nodes disagreeing would disagree on where ranges belong.
//   - ReplicaCount: every range leader moves replicas toward the placement
//     target computed with its own count; two counts make leaders add and
//     remove replicas for ever, and WaitReady wait for a count never met.
//   - MemoryLimit: the limit is applied inside each replica's state machine
//     when it applies a write; replicas with different limits would decide
//     the same write differently and diverge.
//   - TLS (on or off): a node with TLS cannot talk to one without; the
//     listener of either refuses the other's connections.
//   - Timing.HeartbeatTimeout: a follower's must not be shorter than what
//     its leader's lease and heartbeat interval assume, or it starts
//     elections against a healthy leader, and leases, which rest on
//     followers refusing votes within HeartbeatTimeout, would be unsafe.
//
// Deliberately not here: MaxValueBytes (checked by the node a write enters
// through, never in replicated state: nodes may differ, and a limit can be
// raised one node at a time), BootstrapExpect (a formation-time count: the
// nodes joining later leave it 0), the addresses, and the other timings:
// each times what one node does (an election it starts, when it steps
// down, its own requests and loops; memberlist's probes are each node's
// own too), so nodes may differ, say while a cluster moves to new timings
// one node at a time (HeartbeatTimeout excepted).
func (c Config) clusterSettings() []gossip.Setting {
	return []gossip.Setting{
		{Name: "Ranges", Value: strconv.Itoa(c.Ranges)},
		{Name: "GroupsPerNode", Value: strconv.Itoa(c.GroupsPerNode)},
		{Name: "ReplicaCount", Value: strconv.Itoa(c.ReplicaCount)},
		{Name: "MemoryLimit", Value: strconv.FormatInt(c.MemoryLimit, 10)},
		{Name: "Timing.HeartbeatTimeout", Value: c.Timing.HeartbeatTimeout.String()},
		{Name: "TLS", Value: strconv.FormatBool(c.TLS != nil)},
	}
}
