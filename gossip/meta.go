package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the others about itself through gossip.
type Meta struct {
	NodeID      string
	Incarnation uint64
	RPCAddr     string // its raftgroup listener
	// Leads lists the ranges it leads, as last known. Best effort: when the
	// list does not fit in memberlist's 512-byte limit it is left out and
	// LeadsOmitted is set.
	Leads        []int
	LeadsOmitted bool
	// Leaving is set by Close before the node leaves, so that the others
	// can tell a graceful leave from a failure (memberlist's leave callback
	// does not say which).
	Leaving bool
}

const metaVersion = 1

// Flags in the metadata's second byte.
const (
	flagLeadsOmitted = 1 << iota
	flagLeaving
)

// maxMeta is memberlist's limit on node metadata; over it, memberlist
// panics, so encodeMeta never produces more.
const maxMeta = memberlist.MetaMaxSize

var errMetaTooLarge = errors.New("gossip: node id and address do not fit in 512 bytes of metadata")

// encodeMeta packs m: version, flags, incarnation, node id, rpc address,
// then the led ranges as a bitmap (length-prefixed) when it fits.
func encodeMeta(m Meta) ([]byte, error) {
	b := []byte{metaVersion, 0}
	if m.Leaving {
		b[1] |= flagLeaving
	}
	b = binary.AppendUvarint(b, m.Incarnation)
	b = binary.AppendUvarint(b, uint64(len(m.NodeID)))
	b = append(b, m.NodeID...)
	b = binary.AppendUvarint(b, uint64(len(m.RPCAddr)))
	b = append(b, m.RPCAddr...)
	if len(b)+1 > maxMeta {
		return nil, errMetaTooLarge
	}
	var bitmap []byte
	for _, r := range m.Leads {
		if r < 0 {
			return nil, fmt.Errorf("gossip: negative range %d", r)
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

// decodeMeta reads what encodeMeta wrote; it never trusts lengths.
func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) < 2 || b[0] != metaVersion {
		return m, errors.New("gossip: unknown metadata version")
	}
	m.LeadsOmitted = b[1]&flagLeadsOmitted != 0
	m.Leaving = b[1]&flagLeaving != 0
	b = b[2:]
	inc, n := binary.Uvarint(b)
	if n <= 0 {
		return m, errBadMeta
	}
	m.Incarnation, b = inc, b[n:]
	var s []byte
	var err error
	if s, b, err = lenPrefixed(b); err != nil {
		return m, err
	}
	m.NodeID = string(s)
	if s, b, err = lenPrefixed(b); err != nil {
		return m, err
	}
	m.RPCAddr = string(s)
	if s, _, err = lenPrefixed(b); err != nil {
		return m, err
	}
	for i, byt := range s {
		for bit := 0; bit < 8; bit++ {
			if byt&(1<<bit) != 0 {
				m.Leads = append(m.Leads, i*8+bit)
			}
		}
	}
	return m, nil
}

var errBadMeta = errors.New("gossip: malformed metadata")

func lenPrefixed(b []byte) (field, rest []byte, err error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return nil, nil, errBadMeta
	}
	return b[n : n+int(l)], b[n+int(l):], nil
}
