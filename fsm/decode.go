package fsm

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// The apply path decodes commands straight from the protobuf wire format
// (command.proto) instead of through proto.Unmarshal: no message structs, no
// reflection. TestDecodeMatchesProto holds it to proto.Unmarshal's reading.

type opKind uint8

const (
	opNone opKind = iota
	opSet
	opDelete
	opCAS
	opBatch   // only at the top level; marks a nested batch when inside one
	opGenesis // only at the top level; rejected inside a batch
	// Handoff commands: only at the top level; rejected inside a batch.
	opFreeze
	opIncoming
	opChunk
	opRelease
	opUnfreeze
	opActivate
	opAbort
	// Layout commands: only at the top level, only in the group holding
	// the layout.
	opSetLayout
	opCreateGroup
	// More client operations, allowed in a batch.
	opCAD // CompareAndDelete
	opIncr
	opExpire
	opCVS // CompareVersionAndSwap
)

func (k opKind) handoff() bool { return k >= opFreeze && k <= opAbort }

func (k opKind) layout() bool { return k == opSetLayout || k == opCreateGroup }

// handoffOp holds a handoff command's fields (op.hand), kept out of op so
// client operations stay small. Byte slices alias the log entry's data.
type handoffOp struct {
	epoch   uint64
	peer    int64 // Freeze: target; Incoming: source
	count   int64 // Incoming
	bytes   int64 // Incoming
	after   []byte
	entries []chunkEntry
	last    bool
	trailer Tally
}

// chunkEntry is one entry of a Chunk.
type chunkEntry struct {
	key, value []byte
	version    uint64
	expireAt   int64
}

// op is one decoded operation. Byte slices alias the log entry's data; put
// copies what it keeps.
type op struct {
	kind      opKind
	rng       uint32 // the range the key belongs to
	key       []byte
	value     []byte // Set value, CAS and CompareVersionAndSwap new value
	old       []byte
	oldAbsent bool
	ttl       int64
	delta     int64    // Incr
	version   uint64   // CompareVersionAndSwap: the version expected (0: absent)
	ranges    []uint32 // Genesis
	hand      *handoffOp
	layout    *layoutOp
}

var errMalformed = errors.New("malformed protobuf")

// decodeCommand decodes one log entry's Command. For a Batch it appends one
// op per operation to ops and reports batch=true.
func decodeCommand(data []byte, ops []op) (_ []op, batch bool, err error) {
	single, batchMsg, isBatch, err := decodeOne(data)
	if err != nil {
		return nil, false, err
	}
	if isBatch {
		ops, err = decodeBatch(batchMsg, ops[:0])
		return ops, true, err
	}
	return append(ops[:0], single), false, nil
}

// decodeOne reads a Command's oneof: the operation, or, for a Batch, the
// batch message's bytes. The last member set wins, as in proto.Unmarshal;
// fields it does not know are skipped.
func decodeOne(data []byte) (o op, batchMsg []byte, isBatch bool, err error) {
	ferr := fields(data,
		func(num protowire.Number, msg []byte) {
			if err != nil || num < 1 || num > 18 {
				return
			}
			isBatch = num == 4
			switch num {
			case 1:
				o, err = decodeSet(msg)
			case 2:
				o, err = decodeDelete(msg)
			case 3:
				o, err = decodeCAS(msg)
			case 15:
				o, err = decodeKeyed(msg, opCAD)
			case 16:
				o, err = decodeKeyed(msg, opIncr)
			case 17:
				o, err = decodeKeyed(msg, opExpire)
			case 18:
				o, err = decodeCVS(msg)
			case 4:
				batchMsg = msg
			case 5:
				o, err = decodeGenesis(msg)
			case 6:
				o, err = decodeFreeze(msg)
			case 7:
				o, err = decodeIncoming(msg)
			case 8:
				o, err = decodeChunk(msg)
			case 9, 10, 11, 12:
				o, err = decodeRangeEpoch(msg, opRelease+opKind(num-9))
			case 13:
				o, err = decodeLayoutCmd(msg, opSetLayout)
			case 14:
				o, err = decodeLayoutCmd(msg, opCreateGroup)
			}
		},
		func(protowire.Number, uint64) {})
	if err = errors.Join(ferr, err); err != nil {
		return op{}, nil, false, err
	}
	return o, batchMsg, isBatch, nil
}

// decodeBatch appends one op per operation of a Batch message.
func decodeBatch(msg []byte, ops []op) ([]op, error) {
	var err error
	ferr := fields(msg,
		func(num protowire.Number, sub []byte) {
			if err != nil || num != 1 {
				return
			}
			o, nested, isBatch, e := decodeOne(sub)
			if e == nil && isBatch { // a batch inside a batch: apply rejects it
				_, e = decodeBatch(nested, nil)
				o = op{kind: opBatch}
			}
			if err = e; err == nil {
				ops = append(ops, o)
			}
		},
		func(protowire.Number, uint64) {})
	if err = errors.Join(ferr, err); err != nil {
		return nil, err
	}
	return ops, nil
}

// fields walks a message's fields, calling bytesField or varintField for
// each; other wire types are skipped.
func fields(msg []byte, bytesField func(num protowire.Number, v []byte), varintField func(num protowire.Number, v uint64)) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return errMalformed
		}
		msg = msg[n:]
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(msg)
			if n < 0 {
				return errMalformed
			}
			bytesField(num, v)
			msg = msg[n:]
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(msg)
			if n < 0 {
				return errMalformed
			}
			varintField(num, v)
			msg = msg[n:]
		default:
			if n = protowire.ConsumeFieldValue(num, typ, msg); n < 0 {
				return errMalformed
			}
			msg = msg[n:]
		}
	}
	return nil
}

func decodeSet(msg []byte) (op, error) {
	o := op{kind: opSet, value: []byte{}}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			switch num {
			case 1:
				o.key = v
			case 2:
				o.value = v
			}
		},
		func(num protowire.Number, v uint64) {
			switch num {
			case 3:
				o.ttl = int64(v)
			case 4:
				o.rng = uint32(v)
			}
		})
	return o, err
}

func decodeDelete(msg []byte) (op, error) {
	o := op{kind: opDelete}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			if num == 1 {
				o.key = v
			}
		},
		func(num protowire.Number, v uint64) {
			if num == 2 {
				o.rng = uint32(v)
			}
		})
	return o, err
}

func decodeCAS(msg []byte) (op, error) {
	o := op{kind: opCAS, value: []byte{}, old: []byte{}}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			switch num {
			case 1:
				o.key = v
			case 3:
				o.old = v
			case 4:
				o.value = v
			}
		},
		func(num protowire.Number, v uint64) {
			switch num {
			case 2:
				o.oldAbsent = v != 0
			case 5:
				o.ttl = int64(v)
			case 6:
				o.rng = uint32(v)
			}
		})
	return o, err
}

// decodeCVS reads a CompareVersionAndSwap: key, version, new, ttl_nanos,
// range in fields 1 to 5.
func decodeCVS(msg []byte) (op, error) {
	o := op{kind: opCVS, value: []byte{}}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			switch num {
			case 1:
				o.key = v
			case 3:
				o.value = v
			}
		},
		func(num protowire.Number, v uint64) {
			switch num {
			case 2:
				o.version = v
			case 4:
				o.ttl = int64(v)
			case 5:
				o.rng = uint32(v)
			}
		})
	return o, err
}

// decodeKeyed reads a CompareAndDelete, Incr or Expire (kind): key in
// field 1, old (bytes) or delta or ttl_nanos (varint) in field 2, range in
// field 3.
func decodeKeyed(msg []byte, kind opKind) (op, error) {
	o := op{kind: kind}
	if kind == opCAD {
		o.old = []byte{}
	}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			switch {
			case num == 1:
				o.key = v
			case num == 2 && kind == opCAD:
				o.old = v
			}
		},
		func(num protowire.Number, v uint64) {
			switch {
			case num == 2 && kind == opIncr:
				o.delta = int64(v)
			case num == 2 && kind == opExpire:
				o.ttl = int64(v)
			case num == 3:
				o.rng = uint32(v)
			}
		})
	return o, err
}

// decodeGenesis reads the range list, packed (as proto3 writes it) or not
// (which proto.Unmarshal accepts too). Genesis is rare: it may allocate.
func decodeGenesis(msg []byte) (op, error) {
	o := op{kind: opGenesis}
	var err error
	ferr := fields(msg,
		func(num protowire.Number, packed []byte) {
			for num == 1 && len(packed) > 0 && err == nil {
				v, n := protowire.ConsumeVarint(packed)
				if n < 0 {
					err = errMalformed
					return
				}
				o.ranges = append(o.ranges, uint32(v))
				packed = packed[n:]
			}
		},
		func(num protowire.Number, v uint64) {
			if num == 1 {
				o.ranges = append(o.ranges, uint32(v))
			}
		})
	return o, errors.Join(ferr, err)
}

// Handoff commands are rare: their decoders may allocate.

func decodeFreeze(msg []byte) (op, error) {
	o := op{kind: opFreeze, hand: &handoffOp{}}
	err := fields(msg,
		func(protowire.Number, []byte) {},
		func(num protowire.Number, v uint64) {
			switch num {
			case 1:
				o.rng = uint32(v)
			case 2:
				o.hand.epoch = v
			case 3:
				o.hand.peer = int64(v)
			}
		})
	return o, err
}

func decodeIncoming(msg []byte) (op, error) {
	o := op{kind: opIncoming, hand: &handoffOp{}}
	err := fields(msg,
		func(protowire.Number, []byte) {},
		func(num protowire.Number, v uint64) {
			switch num {
			case 1:
				o.rng = uint32(v)
			case 2:
				o.hand.epoch = v
			case 3:
				o.hand.peer = int64(v)
			case 4:
				o.hand.count = int64(v)
			case 5:
				o.hand.bytes = int64(v)
			}
		})
	return o, err
}

func decodeChunk(msg []byte) (op, error) {
	o := op{kind: opChunk, hand: &handoffOp{}}
	var err error
	ferr := fields(msg,
		func(num protowire.Number, v []byte) {
			if err != nil {
				return
			}
			switch num {
			case 3:
				o.hand.after = v
			case 4:
				var e chunkEntry
				if e, err = decodeChunkEntry(v); err == nil {
					o.hand.entries = append(o.hand.entries, e)
				}
			case 6:
				err = decodeTally(v, &o.hand.trailer) // merged, as proto.Unmarshal merges a message field that occurs twice
			}
		},
		func(num protowire.Number, v uint64) {
			switch num {
			case 1:
				o.rng = uint32(v)
			case 2:
				o.hand.epoch = v
			case 5:
				o.hand.last = v != 0
			}
		})
	return o, errors.Join(ferr, err)
}

func decodeChunkEntry(msg []byte) (chunkEntry, error) {
	e := chunkEntry{value: []byte{}}
	err := fields(msg,
		func(num protowire.Number, v []byte) {
			switch num {
			case 1:
				e.key = v
			case 2:
				e.value = v
			}
		},
		func(num protowire.Number, v uint64) {
			switch num {
			case 3:
				e.version = v
			case 4:
				e.expireAt = int64(v)
			}
		})
	return e, err
}

func decodeTally(msg []byte, t *Tally) error {
	return fields(msg,
		func(protowire.Number, []byte) {},
		func(num protowire.Number, v uint64) {
			switch num {
			case 1:
				t.Count = int64(v)
			case 2:
				t.Bytes = int64(v)
			case 3:
				t.Digest = v
			}
		})
}

// decodeRangeEpoch reads a RangeEpoch, the operand of Release, Unfreeze,
// Activate and Abort (kind).
func decodeRangeEpoch(msg []byte, kind opKind) (op, error) {
	o := op{kind: kind, hand: &handoffOp{}}
	err := fields(msg,
		func(protowire.Number, []byte) {},
		func(num protowire.Number, v uint64) {
			switch num {
			case 1:
				o.rng = uint32(v)
			case 2:
				o.hand.epoch = v
			}
		})
	return o, err
}

func (o op) String() string {
	s := fmt.Sprintf("{%d r%d %q %q %q %v %d %v", o.kind, o.rng, o.key, o.value, o.old, o.oldAbsent, o.ttl, o.ranges)
	if h := o.hand; h != nil {
		s += fmt.Sprintf(" e%d p%d %d/%d %q %v %+v %d entries:", h.epoch, h.peer, h.count, h.bytes, h.after, h.last, h.trailer, len(h.entries))
		for _, e := range h.entries {
			s += fmt.Sprintf(" %q=%q@%d/%d", e.key, e.value, e.version, e.expireAt)
		}
	}
	return s + "}"
}
