package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the others about itself through gossip, and may
// change while it runs (SetMeta). The settings every member must share are
// fixed for a node's life and given in Config.Settings instead.
type Meta struct {
	NodeID      string
	Incarnation uint64
	RPCAddr     string // its raftgroup listener
	// Groups is how many replica groups the cluster has, once this node
	// knows (0 before: a node that joins learns it from the members).
	Groups int
	// GenesisGroups is how many replica groups the cluster was created
	// with (0 while this node does not know); LayoutEpoch is the epoch of
	// the layout it knows (the cluster's layout, replicated in group 0):
	// a node that sees a higher one fetches the layout. LayoutCreation is
	// the creation of group 0 (the group holding the layout) that layout
	// is of: it counts first, as a layout of a newer creation of group 0
	// (one recovered after losing its majority) supersedes every layout of
	// an older one, whatever its epoch.
	GenesisGroups  int
	LayoutEpoch    uint64
	LayoutCreation uint64
	// Leads lists the replica groups it leads, as last known. Best effort: when the
	// list does not fit in memberlist's 512-byte limit it is left out and
	// LeadsOmitted is set.
	Leads        []int
	LeadsOmitted bool
	// Leaving is set by Close before the node leaves, so that the others
	// can tell a graceful leave from a failure (memberlist's leave callback
	// does not say which).
	Leaving bool
}

// Setting is one value every member of a cluster must share (see
// Config.Settings). Name is what error messages call it.
type Setting struct {
	Name, Value string
}

// metaVersion 2 added the settings, 3 the group count, 4 the genesis group
// count and layout epoch, 5 the layout's group 0 creation. A node refuses a
// peer whose metadata it cannot read, so nodes of different versions never
// form one cluster.
const metaVersion = 5

// Flags in the metadata's second byte.
const (
	flagLeadsOmitted = 1 << iota
	flagLeaving
)

// maxMeta is memberlist's limit on node metadata; over it, memberlist
// panics, so encodeMeta never produces more.
const maxMeta = memberlist.MetaMaxSize

var errMetaTooLarge = errors.New("gossip: node id, address and settings do not fit in 512 bytes of metadata")

// encodeMeta packs m and settings: version, flags, incarnation, node id,
// rpc address, group count, genesis group count, layout epoch, layout
// creation, the settings (a count, then name and value of each), then the
// led groups as a bitmap (length-prefixed) when it fits. Every string is
// length-prefixed.
func encodeMeta(m Meta, settings []Setting) ([]byte, error) {
	b := []byte{metaVersion, 0}
	if m.Leaving {
		b[1] |= flagLeaving
	}
	b = binary.AppendUvarint(b, m.Incarnation)
	b = appendString(b, m.NodeID)
	b = appendString(b, m.RPCAddr)
	if m.Groups < 0 || m.GenesisGroups < 0 {
		return nil, fmt.Errorf("gossip: negative group count %d (%d at genesis)", m.Groups, m.GenesisGroups)
	}
	b = binary.AppendUvarint(b, uint64(m.Groups))
	b = binary.AppendUvarint(b, uint64(m.GenesisGroups))
	b = binary.AppendUvarint(b, m.LayoutEpoch)
	b = binary.AppendUvarint(b, m.LayoutCreation)
	b = binary.AppendUvarint(b, uint64(len(settings)))
	for _, s := range settings {
		b = appendString(appendString(b, s.Name), s.Value)
	}
	if len(b)+1 > maxMeta {
		return nil, errMetaTooLarge
	}
	var bitmap []byte
	for _, r := range m.Leads {
		if r < 0 {
			return nil, fmt.Errorf("gossip: negative group %d", r)
		}
		for len(bitmap) <= r/8 {
			bitmap = append(bitmap, 0)
		}
		bitmap[r/8] |= 1 << (r % 8)
	}
	withMap := binary.AppendUvarint(append([]byte(nil), b...), uint64(len(bitmap)))
	withMap = append(withMap, bitmap...)
	if len(withMap) <= maxMeta && !m.LeadsOmitted {
		return withMap, nil
	}
	b[1] |= flagLeadsOmitted
	return binary.AppendUvarint(b, 0), nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeMeta reads what encodeMeta wrote; it never trusts lengths.
func decodeMeta(b []byte) (Meta, []Setting, error) {
	var m Meta
	if len(b) < 2 || b[0] != metaVersion {
		v := 0
		if len(b) > 0 {
			v = int(b[0])
		}
		return m, nil, fmt.Errorf("gossip: metadata version %d, this node reads version %d", v, metaVersion)
	}
	m.LeadsOmitted = b[1]&flagLeadsOmitted != 0
	m.Leaving = b[1]&flagLeaving != 0
	b = b[2:]
	inc, n := binary.Uvarint(b)
	if n <= 0 {
		return m, nil, errBadMeta
	}
	m.Incarnation, b = inc, b[n:]
	var s []byte
	var err error
	if s, b, err = lenPrefixed(b); err != nil {
		return m, nil, err
	}
	m.NodeID = string(s)
	if s, b, err = lenPrefixed(b); err != nil {
		return m, nil, err
	}
	m.RPCAddr = string(s)
	groups, n := binary.Uvarint(b)
	if n <= 0 || groups > 1<<20 {
		return m, nil, errBadMeta
	}
	m.Groups, b = int(groups), b[n:]
	genesis, n := binary.Uvarint(b)
	if n <= 0 || genesis > 1<<20 {
		return m, nil, errBadMeta
	}
	m.GenesisGroups, b = int(genesis), b[n:]
	if m.LayoutEpoch, n = binary.Uvarint(b); n <= 0 {
		return m, nil, errBadMeta
	}
	b = b[n:]
	if m.LayoutCreation, n = binary.Uvarint(b); n <= 0 {
		return m, nil, errBadMeta
	}
	b = b[n:]
	count, n := binary.Uvarint(b)
	if n <= 0 || count > uint64(len(b)) { // each setting takes at least 2 bytes
		return m, nil, errBadMeta
	}
	b = b[n:]
	var settings []Setting
	for range count {
		var name, value []byte
		if name, b, err = lenPrefixed(b); err != nil {
			return m, nil, err
		}
		if value, b, err = lenPrefixed(b); err != nil {
			return m, nil, err
		}
		settings = append(settings, Setting{Name: string(name), Value: string(value)})
	}
	if s, _, err = lenPrefixed(b); err != nil {
		return m, nil, err
	}
	for i, byt := range s {
		for bit := 0; bit < 8; bit++ {
			if byt&(1<<bit) != 0 {
				m.Leads = append(m.Leads, i*8+bit)
			}
		}
	}
	return m, settings, nil
}

var errBadMeta = errors.New("gossip: malformed metadata")

func lenPrefixed(b []byte) (field, rest []byte, err error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return nil, nil, errBadMeta
	}
	return b[n : n+int(l)], b[n+int(l):], nil
}

// sortSettings returns settings sorted by name, or an error naming an
// empty or repeated name.
func sortSettings(settings []Setting) ([]Setting, error) {
	out := append([]Setting(nil), settings...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	for i, s := range out {
		if s.Name == "" {
			return nil, errors.New("gossip: a setting has no name")
		}
		if i > 0 && out[i-1].Name == s.Name {
			return nil, fmt.Errorf("gossip: setting %q given twice", s.Name)
		}
	}
	return out, nil
}

// diffSettings describes every setting in which theirs differs from mine
// (both sorted by name), as "Name theirs (mine here)"; "" when they agree.
// A setting only one side has counts as differing.
func diffSettings(mine, theirs []Setting) string {
	var diffs []string
	i, j := 0, 0
	for i < len(mine) || j < len(theirs) {
		switch {
		case j == len(theirs) || i < len(mine) && mine[i].Name < theirs[j].Name:
			diffs = append(diffs, fmt.Sprintf("%s unset (%s here)", mine[i].Name, mine[i].Value))
			i++
		case i == len(mine) || theirs[j].Name < mine[i].Name:
			diffs = append(diffs, fmt.Sprintf("%s %s (unset here)", theirs[j].Name, theirs[j].Value))
			j++
		default:
			if mine[i].Value != theirs[j].Value {
				diffs = append(diffs, fmt.Sprintf("%s %s (%s here)", mine[i].Name, theirs[j].Value, mine[i].Value))
			}
			i++
			j++
		}
	}
	return strings.Join(diffs, ", ")
}
