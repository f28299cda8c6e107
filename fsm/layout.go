package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// The cluster's layout: how many replica groups ranges are placed over,
// and the server set each group created after the cluster's formation was
// bootstrapped with. It is replicated state of one group only (group 0,
// Options.Layout), changed by SetLayout and CreateGroup entries; each one
// that applies advances the layout's epoch, and each names the epoch it
// expects, so two deciders can never both apply a change at one epoch.

// Layout is the cluster's layout as the group holding it has applied it.
// The zero Layout is "not set yet".
type Layout struct {
	// Epoch counts the layout changes applied (0: none yet).
	Epoch uint64
	// Genesis is the number of groups the cluster was created with (they
	// own their ranges at Genesis); fixed by the first SetLayout.
	Genesis int
	// Groups is the number of groups ranges are placed over
	// (placement.GroupOf); every one of them exists.
	Groups int
	// Created holds each group created later, groups Genesis, Genesis+1,
	// … in order.
	Created []Created
	// Recovered holds the groups created again after they lost their
	// majority (RecoverGroupOp), in increasing group order, the newest
	// recovery of each: a group's creation is the newer (larger Gen) of
	// this and its Created one.
	Recovered []Recovered
}

// Recovered is a group created again from the replica of its only server
// after the group lost its majority: that server starts the new creation
// with the state of its replica of the group's previous creation, and the
// replicas of earlier creations are superseded.
type Recovered struct {
	Group int
	Created
}

// Created is a group created after the cluster's formation: a node
// bootstraps it with exactly Servers. Gen is the layout epoch its
// CreateGroup entry brought: a group not yet placed over whose servers
// never elected a leader (one crashed or left before it started) is
// created again, with a new set and a newer Gen, and the Raft group of
// each Gen is a group of its own (gridkv names it by group and Gen), so a
// replica of an earlier Gen can never join the new one.
type Created struct {
	Gen     uint64
	Servers []Server
}

// Server is one raft server of a group.
type Server struct {
	ID, Address string
}

// Exists is the number of groups that exist: those the cluster was
// created with and those created since (not all of which ranges may be
// placed over yet).
func (l Layout) Exists() int { return l.Genesis + len(l.Created) }

// Group returns how group g was created, for a group created after the
// cluster's formation or recovered since (its newest creation).
func (l Layout) Group(g int) (Created, bool) {
	c, ok := Created{}, false
	if g >= l.Genesis && g < l.Exists() {
		c, ok = l.Created[g-l.Genesis], true
	}
	if rc, found := l.recovered(g); found && rc.Gen > c.Gen {
		return rc.Created, true
	}
	return c, ok
}

// RecoveredAt reports whether group g's creation at gen is a recovery
// (RecoverGroupOp) and, if so, the server that starts it.
func (l Layout) RecoveredAt(g int, gen uint64) (Server, bool) {
	rc, ok := l.recovered(g)
	if !ok || rc.Gen != gen || gen == 0 {
		return Server{}, false
	}
	return rc.Servers[0], true
}

func (l Layout) recovered(g int) (Recovered, bool) {
	for _, rc := range l.Recovered {
		if rc.Group == g {
			return rc, true
		}
	}
	return Recovered{}, false
}

// Gen is group g's creation epoch (Created.Gen): 0 for a group the
// cluster was formed with, never recovered, and for one that does not
// exist.
func (l Layout) Gen(g int) uint64 {
	c, _ := l.Group(g)
	return c.Gen
}

// Bounds on what a layout holds (commands and snapshots are checked
// against them).
const (
	maxLayoutGroups  = 1 << 16
	maxGroupServers  = 64
	maxServerIDBytes = 1 << 10
)

// LayoutOp is the SetLayout command: if the layout is at epoch, ranges are
// placed over groups groups from then on; genesis is the cluster's
// formation group count (the same in every SetLayout).
func LayoutOp(epoch uint64, genesis, groups int) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_SetLayout{SetLayout: &fsmpb.SetLayout{
		Epoch: epoch, Genesis: uint32(genesis), Groups: uint32(groups)}}}
}

// CreateGroupOp is the CreateGroup command: if the layout is at epoch and
// g is the next group number (Layout.Exists), group g exists from then
// on, with servers as its initial server set. If g exists but ranges are
// not placed over it yet (Layout.Groups <= g), it is created again: with
// servers, at a new Gen.
func CreateGroupOp(epoch uint64, g int, servers []Server) *fsmpb.Command {
	c := &fsmpb.CreateGroup{Epoch: epoch, Group: uint32(g)}
	for _, s := range servers {
		c.Servers = append(c.Servers, &fsmpb.Server{Id: s.ID, Address: s.Address})
	}
	return &fsmpb.Command{Op: &fsmpb.Command_CreateGroup{CreateGroup: c}}
}

// RecoverGroupOp is the CreateGroup command of a recovery: if the layout
// is at epoch, existing group g (any, group 0 included) is created again
// at a new Gen with server alone, which starts it from its replica of the
// group's previous creation (Layout.Recovered).
func RecoverGroupOp(epoch uint64, g int, server Server) *fsmpb.Command {
	cmd := CreateGroupOp(epoch, g, []Server{server})
	cmd.GetCreateGroup().Recovered = true
	return cmd
}

// layoutOp is a decoded SetLayout or CreateGroup (op.layout).
type layoutOp struct {
	epoch           uint64
	genesis, groups int // SetLayout
	group           int // CreateGroup
	servers         []Server
	recovered       bool
}

// decodeLayoutCmd reads a SetLayout (kind opSetLayout) or CreateGroup
// message. They are rare: proto.Unmarshal does.
func decodeLayoutCmd(msg []byte, kind opKind) (op, error) {
	o := op{kind: kind, layout: &layoutOp{}}
	if kind == opSetLayout {
		var m fsmpb.SetLayout
		if err := proto.Unmarshal(msg, &m); err != nil {
			return op{}, errMalformed
		}
		o.layout.epoch, o.layout.genesis, o.layout.groups = m.Epoch, int(m.Genesis), int(m.Groups)
		return o, nil
	}
	var m fsmpb.CreateGroup
	if err := proto.Unmarshal(msg, &m); err != nil {
		return op{}, errMalformed
	}
	o.layout.epoch, o.layout.group, o.layout.recovered = m.Epoch, int(m.Group), m.Recovered
	for _, s := range m.Servers {
		o.layout.servers = append(o.layout.servers, Server{ID: s.Id, Address: s.Address})
	}
	return o, nil
}

// Layout is the layout this group has applied (the zero Layout in a group
// that does not hold it). Safe from any goroutine; the slices it returns
// must not be changed.
func (f *FSM) Layout() Layout {
	if l := f.layout.Load(); l != nil {
		return *l
	}
	return Layout{}
}

// applyLayout applies a SetLayout or CreateGroup entry: ErrBadCommand in a
// group that does not hold the layout or for a malformed one,
// ErrPrecondition when the layout is not at the entry's epoch or the
// change does not fit it (nothing changes then).
func (f *FSM) applyLayout(o *op, index uint64) Result {
	c := o.layout
	if !f.opts.Layout {
		return Result{Err: fmt.Errorf("%w: layout command in a group that does not hold the layout", ErrBadCommand)}
	}
	cur := f.Layout()
	if cur.Epoch != c.epoch {
		return Result{Err: ErrPrecondition}
	}
	next := cur
	switch o.kind {
	case opSetLayout:
		switch {
		case c.genesis < 1 || c.genesis > maxLayoutGroups || c.groups < c.genesis:
			return Result{Err: fmt.Errorf("%w: layout of %d groups, %d at genesis", ErrBadCommand, c.groups, c.genesis)}
		case cur.Genesis != 0 && c.genesis != cur.Genesis:
			return Result{Err: ErrPrecondition}
		case c.groups < cur.Groups:
			return Result{Err: ErrPrecondition} // layouts never shrink
		case c.groups > max(c.genesis, cur.Exists()):
			return Result{Err: ErrPrecondition} // a group that does not exist
		}
		next.Genesis, next.Groups = c.genesis, c.groups
	default: // opCreateGroup
		switch {
		case len(c.servers) == 0 || len(c.servers) > maxGroupServers || c.recovered && len(c.servers) != 1:
			return Result{Err: fmt.Errorf("%w: group created with %d servers", ErrBadCommand, len(c.servers))}
		case c.recovered && (cur.Genesis == 0 || c.group < 0 || c.group >= cur.Exists()):
			return Result{Err: ErrPrecondition}
		case !c.recovered && (cur.Genesis == 0 || c.group < cur.Genesis || c.group < cur.Groups || c.group > cur.Exists() || c.group >= maxLayoutGroups):
			return Result{Err: ErrPrecondition}
		}
		for _, s := range c.servers {
			if s.ID == "" || len(s.ID) > maxServerIDBytes || len(s.Address) > maxServerIDBytes {
				return Result{Err: fmt.Errorf("%w: bad server %q at %q", ErrBadCommand, s.ID, s.Address)}
			}
		}
		created := Created{Gen: cur.Epoch + 1, Servers: c.servers}
		if c.recovered {
			next.Recovered = withRecovered(cur.Recovered, Recovered{Group: c.group, Created: created})
			break
		}
		next.Created = append([]Created(nil), cur.Created...)
		if c.group == cur.Exists() {
			next.Created = append(next.Created, created)
		} else {
			next.Created[c.group-cur.Genesis] = created
		}
	}
	next.Epoch++
	f.layout.Store(&next)
	return Result{Version: index}
}

// LayoutAfter is the layout l becomes once entries (raft command entries
// data, in log order) apply after it, as Apply applies them: their
// SetLayout and CreateGroup commands, each applying if it fits. Other
// commands, and ones that do not decode, change nothing.
func LayoutAfter(l Layout, entries [][]byte) Layout {
	f := &FSM{opts: Options{Layout: true}}
	f.layout.Store(&l)
	for i, data := range entries {
		ops, batch, err := decodeCommand(data, nil)
		if err != nil || batch || len(ops) != 1 || !ops[0].kind.layout() {
			continue
		}
		f.applyLayout(&ops[0], uint64(i+1))
	}
	return f.Layout()
}

// withRecovered is list (in increasing group order) with rc in place of
// its group's earlier recovery, if any; list is not changed.
func withRecovered(list []Recovered, rc Recovered) []Recovered {
	out := make([]Recovered, 0, len(list)+1)
	for _, old := range list {
		if old.Group != rc.Group {
			out = append(out, old)
		}
	}
	i := len(out)
	for i > 0 && out[i-1].Group > rc.Group {
		i--
	}
	return slices.Insert(out, i, rc)
}

// writeLayout writes l in the snapshot format: uvarint epoch, genesis,
// groups, number of created groups, then per created group its Gen, the
// number of servers and each server's id and address, length-prefixed;
// then the number of recovered groups, and per recovered group its number,
// Gen and its one server's id and address.
func writeLayout(w *bufio.Writer, l Layout) {
	var scratch [5 * binary.MaxVarintLen64]byte
	b := binary.AppendUvarint(scratch[:0], l.Epoch)
	b = binary.AppendUvarint(b, uint64(l.Genesis))
	b = binary.AppendUvarint(b, uint64(l.Groups))
	w.Write(binary.AppendUvarint(b, uint64(len(l.Created))))
	for _, c := range l.Created {
		b := binary.AppendUvarint(scratch[:0], c.Gen)
		w.Write(binary.AppendUvarint(b, uint64(len(c.Servers))))
		for _, s := range c.Servers {
			writeServer(w, s)
		}
	}
	w.Write(binary.AppendUvarint(scratch[:0], uint64(len(l.Recovered))))
	for _, rc := range l.Recovered {
		b := binary.AppendUvarint(scratch[:0], uint64(rc.Group))
		w.Write(binary.AppendUvarint(b, rc.Gen))
		writeServer(w, rc.Servers[0])
	}
}

// writeServer writes a server's id and address, length-prefixed.
func writeServer(w *bufio.Writer, s Server) {
	var scratch [binary.MaxVarintLen64]byte
	for _, str := range []string{s.ID, s.Address} {
		w.Write(binary.AppendUvarint(scratch[:0], uint64(len(str))))
		w.WriteString(str)
	}
}

// readLayout reads what writeLayout wrote, within the layout's bounds.
func readLayout(r *bufio.Reader) (Layout, error) {
	v := &varintReader{r: r}
	l := Layout{Epoch: v.uvarint()}
	genesis, groups, created := v.uvarint(), v.uvarint(), v.uvarint()
	if v.err != nil {
		return Layout{}, v.err
	}
	switch {
	case genesis > maxLayoutGroups || created > maxLayoutGroups || groups > genesis+created,
		l.Epoch == 0 && (genesis != 0 || groups != 0 || created != 0),
		l.Epoch > 0 && (genesis < 1 || groups < genesis):
		return Layout{}, fmt.Errorf("fsm: restore: layout at epoch %d of %d groups, %d at genesis, %d created", l.Epoch, groups, genesis, created)
	}
	l.Genesis, l.Groups = int(genesis), int(groups)
	readString := func() (string, error) {
		n := v.uvarint()
		if v.err != nil {
			return "", v.err
		}
		if n > maxServerIDBytes {
			return "", fmt.Errorf("fsm: restore: server field of %d bytes", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", restoreErr(io.ErrUnexpectedEOF)
		}
		return string(b), nil
	}
	readServer := func() (s Server, err error) {
		if s.ID, err = readString(); err != nil {
			return s, err
		}
		s.Address, err = readString()
		return s, err
	}
	seen := map[uint64]bool{}
	for range created {
		gen, n := v.uvarint(), v.uvarint()
		if v.err != nil {
			return Layout{}, v.err
		}
		if gen == 0 || gen > l.Epoch || seen[gen] {
			return Layout{}, fmt.Errorf("fsm: restore: group created at epoch %d of %d (or twice at it)", gen, l.Epoch)
		}
		seen[gen] = true
		if n == 0 || n > maxGroupServers {
			return Layout{}, fmt.Errorf("fsm: restore: group created with %d servers", n)
		}
		servers := make([]Server, n)
		for i := range servers {
			var err error
			if servers[i], err = readServer(); err != nil {
				return Layout{}, err
			}
		}
		l.Created = append(l.Created, Created{Gen: gen, Servers: servers})
	}
	recovered := v.uvarint()
	if v.err != nil {
		return Layout{}, v.err
	}
	if recovered > genesis+created {
		return Layout{}, fmt.Errorf("fsm: restore: %d groups recovered of %d", recovered, genesis+created)
	}
	for range recovered {
		g, gen := v.uvarint(), v.uvarint()
		if v.err != nil {
			return Layout{}, v.err
		}
		if g >= genesis+created || len(l.Recovered) > 0 && g <= uint64(l.Recovered[len(l.Recovered)-1].Group) ||
			gen == 0 || gen > l.Epoch || seen[gen] {
			return Layout{}, fmt.Errorf("fsm: restore: group %d recovered at epoch %d of %d (out of order, or an epoch twice)", g, gen, l.Epoch)
		}
		seen[gen] = true
		s, err := readServer()
		if err != nil {
			return Layout{}, err
		}
		l.Recovered = append(l.Recovered, Recovered{Group: int(g), Created: Created{Gen: gen, Servers: []Server{s}}})
	}
	return l, nil
}

// AppendLayout appends l to b in the snapshot's layout format, for a
// layout sent between nodes.
func AppendLayout(b []byte, l Layout) []byte {
	buf := bytes.NewBuffer(b)
	w := bufio.NewWriter(buf)
	writeLayout(w, l)
	_ = w.Flush() // a bytes.Buffer does not fail
	return buf.Bytes()
}

// DecodeLayout reads what AppendLayout wrote, all of b.
func DecodeLayout(b []byte) (Layout, error) {
	r := bufio.NewReader(bytes.NewReader(b))
	l, err := readLayout(r)
	if err != nil {
		return Layout{}, err
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return Layout{}, errors.New("fsm: layout: data after the layout")
	}
	return l, nil
}
