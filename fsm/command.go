package fsm

import (
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// SetOp is a Set command for key in range r; ttl <= 0 means no expiry.
func SetOp(r int, key string, value []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Set{Set: &fsmpb.Set{
		Key: []byte(key), Value: value, TtlNanos: int64(ttl), Range: uint32(r)}}}
}

// DeleteOp is a Delete command for key in range r.
func DeleteOp(r int, key string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Delete{Delete: &fsmpb.Delete{Key: []byte(key), Range: uint32(r)}}}
}

// CASOp is a CompareAndSwap command for key in range r: store new if the
// current value equals old, where old == nil means "only if absent" and
// []byte{} means "present with an empty value".
func CASOp(r int, key string, old, new []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Cas{Cas: &fsmpb.CompareAndSwap{
		Key: []byte(key), OldAbsent: old == nil, Old: old, New: new, TtlNanos: int64(ttl), Range: uint32(r)}}}
}

// GenesisOp is the Genesis command: each listed range that is Absent at
// epoch 0 here becomes Owned at epoch 1. It must be a log entry of its own
// (inside a Batch it is rejected with ErrBadCommand).
func GenesisOp(ranges []int) *fsmpb.Command {
	g := &fsmpb.Genesis{}
	for _, r := range ranges {
		g.Ranges = append(g.Ranges, uint32(r))
	}
	return &fsmpb.Command{Op: &fsmpb.Command_Genesis{Genesis: g}}
}

// AppendSweep appends a command that does nothing but remove what has
// expired by its entry's AppendedAt (as every command does first): an
// empty Batch.
func AppendSweep(b []byte) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, 4, protowire.BytesType), 0)
}

// BatchOp groups operations into one log entry; each gets its own Result.
func BatchOp(ops ...*fsmpb.Command) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Batch{Batch: &fsmpb.Batch{Ops: ops}}}
}

// Encode marshals a command into a log entry's data.
func Encode(cmd *fsmpb.Command) ([]byte, error) { return proto.Marshal(cmd) }

// The Append functions encode single-operation commands straight into the
// protobuf wire format, byte for byte what Encode produces for the
// matching *Op, without building messages (the write path calls them for
// every operation). TestAppendMatchesEncode holds them to it.

// AppendSet appends an encoded Set command for key in range r to b.
func AppendSet(b []byte, r int, key string, value []byte, ttl time.Duration) []byte {
	n := sizeBytesField(1, len(key)) + sizeBytesField(2, len(value)) + sizeVarintField(3, int64(ttl)) +
		sizeVarintField(4, int64(uint32(r)))
	b = slices.Grow(b, protowire.SizeTag(1)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, 1, key)
	b = appendBytesField(b, 2, value)
	b = appendVarintField(b, 3, int64(ttl))
	return appendVarintField(b, 4, int64(uint32(r)))
}

// AppendDelete appends an encoded Delete command for key in range r to b.
func AppendDelete(b []byte, r int, key string) []byte {
	n := sizeBytesField(1, len(key)) + sizeVarintField(2, int64(uint32(r)))
	b = slices.Grow(b, protowire.SizeTag(2)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, 1, key)
	return appendVarintField(b, 2, int64(uint32(r)))
}

// AppendCAS appends an encoded CompareAndSwap command for key in range r
// to b (old == nil: only if absent).
func AppendCAS(b []byte, r int, key string, old, new []byte, ttl time.Duration) []byte {
	absent := int64(0)
	if old == nil {
		absent = 1
	}
	n := sizeBytesField(1, len(key)) + sizeVarintField(2, absent) + sizeBytesField(3, len(old)) +
		sizeBytesField(4, len(new)) + sizeVarintField(5, int64(ttl)) + sizeVarintField(6, int64(uint32(r)))
	b = slices.Grow(b, protowire.SizeTag(3)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, 1, key)
	b = appendVarintField(b, 2, absent)
	b = appendBytesField(b, 3, old)
	b = appendBytesField(b, 4, new)
	b = appendVarintField(b, 5, int64(ttl))
	return appendVarintField(b, 6, int64(uint32(r)))
}

// CADOp is a CompareAndDelete command for key in range r: delete it if
// its value equals old.
func CADOp(r int, key string, old []byte) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CompareAndDelete{CompareAndDelete: &fsmpb.CompareAndDelete{
		Key: []byte(key), Old: old, Range: uint32(r)}}}
}

// IncrOp is an Incr command adding delta to key in range r.
func IncrOp(r int, key string, delta int64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Incr{Incr: &fsmpb.Incr{Key: []byte(key), Delta: delta, Range: uint32(r)}}}
}

// ExpireOp is an Expire command giving key in range r the TTL ttl.
func ExpireOp(r int, key string, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Expire{Expire: &fsmpb.Expire{Key: []byte(key), TtlNanos: int64(ttl), Range: uint32(r)}}}
}

// CVSOp is a CompareVersionAndSwap command for key in range r: store new
// if the key's current version equals version, where version 0 means
// "only if absent". ttl <= 0 means no expiry.
func CVSOp(r int, key string, version uint64, new []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CompareVersionAndSwap{CompareVersionAndSwap: &fsmpb.CompareVersionAndSwap{
		Key: []byte(key), Version: version, New: new, TtlNanos: int64(ttl), Range: uint32(r)}}}
}

// AppendCAD appends an encoded CompareAndDelete command to b (see CADOp).
func AppendCAD(b []byte, r int, key string, old []byte) []byte {
	n := sizeBytesField(1, len(key)) + sizeBytesField(2, len(old)) + sizeVarintField(3, int64(uint32(r)))
	b = appendKeyedHeader(b, 15, n)
	b = appendStringField(b, 1, key)
	b = appendBytesField(b, 2, old)
	return appendVarintField(b, 3, int64(uint32(r)))
}

// AppendIncr appends an encoded Incr command to b (see IncrOp).
func AppendIncr(b []byte, r int, key string, delta int64) []byte {
	return appendKeyedVarint(b, 16, r, key, delta)
}

// AppendExpire appends an encoded Expire command to b (see ExpireOp).
func AppendExpire(b []byte, r int, key string, ttl time.Duration) []byte {
	return appendKeyedVarint(b, 17, r, key, int64(ttl))
}

// AppendCVS appends an encoded CompareVersionAndSwap command to b (see
// CVSOp).
func AppendCVS(b []byte, r int, key string, version uint64, new []byte, ttl time.Duration) []byte {
	n := sizeBytesField(1, len(key)) + sizeVarintField(2, int64(version)) + sizeBytesField(3, len(new)) +
		sizeVarintField(4, int64(ttl)) + sizeVarintField(5, int64(uint32(r)))
	b = appendKeyedHeader(b, 18, n)
	b = appendStringField(b, 1, key)
	b = appendVarintField(b, 2, int64(version))
	b = appendBytesField(b, 3, new)
	b = appendVarintField(b, 4, int64(ttl))
	return appendVarintField(b, 5, int64(uint32(r)))
}

// appendKeyedVarint appends command num (Incr or Expire): key in field 1,
// v in field 2, range in field 3.
func appendKeyedVarint(b []byte, num protowire.Number, r int, key string, v int64) []byte {
	n := sizeBytesField(1, len(key)) + sizeVarintField(2, v) + sizeVarintField(3, int64(uint32(r)))
	b = appendKeyedHeader(b, num, n)
	b = appendStringField(b, 1, key)
	b = appendVarintField(b, 2, v)
	return appendVarintField(b, 3, int64(uint32(r)))
}

// appendKeyedHeader appends the Command field num's tag and the length n
// of its message, with room for the message.
func appendKeyedHeader(b []byte, num protowire.Number, n int) []byte {
	b = slices.Grow(b, protowire.SizeTag(num)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// AppendGenesis appends an encoded Genesis command for ranges to b (the
// ranges packed, as proto3 encodes a repeated uint32).
func AppendGenesis(b []byte, ranges []int) []byte {
	packed := 0
	for _, r := range ranges {
		packed += protowire.SizeVarint(uint64(uint32(r)))
	}
	n := 0
	if len(ranges) > 0 {
		n = protowire.SizeTag(1) + protowire.SizeBytes(packed)
	}
	b = slices.Grow(b, protowire.SizeTag(5)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	if len(ranges) == 0 {
		return b
	}
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(packed))
	for _, r := range ranges {
		b = protowire.AppendVarint(b, uint64(uint32(r)))
	}
	return b
}

// proto3 leaves out fields holding their zero value.
func sizeBytesField(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeVarintField(num protowire.Number, v int64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(uint64(v))
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendStringField(b []byte, num protowire.Number, v string) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

func appendVarintField(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}
