package fsm

import (
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// SetOp is a Set command; ttl <= 0 means no expiry.
func SetOp(key string, value []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Set{Set: &fsmpb.Set{
		Key: []byte(key), Value: value, TtlNanos: int64(ttl)}}}
}

// DeleteOp is a Delete command.
func DeleteOp(key string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Delete{Delete: &fsmpb.Delete{Key: []byte(key)}}}
}

// CASOp is a CompareAndSwap command: store new if the current value equals
// old, where old == nil means "only if absent" and []byte{} means "present
// with an empty value".
func CASOp(key string, old, new []byte, ttl time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Cas{Cas: &fsmpb.CompareAndSwap{
		Key: []byte(key), OldAbsent: old == nil, Old: old, New: new, TtlNanos: int64(ttl)}}}
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

// AppendSet appends an encoded Set command to b.
func AppendSet(b []byte, key string, value []byte, ttl time.Duration) []byte {
	n := sizeBytesField(1, len(key)) + sizeBytesField(2, len(value)) + sizeVarintField(3, int64(ttl))
	b = slices.Grow(b, protowire.SizeTag(1)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, 1, key)
	b = appendBytesField(b, 2, value)
	return appendVarintField(b, 3, int64(ttl))
}

// AppendDelete appends an encoded Delete command to b.
func AppendDelete(b []byte, key string) []byte {
	n := sizeBytesField(1, len(key))
	b = slices.Grow(b, protowire.SizeTag(2)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	return appendStringField(b, 1, key)
}

// AppendCAS appends an encoded CompareAndSwap command to b (old == nil:
// only if absent).
func AppendCAS(b []byte, key string, old, new []byte, ttl time.Duration) []byte {
	absent := int64(0)
	if old == nil {
		absent = 1
	}
	n := sizeBytesField(1, len(key)) + sizeVarintField(2, absent) + sizeBytesField(3, len(old)) +
		sizeBytesField(4, len(new)) + sizeVarintField(5, int64(ttl))
	b = slices.Grow(b, protowire.SizeTag(3)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendStringField(b, 1, key)
	b = appendVarintField(b, 2, absent)
	b = appendBytesField(b, 3, old)
	b = appendBytesField(b, 4, new)
	return appendVarintField(b, 5, int64(ttl))
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
