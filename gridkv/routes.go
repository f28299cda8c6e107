package gridkv

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/gridkv/gridkv/fsm"
)

// routeTable is a node's view of where each range lives: range -> (group,
// epoch). It starts from placement (every range at its Genesis group,
// epoch 1) and changes only to a higher epoch, learned from a WrongGroup
// answer (a Gone record: the range is at group X since epoch E) or from a
// probe of the groups' records (findRange). Epochs never fall, so two
// answers arriving in any order leave the newer one.
//
// Threading: safe for concurrent use; lookups are one atomic load.
type routeTable struct {
	slots []atomic.Uint64 // epoch<<16 | group
}

const routeGroupBits = 16 // maxGroups (4096) fits

func newRouteTable(groupOf []uint16) *routeTable {
	t := &routeTable{slots: make([]atomic.Uint64, len(groupOf))}
	for r, g := range groupOf {
		t.slots[r].Store(1<<routeGroupBits | uint64(g))
	}
	return t
}

// lookup returns range r's group and epoch as this node knows them.
func (t *routeTable) lookup(r int) (g int, epoch uint64) {
	v := t.slots[r].Load()
	return int(v & (1<<routeGroupBits - 1)), v >> routeGroupBits
}

// learn records that range r is at group g since epoch; it reports whether
// the table changed (only a higher epoch than the one known changes it).
func (t *routeTable) learn(r, g int, epoch uint64) bool {
	if r < 0 || r >= len(t.slots) || g < 0 || g >= maxGroups {
		return false
	}
	next := epoch<<routeGroupBits | uint64(g)
	for {
		cur := t.slots[r].Load()
		if cur>>routeGroupBits >= epoch {
			return false
		}
		if t.slots[r].CompareAndSwap(cur, next) {
			return true
		}
	}
}

// A group's answer for range r when its record (rec) does not let it serve
// the request (refusal). The zero refusal means: serve it.
type refusal struct {
	ans  []byte // the answer to give, when not nil
	slow bool   // a read that the ReadIndex path may serve (Frozen)
	zero bool   // a read of a range whose Genesis has not applied here: nothing to find
}

// refuse decides, from group g's record rec of range r, whether a request
// may be served there: a write only on Owned; a read on Owned, and on
// Frozen when indexed (its ReadIndex taken after it was invoked). genesis
// is r's Genesis group: there, a range still Absent at epoch 0 holds
// nothing yet, and rightly so (no write applies before Genesis).
func refuse(rec fsm.RangeRecord, r, g, genesis int, write, indexed bool) refusal {
	switch rec.State {
	case fsm.Owned:
		return refusal{}
	case fsm.Frozen:
		switch {
		case write:
			return refusal{ans: []byte{stMoving}}
		case indexed:
			return refusal{}
		}
		return refusal{slow: true}
	case fsm.Gone:
		return refusal{ans: wrongGroup(r, rec.Epoch, rec.Peer)}
	case fsm.Incoming, fsm.Sealed:
		return refusal{ans: []byte{stMoving}}
	}
	// Absent.
	switch {
	case rec.Epoch == 0 && g == genesis && !write:
		return refusal{zero: true}
	case rec.Epoch == 0 && g == genesis:
		return refusal{ans: []byte{stMoving}} // Genesis is on its way (writeReplica logs it first)
	}
	return refusal{ans: append([]byte{stNotHere}, fmt.Sprintf("range %d is not in group %d", r, g)...)}
}

// wrongGroup is the answer of a group whose record of range r is Gone:
// r is at group to since epoch.
func wrongGroup(r int, epoch uint64, to int) []byte {
	b := binary.AppendUvarint([]byte{stWrongGroup}, uint64(r))
	b = binary.AppendUvarint(b, epoch)
	return binary.AppendUvarint(b, uint64(to))
}

// decodeWrongGroup reads a WrongGroup answer's body.
func decodeWrongGroup(b []byte) (r int, epoch uint64, to int, ok bool) {
	rv, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, 0, false
	}
	b = b[n:]
	e, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, 0, false
	}
	b = b[n:]
	g, n := binary.Uvarint(b)
	if n <= 0 || n != len(b) || rv > 1<<20 || g >= maxGroups {
		return 0, 0, 0, false
	}
	return int(rv), e, int(g), true
}

// routeHint is what a record of range r held by group g says about where
// r lives: ok is false when it says nothing (Absent, Incoming, Sealed:
// the range may never come, or come later). Owned(e) at g: g since e.
// Frozen(h) at g: still g, since h-1. Gone(E, X): X since E.
func routeHint(rec fsm.RangeRecord, g int) (to int, epoch uint64, ok bool) {
	switch rec.State {
	case fsm.Owned:
		return g, rec.Epoch, true
	case fsm.Frozen:
		return g, rec.Epoch - 1, true
	case fsm.Gone:
		return rec.Peer, rec.Epoch, true
	}
	return 0, 0, false
}

// commandRange reads the range of an encoded single-operation command (a
// client command, as fsm's Append functions write them).
func commandRange(cmd []byte) (int, bool) {
	num, typ, n := protowire.ConsumeTag(cmd)
	if n < 0 || typ != protowire.BytesType {
		return 0, false
	}
	var field protowire.Number // the range's field in the operation's message
	switch num {
	case 1: // Set
		field = 4
	case 2: // Delete
		field = 2
	case 3: // CompareAndSwap
		field = 6
	case 15, 16, 17: // CompareAndDelete, Incr, Expire
		field = 3
	case 18: // CompareVersionAndSwap
		field = 5
	default:
		return 0, false
	}
	msg, m := protowire.ConsumeBytes(cmd[n:])
	if m < 0 {
		return 0, false
	}
	rng := uint64(0) // proto3 omits a zero range
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return 0, false
		}
		msg = msg[n:]
		if num == field && typ == protowire.VarintType {
			v, k := protowire.ConsumeVarint(msg)
			if k < 0 {
				return 0, false
			}
			rng, msg = v, msg[k:]
			continue
		}
		k := protowire.ConsumeFieldValue(num, typ, msg)
		if k < 0 {
			return 0, false
		}
		msg = msg[k:]
	}
	return int(uint32(rng)), true
}

// rerouted reports whether ans is an answer that sends a range's request
// elsewhere or later (stWrongGroup, stMoving, stNotHere); it learns what a
// WrongGroup says, and then reports whether the routing table changed.
func (db *DB) rerouted(ans []byte) bool {
	if len(ans) == 0 {
		return false
	}
	switch ans[0] {
	case stWrongGroup:
		r, epoch, to, ok := decodeWrongGroup(ans[1:])
		if ok && r < db.cfg.Ranges {
			db.lay.Load().routes.learn(r, to, epoch)
		}
		return true
	case stMoving, stNotHere:
		return true
	}
	return false
}
