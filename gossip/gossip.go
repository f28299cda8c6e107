package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/gridkv/gridkv/internal/faultnet"
	"github.com/gridkv/gridkv/internal/netaddr"
	"github.com/gridkv/gridkv/internal/rlog"
)

// Preset picks memberlist's timings.
type Preset int

const (
	// LAN is memberlist's DefaultLANConfig: failure detection in seconds.
	LAN Preset = iota
	// Local is memberlist's DefaultLocalConfig: faster probes, for nodes on
	// one machine (tests, the example cluster).
	Local
)

// Config configures a gossip node. Zero values mean the defaults given.
type Config struct {
	// Name is the member's unique name in the cluster. Required.
	Name string
	// BindAddr is the TCP and UDP address gossip listens on. Default
	// "127.0.0.1:0" (an ephemeral port; see Node.Addr).
	BindAddr string
	// AdvertiseAddr is the address the other members dial (ip:port, port 0
	// meaning the bound port): memberlist carries addresses as IPs, so no
	// host name. Default: the bound address, or, when bound to every
	// interface ("", 0.0.0.0 or ::), the host's private IP with the bound
	// port (Start fails when there is none; see internal/netaddr).
	AdvertiseAddr string
	// SecretKey, if set, encrypts and authenticates all gossip (memberlist's
	// keyring, AES-GCM): 16, 24 or 32 bytes for AES-128, -192 or -256.
	// Members must share it; a node with another key or none cannot join
	// (its pushes and pulls are refused, its packets dropped). Default nil:
	// plaintext.
	SecretKey []byte
	// Meta is the metadata this node starts with.
	Meta Meta
	// Settings must be equal on every member: a node whose settings differ
	// from a member's is refused, at its join and in gossip, by itself and
	// by the members, and never counted (see Join). Names must be unique
	// and non-empty. Fixed for the node's life. Default: none.
	Settings []Setting
	// Preset selects the timings. Default LAN.
	Preset Preset
	// Logger receives memberlist's warnings and errors. Default slog.Default().
	Logger *slog.Logger
	// OnEvent, if set, receives membership events one at a time, in order,
	// on a goroutine of the node's own, never on memberlist's: it may call
	// any Node method.
	OnEvent func(Event)
	// Transport replaces memberlist's network transport (fault injection);
	// BindAddr and AdvertiseAddr are then ignored. Default: memberlist's TCP+UDP transport.
	Transport memberlist.Transport
	// Faults, if set (and Transport is not), puts every packet and stream
	// through the fault seam, keyed by gossip addresses (see faults.go).
	Faults *faultnet.Net
}

// EventKind says what happened to a member.
type EventKind int

const (
	EventJoin   EventKind = iota + 1 // a member appeared
	EventLeave                       // a member left gracefully
	EventFail                        // a member was declared dead
	EventUpdate                      // a member's metadata changed
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventUpdate:
		return "update"
	}
	return "event(" + strconv.Itoa(int(k)) + ")"
}

// Event is one membership change.
type Event struct {
	Kind    EventKind
	Member  Member
	MetaErr error // the member's metadata could not be read
}

// Member is a live member as gossip knows it.
type Member struct {
	Name string
	Addr string // its gossip address, to give other nodes as a seed
	Meta Meta
}

// Errors of Join that no retry can cure.
var (
	// ErrIncompatible: the cluster's members have Settings that differ from
	// this node's, or metadata it cannot read.
	ErrIncompatible = errors.New("gossip: settings differ from the cluster's")
	// ErrNameTaken: a live member, answering at another address, already
	// has this node's name.
	ErrNameTaken = errors.New("gossip: name taken by a live member")
)

// Node is one member of the gossip cluster.
//
// Threading: all methods are safe for concurrent use, except from inside
// memberlist's own callbacks (which this package never exposes).
type Node struct {
	ml  *memberlist.Memberlist
	cfg Config
	log *slog.Logger

	metaMu  sync.Mutex
	meta    []byte
	leaving bool // AnnounceLeave was called: every later metadata says so
	// settings are Config.Settings, sorted by name.
	settings []Setting

	// refusals are the latest merges NotifyMerge refused, those of joins
	// this node asked for and those of joins asked of it alike; Join takes
	// its own by their text (see takeRefusal).
	refuseMu sync.Mutex
	refusals []*refusal

	// Events from memberlist's callbacks wait here for the event goroutine:
	// callbacks must never block, nor call back into memberlist.
	evMu    sync.Mutex
	pending []Event
	members map[string]Member // live members, kept from the callbacks
	kick    chan struct{}

	// nameTaken is set when Join found a live member of this node's name:
	// then Close must not announce a leave, which the others would take as
	// that member's (same name, and a fresh node's incarnation can equal
	// its). The ping that found it can have taught this node of members,
	// piggybacked on the answer.
	nameTaken atomic.Bool
	// closing is set when Close or Crash begins: memberlist's complaints
	// from then on (sends on its closed sockets, to members that left) are
	// the shutdown's, logged at Info.
	closing atomic.Bool

	// bound is the bound address (host:port, the real port); "" with a
	// custom Transport.
	bound string

	closeOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

// Start creates a node listening for gossip. It knows only itself until
// Join is called with the address of a member.
func Start(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		return nil, errors.New("gossip: Config.Name is required")
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	settings, err := sortSettings(cfg.Settings)
	if err != nil {
		return nil, err
	}
	meta, err := encodeMeta(cfg.Meta, settings)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "gossip", "member", cfg.Name), settings: settings,
		meta: meta, members: map[string]Member{}, kick: make(chan struct{}, 1), stop: make(chan struct{})}

	mc := memberlist.DefaultLANConfig()
	if cfg.Preset == Local {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = cfg.Name
	mc.Logger = log.New(&logWriter{l: n.log, closing: &n.closing, collapse: rlog.NewCollapser(rlog.CollapseOptions{})}, "", 0)
	switch {
	case cfg.Transport != nil:
		mc.Transport = cfg.Transport
	case cfg.Faults != nil:
		ft, port, err := newFaultyTransport(cfg.BindAddr, cfg.Faults, mc.Logger)
		if err != nil {
			return nil, err
		}
		mc.Transport = ft
		mc.BindPort, mc.AdvertisePort = port, port
		n.bound = net.JoinHostPort(bindHost(cfg.BindAddr), strconv.Itoa(port))
	default:
		nt, adv, err := listen(cfg.BindAddr, cfg.AdvertiseAddr, mc.Logger)
		if err != nil {
			return nil, err
		}
		mc.Transport = nt
		mc.BindPort = nt.GetAutoBindPort()
		n.bound = net.JoinHostPort(bindHost(cfg.BindAddr), strconv.Itoa(mc.BindPort))
		mc.AdvertiseAddr, mc.AdvertisePort = adv.Addr().String(), int(adv.Port())
	}
	if len(cfg.SecretKey) > 0 {
		// memberlist builds the keyring from it; GossipVerifyIncoming and
		// Outgoing (true by default) make every message need the key.
		mc.SecretKey = append([]byte(nil), cfg.SecretKey...)
	}
	mc.Delegate = (*delegate)(n)
	mc.Events = (*events)(n)
	mc.Merge = (*delegate)(n)
	mc.Alive = (*delegate)(n)
	// A member declared dead may come back at another address: a node
	// restarted after a crash, under its name, on a new port. memberlist
	// refuses the new address ("Conflicting address") until the dead entry
	// is reaped, GossipToTheDeadTime later, unless the dead name may be
	// reclaimed; a live holder of the name is refused by the join checks
	// and by memberlist itself, since it is not dead.
	mc.DeadNodeReclaimTime = time.Nanosecond

	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.deliver() }()
	ml, err := memberlist.Create(mc)
	if err != nil {
		if mc.Transport != cfg.Transport {
			_ = mc.Transport.Shutdown() // one of ours
		}
		close(n.stop)
		n.wg.Wait()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	n.ml = ml
	return n, nil
}

// listen binds memberlist's TCP+UDP transport at bind and works out the
// address to advertise (see Config.AdvertiseAddr).
func listen(bind, advertise string, logger *log.Logger) (*memberlist.NetTransport, netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("gossip: BindAddr %q: %w", bind, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("gossip: BindAddr %q: %w", bind, err)
	}
	// Port 0 picks a free TCP port, then binds UDP to the same number,
	// which can be taken: memberlist retries then, and so does this.
	var nt *memberlist.NetTransport
	for try := 0; ; try++ {
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: p, Logger: logger})
		if err == nil || p != 0 || try == 9 || !netaddr.InUse(err) {
			break
		}
	}
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("gossip: %w", err)
	}
	bound := net.JoinHostPort(bindHost(bind), strconv.Itoa(nt.GetAutoBindPort()))
	s, err := netaddr.Advertised(bound, advertise, netaddr.PrivateIP)
	var adv netip.AddrPort
	if err == nil {
		adv, err = netip.ParseAddrPort(s)
		if err != nil {
			err = fmt.Errorf("advertise address %q: want ip:port (memberlist carries no host names)", s)
		}
	}
	if err != nil {
		_ = nt.Shutdown()
		return nil, netip.AddrPort{}, fmt.Errorf("gossip: %w", err)
	}
	return nt, netip.AddrPortFrom(adv.Addr().Unmap(), adv.Port()), nil
}

// bindHost is the host of bind, with every interface spelled "::" as
// net.Listen's address says it.
func bindHost(bind string) string {
	host, _, _ := net.SplitHostPort(bind)
	if host == "" {
		return "::"
	}
	return host
}

// BoundAddr is the address gossip is bound to (the real port when 0 was
// asked); "" with a custom Transport. Other hosts dial Addr.
func (n *Node) BoundAddr() string { return n.bound }

// Addr is the address other nodes use to join through this one: the
// advertised one (see Config.AdvertiseAddr).
func (n *Node) Addr() string {
	ln := n.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Join contacts every seed, one after the other, until at least one lets
// this node in, retrying with backoff until ctx ends. It returns how many
// seeds let it in.
//
// It fails at once, without retrying, when a seed's cluster refuses this
// node for good: its members have other Settings (ErrIncompatible), or a
// live member has this node's name (ErrNameTaken). A member of that name
// that the cluster still counts alive but that does not answer a ping is
// taken for this node's crashed predecessor: Join retries until the members
// declare it dead and let this node in. Other errors say how many seeds
// were tried and the first one's error, on one line.
func (n *Node) Join(ctx context.Context, seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, errors.New("gossip: no seeds to join")
	}
	start := time.Now()
	backoff := 50 * time.Millisecond
	loggedWait := false
	for {
		got := 0
		var first string // the first seed's error this round
		for _, seed := range seeds {
			if err := n.reachable(ctx, seed); err != nil {
				if ctx.Err() != nil {
					break
				}
				if first == "" {
					first = fmt.Sprintf("failed to join %s: %s", seed, strings.Join(strings.Fields(err.Error()), " "))
				}
				continue
			}
			k, err := n.ml.Join([]string{seed})
			got += k
			if err == nil {
				continue
			}
			cause := firstError(err)
			if r := n.takeRefusal(err); r != nil {
				cause = r.err.Error()
				if errors.Is(r.err, ErrIncompatible) {
					return 0, r.err
				}
				if r.holder != nil {
					if n.answers(r.holder) {
						n.nameTaken.Store(true)
						return 0, fmt.Errorf("%w: the member at %s answers to %q", ErrNameTaken, r.holder, n.cfg.Name)
					}
					cause = fmt.Sprintf("the cluster still counts a member named %q at %s alive, which does not answer: waiting until it is declared dead",
						n.cfg.Name, r.holder)
					if !loggedWait {
						loggedWait = true
						n.log.Info("joining: " + cause)
					}
				}
			}
			if first == "" {
				first = cause
			}
		}
		if got > 0 {
			return got, nil
		}
		n.log.Debug("join failed, retrying", "seeds", seeds, "err", first)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("gossip: join: tried %s for %v, none let this node in (%w); first error: %s",
				plural(len(seeds), "seed"), time.Since(start).Round(time.Millisecond), ctx.Err(), first)
		case <-n.stop:
			t.Stop()
			return 0, errors.New("gossip: closed")
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// firstError is the first of the errors memberlist's Join gathered (it
// lists them over several lines), on one line.
func firstError(err error) string {
	var multi interface{ WrappedErrors() []error }
	if errors.As(err, &multi) && len(multi.WrappedErrors()) > 0 {
		err = multi.WrappedErrors()[0]
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// reachable dials seed within ctx, before memberlist does: its dial cannot
// be cancelled and waits up to TCPTimeout (10s on a LAN) for a seed that
// does not answer, which would hold Join past ctx's end. A custom
// Transport's addresses are its own business: they are not dialed.
func (n *Node) reachable(ctx context.Context, seed string) error {
	if n.cfg.Transport != nil {
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", seed)
	if err != nil {
		return err
	}
	return conn.Close() // memberlist takes a stream closed at once silently
}

// answers reports whether a member of this node's name answers a ping at
// addr (within memberlist's probe timeout).
func (n *Node) answers(addr *net.UDPAddr) bool {
	_, err := n.ml.Ping(n.cfg.Name, addr)
	return err == nil
}

// Members returns the live members, this node included, sorted by name.
// It reads the node's own table, kept from memberlist's callbacks:
// memberlist.Members hands out nodes it keeps mutating.
func (n *Node) Members() []Member {
	n.evMu.Lock()
	out := make([]Member, 0, len(n.members))
	for _, m := range n.members {
		out = append(out, m)
	}
	n.evMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetMeta replaces this node's metadata and gossips it; Leads is dropped if
// it does not fit in memberlist's 512 bytes. After AnnounceLeave, Leaving
// stays set whatever m says.
func (n *Node) SetMeta(m Meta) error {
	n.metaMu.Lock()
	m.Leaving = m.Leaving || n.leaving
	b, err := encodeMeta(m, n.settings)
	if err != nil {
		n.metaMu.Unlock()
		return err
	}
	same := bytes.Equal(b, n.meta)
	n.meta = b
	n.metaMu.Unlock()
	if same {
		return nil
	}
	return n.ml.UpdateNode(5 * time.Second)
}

// AnnounceLeave marks this node's metadata Leaving (and drops its Leads,
// which it is handing away) and gossips it, waiting up to timeout for the
// update to go out. The node stays a member until Close; the others can
// stop counting on it meanwhile. Every later metadata keeps the flag.
func (n *Node) AnnounceLeave(timeout time.Duration) error {
	n.metaMu.Lock()
	n.leaving = true
	if m, _, err := decodeMeta(n.meta); err == nil {
		m.Leaving, m.Leads, m.LeadsOmitted = true, nil, false
		if b, err := encodeMeta(m, n.settings); err == nil {
			n.meta = b
		}
	}
	n.metaMu.Unlock()
	return n.ml.UpdateNode(timeout)
}

// Close leaves the cluster gracefully (announcing the leave first, see
// AnnounceLeave, then telling the others, each within timeout) and stops
// every goroutine the node started. Idempotent. After Join failed with
// ErrNameTaken it leaves silently, as Crash does: its name is the live
// member's.
func (n *Node) Close(timeout time.Duration) error {
	var err error
	if n.nameTaken.Load() {
		n.Crash()
		return nil
	}
	n.closeOnce.Do(func() {
		n.closing.Store(true)
		_ = n.AnnounceLeave(timeout) // tell the others this is a leave, not a failure
		// memberlist waits for the leave to be gossiped only while it
		// counts another member alive; one that crashed or is closing too
		// is counted so until detected, and cannot take the broadcast. If
		// none answers a few pings, nobody was there to tell: not a
		// failure.
		if lerr := n.ml.Leave(timeout); lerr != nil && n.anyOtherAnswers() {
			err = fmt.Errorf("gossip: leave: %w", lerr)
		}
		if serr := n.ml.Shutdown(); serr != nil && err == nil {
			err = fmt.Errorf("gossip: shutdown: %w", serr)
		}
		close(n.stop)
		n.wg.Wait()
	})
	return err
}

// pingRounds is how many times anyOtherAnswers pings the other members
// before it concludes none is there. One lost or late ack (a busy or
// lossy moment, the very kind in which a leave times out) must not make a
// live member count as absent: memberlist itself never declares a member
// dead on one missed probe.
const pingRounds = 3

// anyOtherAnswers reports whether a live member other than this node
// answers a ping: each round pings them all at once, each within
// memberlist's probe timeout, up to pingRounds rounds until one answers.
func (n *Node) anyOtherAnswers() bool {
	var addrs []*net.UDPAddr
	var names []string
	for _, m := range n.Members() {
		if m.Name == n.cfg.Name {
			continue
		}
		addr, err := net.ResolveUDPAddr("udp", m.Addr)
		if err != nil {
			return true // cannot tell: report the leave's failure
		}
		addrs, names = append(addrs, addr), append(names, m.Name)
	}
	var answered atomic.Bool
	for round := 0; round < pingRounds && len(addrs) > 0 && !answered.Load(); round++ {
		var wg sync.WaitGroup
		for i := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := n.ml.Ping(names[i], addrs[i]); err == nil {
					answered.Store(true)
				}
			}()
		}
		wg.Wait()
	}
	return answered.Load()
}

// Crash stops the node without telling anyone, as a crash would: the
// others declare it dead after their failure detection. For tests and
// fault injection; Close is the way to stop a node.
func (n *Node) Crash() {
	n.closeOnce.Do(func() {
		n.closing.Store(true)
		_ = n.ml.Shutdown()
		close(n.stop)
		n.wg.Wait()
	})
}

func nodeAddr(nd *memberlist.Node) string {
	return net.JoinHostPort(nd.Addr.String(), strconv.Itoa(int(nd.Port)))
}

func toMember(nd *memberlist.Node) (Member, error) {
	m := Member{Name: nd.Name, Addr: nodeAddr(nd)}
	meta, _, err := decodeMeta(nd.Meta)
	m.Meta = meta
	return m, err
}

// push records an event from a memberlist callback (memberlist holds its
// lock, so the node's fields are stable here) and queues it; it never
// blocks and never calls memberlist.
func (n *Node) push(kind EventKind, nd *memberlist.Node) {
	m, err := toMember(nd)
	n.evMu.Lock()
	if kind == EventJoin || kind == EventUpdate {
		n.members[m.Name] = m
	} else {
		delete(n.members, m.Name)
	}
	n.pending = append(n.pending, Event{Kind: kind, Member: m, MetaErr: err})
	n.evMu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// deliver hands queued events to OnEvent, in order.
func (n *Node) deliver() {
	for {
		select {
		case <-n.kick:
		case <-n.stop:
			return
		}
		for {
			n.evMu.Lock()
			batch := n.pending
			n.pending = nil
			n.evMu.Unlock()
			if len(batch) == 0 {
				break
			}
			if n.cfg.OnEvent != nil {
				for _, ev := range batch {
					n.cfg.OnEvent(ev)
				}
			}
		}
	}
}

// delegate answers memberlist's questions about this node.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	if len(d.meta) > limit { // encodeMeta keeps it within 512; be safe anyway
		return nil
	}
	return append([]byte(nil), d.meta...)
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyMerge vets the node list of a join's state exchange, on both sides:
// in a node that joins, the list is the cluster's; in the member it joins
// through, the newcomer's. Refused, memberlist merges nothing and the join
// fails (see checkMerge).
func (d *delegate) NotifyMerge(nodes []*memberlist.Node) error {
	n := (*Node)(d)
	peers := make([]peer, len(nodes))
	for i, nd := range nodes {
		peers[i] = peer{name: nd.Name, addr: nodeAddr(nd), live: nd.State == memberlist.StateAlive || nd.State == memberlist.StateSuspect,
			meta: nd.Meta, ip: nd.Addr, port: nd.Port}
	}
	n.evMu.Lock()
	live := make(map[string]string, len(n.members))
	for name, m := range n.members {
		live[name] = m.Addr
	}
	n.evMu.Unlock()
	r := checkMerge(n.cfg.Name, n.settings, live, peers)
	if r == nil {
		return nil
	}
	n.refuseMu.Lock()
	n.refusals = append(n.refusals, r)
	if len(n.refusals) > 16 {
		n.refusals = n.refusals[1:]
	}
	n.refuseMu.Unlock()
	return r.err
}

// NotifyAlive vets every alive message, the way members learn of a node
// other than by its join (gossip, anti-entropy): a node whose settings
// differ, or whose metadata this node cannot read, is never counted.
// Messages about this node itself are memberlist's to refute.
func (d *delegate) NotifyAlive(nd *memberlist.Node) error {
	if nd.Name == d.cfg.Name {
		return nil
	}
	return checkSettings(d.settings, peer{name: nd.Name, addr: nodeAddr(nd), live: true, meta: nd.Meta})
}

// events receives memberlist's membership callbacks.
type events Node

func (e *events) NotifyJoin(nd *memberlist.Node) { (*Node)(e).push(EventJoin, nd) }
func (e *events) NotifyUpdate(nd *memberlist.Node) {
	(*Node)(e).push(EventUpdate, nd)
}
func (e *events) NotifyLeave(nd *memberlist.Node) {
	// nd.State is not updated on this path (memberlist sets the state of
	// its own wrapper); the Leaving flag a closing node gossips first is.
	kind := EventFail
	if m, _, err := decodeMeta(nd.Meta); err == nil && m.Leaving {
		kind = EventLeave
	}
	(*Node)(e).push(kind, nd)
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines into slog
// records; debug lines are dropped, and warnings and errors logged once the
// node is closing are lowered to Info. A warning or error line that
// repeats word for word (memberlist's lines name the peer inside the text)
// is written once per interval, with its count (see rlog.Collapser).
type logWriter struct {
	l        *slog.Logger
	closing  *atomic.Bool
	collapse *rlog.Collapser
}

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	var lv slog.Level
	switch {
	case bytes.HasPrefix(p, []byte("[ERR]")):
		lv = slog.LevelError
	case bytes.HasPrefix(p, []byte("[WARN]")):
		lv = slog.LevelWarn
	case bytes.HasPrefix(p, []byte("[INFO]")):
		lv = slog.LevelInfo
	default:
		return len(p), nil
	}
	if lv > slog.LevelInfo && w.closing != nil && w.closing.Load() {
		lv = slog.LevelInfo
	}
	if lv < slog.LevelWarn {
		w.l.Log(context.Background(), lv, line)
		return len(p), nil
	}
	w.collapse.Log(w.l, lv, line, "")
	return len(p), nil
}
